#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_set>
#include <vector>

#include "helios/engine/engine_metrics.h"
#include "helios/engine/memory_plan.h"
#include "helios/engine/model_instance.h"
#include "helios/engine/output_processor.h"
#include "helios/engine/request.h"
#include "helios/engine/scheduler.h"
#include "helios/engine/telemetry.h"
#include "helios/kv/kv_cache.h"
#include "helios/metrics/registry.h"

namespace helios::engine {

struct SchedulerLimits {
  int64_t max_running = 64;        // sequences in the batch (prefilling or decoding)
  int64_t max_batch_tokens = 512;  // tokens one step may run: decodes + prefill chunks
  int64_t max_queued = 256;        // requests waiting for admission, per priority class
  // Scheduling classes 0 (most urgent) .. priority_levels - 1; a request that names none gets
  // default_priority.
  int64_t priority_levels = 3;
  int64_t default_priority = 1;
};

// Fault injection for tests: hooks the engine thread calls where a real failure would strike.
// Each may throw what that failure throws (std::bad_alloc, helios::Error); an unset hook costs
// nothing. Not for production use.
struct EngineFaults {
  // After each model forward (a prefill chunk, a batched or a one-row decode), before
  // sampling, with the request ids of its rows in row order and their logits ([rows, vocab],
  // float32, CPU; the hook runs in inference mode). It may overwrite logits (a row turned NaN)
  // or throw (the forward failed).
  std::function<void(const std::vector<std::string>& ids, at::Tensor& logits)> forward;
  // Before each KV pool of `blocks` blocks is allocated (a switch, a resize, their fallbacks).
  std::function<void(int64_t blocks)> kv_cache;
  // Once per step, after scheduling and before the forwards: a throw escapes the step.
  std::function<void()> step;
};

struct EngineOptions {
  std::string model_name;  // of the initial model; switch_model names the next ones
  MetricBuckets buckets;
  SchedulerLimits limits;
  int64_t kv_block_size = 16;
  int64_t kv_blocks = 0;  // pool size; see kv_blocks_for_budget
  model::ExitPolicy exit_policy;  // initial; see set_exit_threshold
  // With several resident models (set_resident), each arrival is routed by the NLL of at most
  // this many of its prompt tokens at each member's first exit point (router.h).
  int64_t router_max_tokens = 64;
  TelemetrySink* telemetry = nullptr;  // not owned; must outlive the engine thread
  // One log line (event request_finished, info) per finished request: id, model, finish
  // reason, prompt/output tokens, TTFT, queue and total time, mean exit layer, greedy exits,
  // preemptions, and the error of a failed request.
  bool log_requests = true;
  EngineFaults faults;  // tests only
};

// A member of a resident set.
struct ResidentMember {
  std::shared_ptr<const ModelInstance> model;
  std::string name;      // distinct within the set
  int64_t kv_blocks = 0;  // its pool; at least one full-context sequence of the model
};

// The continuous-batching engine. One thread owns the model, the KV cache and the batch. Each
// step it drops cancelled and expired requests, asks the Scheduler for the step's work
// (decodes and prefill chunks within the token budget, preempting the newest sequence when
// the pool is full), runs the prefills and one batched decode, samples, and hands the tokens
// to the OutputProcessor, which streams them back through each request's channel;
// EngineMetrics counts it all. A preempted sequence gives up its blocks and is later
// recomputed with its recorded exit layers, so it resumes exactly where it stopped.
//
// Faults stay with the request they belong to. A row whose logits cannot be sampled (NaN or
// +inf) or whose token cannot be emitted fails alone (kError, the cause in the message). A
// batched decode forward that throws (out of memory for the batch, say) is retried one row at
// a time, so only a row whose own forward fails too is lost; a prefill runs one sequence and
// fails only it. An exception that escapes a whole step fails the sequences of that batch and
// the engine goes on. A KV pool that cannot be allocated at a switch or resize leaves the
// current model on its old pool size, else on a one-sequence pool, else on an empty pool that
// each later step tries to rebuild (the sequences in flight fail meanwhile). Every fault is
// counted in helios_engine_faults_total{fault} (forward, sampling, step, kv_cache).
//
// The model can be swapped while serving (switch_model, resize_kv): at the next step boundary
// the engine drops the KV cache, builds one for the new model and recomputes every sequence
// in the batch before admitting new work, so each client's text continues without a lost or
// repeated token.
//
// Several models can be resident at once (set_resident), each with its own KV pool: a lane.
// Each arrival is routed to one member by its prompt (route_prompt: the lowest NLL of its
// prefix at each member's first exit) and stays there; one scheduler runs every lane's
// sequences within one token budget and one batch cap, and each step runs one batched decode
// per lane. A request moves only when its member leaves the set: it is then routed among the
// new members and recomputed there, as at a switch.
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
  // Queues a request. Throws Error(kInvalidArgument) for a priority outside
  // 0..priority_levels - 1, Error(kResourceExhausted) when max_queued requests of its priority
  // class wait already,
  // Error(kUnavailable) once close() was called, Error(kFailedPrecondition) when a request
  // with the same id is in flight. A request whose prompt leaves no room to generate within the
  // context of the model serving when the engine takes it in (a switch to a shorter context
  // since the front end checked it) finishes kError with error_code kInvalidArgument.
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
  // shrinks it before loading new weights so that a memory budget holds during a switch). With
  // several resident models the future throws kFailedPrecondition: set_resident sizes each.
  std::future<void> resize_kv(int64_t kv_blocks);
  // Makes `members` the resident set from the next step boundary (in this order; the first is
  // the one model() and stats().model_name name). A member whose model instance and pool size
  // are those of a current member carries on untouched: its pool and its sequences stay. The
  // pools of the others are freed before the new ones are built (a memory budget holds), and
  // their sequences are routed among the new members and recomputed: with their exits when
  // the new member is a load of the same model directory, else at full depth. The future throws
  // as switch_model's does (a pool too small for one full-context sequence, another
  // tokenizer), kInvalidArgument for an empty set or a repeated name; a pool that cannot be
  // allocated leaves the old set serving (see the class comment).
  std::future<void> set_resident(std::vector<ResidentMember> members);
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
  int64_t max_running() const { return scheduler_.max_running(); }

