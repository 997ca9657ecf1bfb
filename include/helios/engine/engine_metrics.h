#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "helios/engine/finish.h"
#include "helios/engine/request.h"
#include "helios/engine/telemetry.h"
#include "helios/metrics/registry.h"

namespace helios::engine {

class ModelInstance;
struct Sequence;

// Histogram buckets of the engine's latency and batch metrics (upper bounds, base units).
struct MetricBuckets {
  std::vector<double> time_to_first_token = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  std::vector<double> inter_token = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1};
  std::vector<double> request = {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  std::vector<double> queue = {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30};
  std::vector<double> batch_size = {1, 2, 4, 8, 16, 32, 64, 128, 256};
};

// One member of the engine's resident set.
struct MemberStats {
  std::string name;
  int64_t loaded_layers = 0;
  int64_t weight_bytes = 0;
  int64_t kv_blocks_total = 0;
  int64_t kv_blocks_used = 0;
  int64_t kv_cache_bytes = 0;
  int64_t kv_sequences = 0;  // full-context sequences its pool holds
  int64_t running = 0;       // its sequences in the batch
  int64_t waiting = 0;       // its sequences waiting (the engine's queue; arrivals not yet routed are not counted)
  int64_t routed = 0;        // requests the router assigned to it since it joined the set
};

// Counters the engine keeps for status pages; read from any thread. The pool and weight
// figures sum over the resident set; model_name and loaded_layers are its first member's
// (the only one, unless a set was made resident with set_resident).
struct EngineStats {
  int64_t running = 0;
  int64_t waiting = 0;
  int64_t kv_blocks_total = 0;
  int64_t kv_blocks_used = 0;
  int64_t kv_cache_bytes = 0;
  int64_t steps = 0;
  int64_t preemptions = 0;
  int64_t finished = 0;
  std::string model_name;
  int64_t loaded_layers = 0;
  uint64_t model_epoch = 0;  // switches and resizes so far
  int64_t kv_block_size = 0;
  int64_t kv_sequences = 0;  // full-context sequences the pool holds
  int64_t recomputes = 0;    // sequences recomputed by a switch or resize
  int64_t weight_bytes = 0;  // resident weights of the current model(s)
  std::vector<MemberStats> members;  // the resident set, in lane order
  double router_seconds = 0;         // spent scoring prompts to route them
  int64_t routed = 0;                // requests routed (a set of one routes nothing)
};

// A resident model as the per-model series label it.
struct ResidentModel {
  std::string name;
  const ModelInstance* model = nullptr;
};

// The model serving now, as metrics and telemetry label it.
struct ServedModel {
  const std::string& name;
  int64_t loaded_layers = 0;
  uint64_t epoch = 0;
};

// Everything the engine reports about its work: the Prometheus series (helios_* request,
// token, batch and KV families) and the telemetry a controller reads (TelemetrySink), both
// fed from the same events. Without a registry the series go to a private one nobody scrapes;
// without a sink no telemetry is built. Engine thread only, except the registry's readers.
class EngineMetrics {
 public:
  EngineMetrics(metrics::Registry* registry, const MetricBuckets& buckets, TelemetrySink* sink,
                const std::string& model_name, const ModelInstance& model);
  ~EngineMetrics();

  // The per-model series follow the resident set (in lane order); members that left it show
  // zero weights and pools.
  void on_resident(const std::vector<ResidentModel>& members);
  // A new request routed to member `lane`, and time spent scoring prompts to route them.
  void on_route(int32_t lane);
  void on_router_seconds(double seconds);
  void begin_step();
  void on_admit(const Sequence& sequence, Clock::time_point now);
  // Sequences preempted this step, by their priority class.
  void on_preempt(const std::vector<int32_t>& priorities);
  // Creates the per-class series (TTFT, queue time, preemptions) of classes 0..levels-1 at zero.
  void declare_priorities(int64_t levels);
  // A token sampled for `sequence`, before the sequence records it (so that the time since
  // its previous token is still known).
  void on_token(const Sequence& sequence, const model::TokenExit& exit, Clock::time_point now);
  void on_step(int64_t batch, const ServedModel& model, int64_t running, int64_t waiting,
               Clock::time_point start, double forward_seconds);
  // A finished request: counted, timed, and reported to the sink (which takes the sequence's
  // exit counts and prompt scores).
  void on_finish(Sequence& sequence, Finish reason, const ServedModel& model,
                 Clock::time_point now);
  // A sampled prompt whose prefill has just scored it whole, under the epoch it was admitted
  // in: reported to the sink (a copy; the finish reports the scores again).
  void on_prompt_scored(const Sequence& sequence, const ServedModel& model, Clock::time_point now);
  // A fault the engine contained (helios_engine_faults_total{fault}): "forward" (a model
  // forward threw), "sampling" (a row's token could not be sampled or emitted), "step" (an
  // exception escaped a step) or "kv_cache" (a KV pool could not be allocated).
  void on_fault(std::string_view fault);
  // The gauges of the batch and the pool; `waiting` is the engine's own queue.
  void publish(const EngineStats& stats, int64_t waiting);

 private:
  struct Series;
  std::unique_ptr<metrics::Registry> own_registry_;  // when none was given
  std::unique_ptr<Series> series_;
  TelemetrySink* sink_;
  StepTelemetry step_;  // of the current step, filled as tokens are sampled
};

}  // namespace helios::engine
