#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "helios/engine/model_instance.h"
#include "helios/engine/request.h"
#include "helios/engine/telemetry.h"
#include "helios/kv/kv_cache.h"
#include "helios/metrics/registry.h"

namespace helios::engine {

struct SchedulerLimits {
  int64_t max_running = 64;        // sequences in the batch (prefilling or decoding)
  int64_t max_batch_tokens = 512;  // tokens one step may run: decodes + prefill chunks
  int64_t max_queued = 256;        // requests waiting for admission
};

// Histogram buckets of the engine's latency and batch metrics (upper bounds, base units).
struct MetricBuckets {
  std::vector<double> time_to_first_token = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  std::vector<double> inter_token = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1};
  std::vector<double> request = {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  std::vector<double> queue = {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30};
  std::vector<double> batch_size = {1, 2, 4, 8, 16, 32, 64, 128, 256};
};

struct EngineOptions {
  std::string model_name;  // of the initial model; switch_model names the next ones
  MetricBuckets buckets;
  SchedulerLimits limits;
  int64_t kv_block_size = 16;
  int64_t kv_blocks = 0;  // pool size; see kv_blocks_for_budget
  model::ExitPolicy exit_policy;  // initial; see set_exit_threshold
  TelemetrySink* telemetry = nullptr;  // not owned; must outlive the engine thread
  // One log line (event request_finished, info) per finished request: id, model, finish
  // reason, prompt/output tokens, TTFT, queue and total time, mean exit layer, greedy exits,
  // preemptions, and the error of a failed request.
  bool log_requests = true;
};

// KV blocks left by a memory budget once the model's resident weights are paid for; the
// bytes per token follow the loaded depth, so a shallower load leaves more blocks. Throws
// Error(kInvalidArgument) naming `field` when the budget does not hold the weights plus one
// sequence of the full context.
int64_t kv_blocks_for_budget(const ModelInstance& model, int64_t budget_bytes, int64_t block_size,
                             std::string_view field);

// Counters the engine keeps for status pages; read from any thread.
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
  int64_t weight_bytes = 0;  // resident weights of the current model
};

// The continuous-batching engine. One thread owns the model, the KV cache and the batch. Each
// step it drops cancelled and expired requests, reserves a slot for every decoding sequence
// (preempting the newest sequence when the pool is full), admits prefill chunks of waiting
// requests within the step's token budget, runs the prefills and one batched decode, and
// streams the sampled tokens back through each request's channel. A preempted sequence gives
// up its blocks and is later recomputed with its recorded exit layers, so it resumes exactly
// where it stopped.
//
// The model can be swapped while serving (switch_model, resize_kv): at the next step boundary
// the engine drops the KV cache, builds one for the new model and recomputes every sequence
// in the batch before admitting new work, so each client's text continues without a lost or
// repeated token.
class ServingEngine {
 public:
  ServingEngine(std::shared_ptr<const ModelInstance> model, EngineOptions options,
                metrics::Registry* registry = nullptr);
  // Does not own `model`: it must outlive the engine, and switch_model must not be used.
  ServingEngine(const ModelInstance& model, EngineOptions options,
                metrics::Registry* registry = nullptr);
  ~ServingEngine();
  ServingEngine(const ServingEngine&) = delete;
  ServingEngine& operator=(const ServingEngine&) = delete;

  void start();
  // Queues a request. Throws Error(kResourceExhausted) when max_queued requests wait already,
  // Error(kUnavailable) once close() was called, Error(kFailedPrecondition) when a request
  // with the same id is in flight.
  void submit(std::shared_ptr<Request> request);
  // Wakes the engine thread (after a request was cancelled from outside).
  void wake();
  // Refuses further submissions; requests in flight carry on.
  void close();
  // Cancels every request in flight (they finish kCancelled at the next step).
  void cancel_all();
  // Stops the thread; requests still in flight finish kCancelled.
  void stop();