  int64_t in_flight() const { return in_flight_.load(); }
  // Throws what submit() throws for a full queue of class `priority` (Error kResourceExhausted):
  // max_queued requests of the class submitted and not yet admitted into the batch. A front
  // end's check before any real work; a class outside 0..priority_levels - 1 passes (the
  // request's validation refuses it).
  void refuse_if_queue_full(int32_t priority) const;
  EngineStats stats() const;
  // As constructed: model_name and exit_policy are those of the start (see stats()).
  const EngineOptions& options() const { return options_; }
  // The model serving now, the first of the resident set (replaced at a switch; holders keep
  // theirs alive).
  std::shared_ptr<const ModelInstance> model() const;
  // Every resident model, in lane order.
  std::vector<std::shared_ptr<const ModelInstance>> resident_models() const;

 private:
  // A change of the resident set posted by switch_model / resize_kv / set_resident, applied at
  // a step boundary.
  struct SwitchCommand {
    std::vector<ResidentMember> members;  // resize: one member with no model (the current one)
    bool resize = false;
    // switch_model and resize_kv rebuild every pool (the single-model contract); set_resident
    // keeps the members that do not change.
    bool rebuild_all = false;
    std::promise<void> done;
  };
  // A resident model with its pool.
  struct Lane {
    std::shared_ptr<const ModelInstance> model;
    std::string name;
    std::unique_ptr<kv::KvCache> cache;
    int64_t lost_pool_blocks = 0;  // > 0: the pool is empty and should be rebuilt this large
    int64_t routed = 0;            // requests routed to it since it joined
  };