  // Serves `model` (named `name`) from the next step boundary on, with a KV pool of
  // `kv_blocks` blocks; runs even when the engine is idle, so the engine must be started.
  // The old cache is freed before the new one is built. Running sequences go back to the
  // front of the queue, in admission order, and are recomputed: for a load of the same model
  // directory by replaying their generated tokens with the exit layers they were decoded
  // with, for a different model at full depth (their recorded exits are reset). Prompt,
  // generated tokens, sampler, stop and text state are kept. The future throws, and the old
  // model keeps serving, when kv_blocks cannot hold one full-context sequence of the new
  // model (kInvalidArgument), when the new model's vocabulary or special tokens differ from
  // the old one's (kFailedPrecondition: the tokens generated so far would mean something
  // else), or when the engine stops first (kUnavailable).
  std::future<void> switch_model(std::shared_ptr<const ModelInstance> model, std::string name,
                                 int64_t kv_blocks);
  // The same for the current model: rebuilds the pool with kv_blocks blocks (a controller
  // shrinks it before loading new weights so that a memory budget holds during a switch).
  std::future<void> resize_kv(int64_t kv_blocks);
  // Takes effect at the next step. Throws Error(kInvalidArgument) when negative or NaN.
  void set_exit_threshold(double threshold);
  double exit_threshold() const { return exit_threshold_.load(); }
  // Share in [0, 1] of newly admitted requests whose prompt is scored at every exit point
  // (RequestTelemetry::prompt_scores). Deterministic: admission n (0-based) is scored when
  // floor((n + 1) * rate) > floor(n * rate). Recomputed prefills are never scored.
  void set_prompt_sampling(double rate);
  // Caps the sequences in the batch below SchedulerLimits::max_running (a controller meeting a
  // latency bound); clamped to [1, max_running]. Running sequences are not evicted: admission
  // waits until the batch is under the cap.
  void set_max_running(int64_t cap);
  int64_t max_running() const { return max_running_.load(); }

  int64_t in_flight() const { return in_flight_.load(); }
  EngineStats stats() const;
  // As constructed: model_name and exit_policy are those of the start (see stats()).
  const EngineOptions& options() const { return options_; }
  // The model serving now (replaced at a switch; holders keep theirs alive).
  std::shared_ptr<const ModelInstance> model() const;

 private:
  struct Sequence;
  struct Metrics;
  struct Command {
    std::shared_ptr<const ModelInstance> model;  // null: resize the current model's pool
    std::string name;
    int64_t kv_blocks = 0;
    std::promise<void> done;
  };

  void run();
  // Queues a switch or resize for the engine thread.
  std::future<void> post(Command command);
  void apply(Command& command);
  void recompute_all(bool same_model);
  void report_step(const StepTelemetry& partial, Clock::time_point start, int64_t batch);
  void step();
  void ingest();
  void reap();
  void schedule_decodes(std::vector<Sequence*>& decodes, int64_t& budget);
  void schedule_prefills(std::vector<std::pair<Sequence*, int64_t>>& prefills, int64_t& budget);
  bool reserve_or_preempt(Sequence& sequence, int64_t new_length);
  void preempt(Sequence& victim);
  void run_prefill(Sequence& sequence, int64_t chunk);
  void run_decode(const std::vector<Sequence*>& decodes);
  void accept_token(Sequence& sequence, const at::Tensor& logits, const model::TokenExit& exit);
  void finish(Sequence& sequence, Finish reason, std::string error = {});
  void log_finished(const Request& request, const Usage& usage, Finish reason,
                    const std::string& error, const Sequence& sequence) const;
  void remove_finished();
  void publish_stats();

  // Written by the engine thread only, under mutex_; the engine thread reads it without.
  std::shared_ptr<const ModelInstance> model_;
  std::string model_name_;  // same rule as model_
  EngineOptions options_;
  std::unique_ptr<kv::KvCache> cache_;
  std::unique_ptr<Metrics> metrics_;
  std::atomic<double> exit_threshold_;
  std::atomic<double> prompt_sampling_{0.0};
  std::atomic<int64_t> max_running_{0};

  // Shared with front-end threads.
  mutable std::mutex mutex_;
  std::condition_variable wakeup_;
  std::deque<std::shared_ptr<Request>> incoming_;
  std::unordered_set<std::string> ids_in_flight_;
  bool closed_ = false;
  bool stopping_ = false;
  std::atomic<int64_t> in_flight_{0};
  std::atomic<bool> cancel_all_{false};
  std::deque<Command> commands_;
  EngineStats stats_;  // guarded by mutex_

  // Engine thread only.
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;  // in admission order
  int64_t steps_ = 0, preemptions_ = 0, finished_ = 0, recomputes_ = 0;
  uint64_t epoch_ = 0;
  int64_t weight_bytes_ = 0;  // of model_, counted once per switch
  uint64_t admissions_ = 0;      // requests admitted so far (prompt sampling)
  model::ExitPolicy policy_;     // this step's
  double forward_seconds_ = 0.0;  // of the current step: prefill and decode calls only
  StepTelemetry step_telemetry_;  // of the current step, filled as tokens are sampled
  std::thread thread_;
};

}  // namespace helios::engine