  void run();
  std::future<void> post(SwitchCommand command);
  void apply_switch(SwitchCommand& command);
  // The lanes `command` asks for (models, names; no pools yet), validated against the set now.
  std::vector<Lane> resolve(const SwitchCommand& command) const;
  // A pool of `blocks` blocks for `model` (through EngineFaults::kv_cache).
  std::unique_ptr<kv::KvCache> allocate_cache(const ModelInstance& model, int64_t blocks);
  // After a failed allocation: lane `lane`'s pool at `blocks`, else at the one-sequence
  // minimum, else empty (its sequences fail; later steps retry `blocks`).
  void restore_lane(size_t lane, int64_t blocks);
  // Tries to rebuild the pools restore_lane left empty; a lane that still has none fails its
  // sequences. False when no lane has a pool.
  bool regrow_lost_pools();
  void bind_caches();
  // The member of `lanes` that serves each of `sequences` (the router, scoring them together,
  // for more than one member); its time counts in router_seconds_.
  std::vector<int32_t> route(const std::vector<Lane>& lanes, const std::vector<Sequence*>& sequences);
  // An exception escaped a step or a switch: the batch's sequences fail, the engine goes on.
  void recover(const char* what);
  void step();
  void ingest();
  void reap();
  void admit(const StepPlan& plan);
  void run_prefill(Sequence& sequence, int64_t chunk);
  void run_decode(const std::vector<Sequence*>& decodes);
  // One model forward over `rows` through EngineFaults::forward; when it throws, the rows'
  // KV lengths are what they were (a retry rewrites the same positions).
  model::StepOutput forward(const std::vector<Sequence*>& rows,
                            const std::function<model::StepOutput()>& run);
  // One batched decode of `rows`, all of one lane.
  model::StepOutput forward_decode(const std::vector<Sequence*>& rows);
  // Samples and emits row `row` of `out` for `sequence`; a failure fails only that sequence.
  void emit_row(Sequence& sequence, const model::StepOutput& out, size_t row, bool decoded);
  void emit(Sequence& sequence, const at::Tensor& logits, const model::TokenExit& exit);
  // The sequence fails with `what` (the cause, e.what()) after `stage` ("model forward").
  void fail(Sequence& sequence, std::string_view fault, std::string_view stage,
            std::string_view what);
  // refuse_if_queue_full with mutex_ held and `priority` in range.
  void refuse_if_queue_full_locked(int32_t priority) const;
  void finish(Sequence& sequence, Finish reason, std::string error = {},
              ErrorCode code = ErrorCode::kInternal);
  // Finishes an arrival or a waiting sequence whose prompt leaves no room to generate within
  // its member's context (the front end's rule, applied again after a switch); true if it did.
  bool refuse_if_too_long(Sequence& sequence);
  const Lane& lane_of(const Sequence& sequence) const { return lanes_.at(sequence.lane); }
  ServedModel served(const Lane& lane) const;
  void publish_stats();

  // Written by the engine thread only, under mutex_; the engine thread reads it without.
  std::vector<Lane> lanes_;  // the resident set; index = Sequence::lane
  EngineOptions options_;
  Scheduler scheduler_;  // engine thread only, but for set_max_running
  OutputProcessor output_;
  EngineMetrics metrics_;
  std::atomic<double> exit_threshold_;
  std::atomic<double> prompt_sampling_{0.0};

  // Shared with front-end threads.
  mutable std::mutex mutex_;
  std::condition_variable wakeup_;
  std::deque<std::shared_ptr<Request>> incoming_;
  std::unordered_set<std::string> ids_in_flight_;
  std::vector<int64_t> queued_by_class_;  // by priority: submitted, not yet admitted
  bool closed_ = false;
  bool stopping_ = false;
  std::atomic<int64_t> in_flight_{0};
  std::atomic<bool> cancel_all_{false};
  std::deque<SwitchCommand> commands_;
  EngineStats stats_;  // guarded by mutex_

  // Engine thread only.
  int64_t steps_ = 0, preemptions_ = 0, finished_ = 0, recomputes_ = 0, routed_ = 0;
  double router_seconds_ = 0.0;
  uint64_t epoch_ = 0;
  uint64_t admissions_ = 0;       // requests admitted so far (prompt sampling)
  model::ExitPolicy policy_;      // this step's
  double forward_seconds_ = 0.0;  // of the current step: prefill and decode calls only
  std::thread thread_;
};

}  // namespace helios::engine
