#include "helios/engine/serving_engine.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include "helios/common/exception_message.h"
#include "helios/common/error.h"
#include "helios/common/files.h"
#include "durations.h"

namespace helios::engine {

namespace {

const ModelInstance& checked(const std::shared_ptr<const ModelInstance>& model) {
  if (!model) throw Error(ErrorCode::kInvalidArgument, "serving engine: no model");
  return *model;
}

const SchedulerLimits& checked(const SchedulerLimits& limits) {
  if (limits.max_running < 1 || limits.max_batch_tokens < 1 || limits.max_queued < 0) {
    throw Error(ErrorCode::kInvalidArgument,
                "scheduler limits: max_running and max_batch_tokens must be positive, "
                "max_queued non-negative");
  }
  return limits;
}

}  // namespace

ServingEngine::ServingEngine(const ModelInstance& model, EngineOptions options,
                             metrics::Registry* registry)
    : ServingEngine(std::shared_ptr<const ModelInstance>(&model, [](const ModelInstance*) {}),
                    std::move(options), registry) {}

ServingEngine::ServingEngine(std::shared_ptr<const ModelInstance> model, EngineOptions options,
                             metrics::Registry* registry)
    : model_(std::move(model)),
      model_name_(options.model_name),
      options_(std::move(options)),
      cache_(make_kv_cache(checked(model_).transformer(), options_.kv_block_size,
                           options_.kv_blocks)),
      scheduler_(*cache_, checked(options_.limits).max_running),
      output_(options_.log_requests),
      metrics_(registry, options_.buckets, options_.telemetry, model_name_, *model_),
      exit_threshold_(options_.exit_policy.threshold),
      weight_bytes_(model_->resident_bytes()),
      policy_(options_.exit_policy) {
  options_.exit_policy.validate();
  output_.bind(model_->config());
  publish_stats();
}

ServingEngine::~ServingEngine() { stop(); }

void ServingEngine::start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { run(); });
}

void ServingEngine::submit(std::shared_ptr<Request> request) {
  {
    std::lock_guard lock(mutex_);
    if (closed_ || stopping_) {
      throw Error(ErrorCode::kUnavailable, "the server is shutting down");
    }
    const int64_t queued = in_flight_.load() - stats_.running;
    if (queued >= options_.limits.max_queued) {
      throw Error(ErrorCode::kResourceExhausted,
                  fmt::format("request queue is full ({} requests waiting, limit "
                              "scheduler.max_queued_requests = {})",
                              queued, options_.limits.max_queued));
    }
    if (!ids_in_flight_.insert(request->spec().id).second) {
      throw Error(ErrorCode::kFailedPrecondition,
                  "request_id: a request with id '" + request->spec().id + "' is in flight");
    }
    incoming_.push_back(std::move(request));
    in_flight_.fetch_add(1);
  }
  wakeup_.notify_one();
}

void ServingEngine::wake() {
  { std::lock_guard lock(mutex_); }  // orders the caller's writes before the engine's wait
  wakeup_.notify_one();
}

void ServingEngine::close() {
  std::lock_guard lock(mutex_);
  closed_ = true;
}

void ServingEngine::cancel_all() {
  cancel_all_.store(true);
  wake();
}

void ServingEngine::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wakeup_.notify_one();
  if (thread_.joinable()) thread_.join();
  std::lock_guard lock(mutex_);
  for (SwitchCommand& command : commands_) {
    command.done.set_exception(std::make_exception_ptr(
        Error(ErrorCode::kUnavailable, "the engine stopped before the model switch")));
  }
  commands_.clear();
}

// ---- Model switches and pool resizes (at a step boundary) ----

std::future<void> ServingEngine::switch_model(std::shared_ptr<const ModelInstance> model,
                                              std::string name, int64_t kv_blocks) {
  if (!model) throw Error(ErrorCode::kInvalidArgument, "switch_model: no model");
  return post(SwitchCommand{std::move(model), std::move(name), kv_blocks, {}});
}

std::future<void> ServingEngine::resize_kv(int64_t kv_blocks) {
  return post(SwitchCommand{nullptr, {}, kv_blocks, {}});
}

std::future<void> ServingEngine::post(SwitchCommand command) {
  std::future<void> done = command.done.get_future();
  {
    std::lock_guard lock(mutex_);
    if (stopping_) throw Error(ErrorCode::kUnavailable, "the engine is stopping");
    commands_.push_back(std::move(command));
  }
  wakeup_.notify_one();
  return done;
}

void ServingEngine::apply_switch(SwitchCommand& command) {
  try {
    const bool resize = command.model == nullptr;
    const std::shared_ptr<const ModelInstance> next = resize ? model_ : command.model;
    const std::string name = resize ? model_name_ : command.name;
    const int64_t block_size = options_.kv_block_size;
    const int64_t context = next->config().max_position_embeddings;
    if (command.kv_blocks < blocks_for_tokens(context, block_size)) {
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("{}: {} KV blocks of {} tokens cannot hold one full-context "
                              "sequence of {} tokens",
                              resize ? "resize_kv" : "switch_model " + name, command.kv_blocks,
                              block_size, context));
    }
    const bool same_model = same_directory(next->loaded().dir, model_->loaded().dir);
    if (!same_model) {
      // Sequences in flight carry on with the new model: their tokens must mean the same.
      const tokenizer::Tokenizer &old_tok = model_->tokenizer(), &new_tok = next->tokenizer();
      if (old_tok.vocab_size() != new_tok.vocab_size() || old_tok.bos_id() != new_tok.bos_id() ||
          old_tok.eos_id() != new_tok.eos_id() ||
          model_->config().vocab_size != next->config().vocab_size) {
        throw Error(ErrorCode::kFailedPrecondition,
                    "switch_model " + name + ": its tokenizer differs from the serving model's " +
                        "(vocabulary or special tokens)");
      }
    }
    rebuild_cache(*next, command.kv_blocks);
    if (!resize) metrics_.on_switch(model_name_, name, *next);
    {
      std::lock_guard lock(mutex_);
      model_ = next;
      model_name_ = name;
    }
    output_.bind(next->config());
    weight_bytes_ = next->resident_bytes();
    ++epoch_;
    const int64_t batch = scheduler_.running();
    recompute_all(same_model);
    // Visible in stats() by the time the caller's future is ready.
    publish_stats();
    spdlog::info("{} {} ({} layers): KV pool of {} blocks, {} sequences recomputed",
                 resize ? "resized the KV pool of" : "switched to", name,
                 next->transformer().loaded_layers(), command.kv_blocks, batch);
    command.done.set_value();
  } catch (...) {
    // Whatever pool the engine kept is visible by the time the caller's future is ready.
    try {
      publish_stats();
    } catch (const std::exception& e) {
      spdlog::error("engine: status not refreshed after a failed switch: {}", exception_message(e));
    }
    command.done.set_exception(std::current_exception());
  }
}

void ServingEngine::rebuild_cache(const ModelInstance& next, int64_t kv_blocks) {
  // The old pool goes first: every sequence gives its blocks back so that the old cache can be
  // freed before the new one is allocated (a memory budget holds).
  scheduler_.release_all();
  const int64_t old_blocks = cache_->pool().total_blocks();
  cache_.reset();
  try {
    cache_ = allocate_cache(next, kv_blocks);
  } catch (const std::exception& e) {
    spdlog::error("KV pool of {} blocks could not be allocated: {}", kv_blocks, exception_message(e));
    metrics_.on_fault("kv_cache");
    restore_cache(old_blocks);
    throw;
  }
  scheduler_.set_cache(*cache_);
}

std::unique_ptr<kv::KvCache> ServingEngine::allocate_cache(const ModelInstance& model,
                                                           int64_t blocks) {
  if (options_.faults.kv_cache) options_.faults.kv_cache(blocks);
  return make_kv_cache(model.transformer(), options_.kv_block_size, blocks);
}

void ServingEngine::restore_cache(int64_t blocks) {
  // Keep serving the current model: its old pool size, or the smallest pool that still runs one
  // full-context sequence when the memory the old one held is gone.
  const int64_t minimum =
      blocks_for_tokens(model_->config().max_position_embeddings, options_.kv_block_size);
  for (const int64_t size : {blocks, std::min(blocks, minimum)}) {
    try {
      cache_ = allocate_cache(*model_, size);
      break;
    } catch (const std::exception& e) {
      spdlog::error("KV pool of {} blocks for {} could not be allocated: {}", size, model_name_,
                    exception_message(e));
      metrics_.on_fault("kv_cache");
    }
  }
  if (!cache_) {
    // No pool at all: an empty one keeps the engine consistent, nothing can run until a later
    // step rebuilds it.
    cache_ = make_kv_cache(model_->transformer(), options_.kv_block_size, 0);
    lost_pool_blocks_ = blocks;
  }
  scheduler_.set_cache(*cache_);
  recompute_all(true);
  if (lost_pool_blocks_ > 0) regrow_lost_pool();
}

bool ServingEngine::regrow_lost_pool() {
  if (lost_pool_blocks_ == 0) return true;
  std::string why;
  try {
    std::unique_ptr<kv::KvCache> cache = allocate_cache(*model_, lost_pool_blocks_);
    scheduler_.release_all();
    cache_ = std::move(cache);
    scheduler_.set_cache(*cache_);
    spdlog::info("KV pool of {} blocks rebuilt for {}", lost_pool_blocks_, model_name_);
    lost_pool_blocks_ = 0;
    return true;
  } catch (const std::exception& e) {
    why = exception_message(e);
  }
  metrics_.on_fault("kv_cache");
  spdlog::error("no KV pool: {} blocks for {} could not be allocated: {}", lost_pool_blocks_,
                model_name_, why);
  const std::string error = "the engine has no KV cache (" + why + ")";
  scheduler_.for_each([&](Sequence& sequence) { finish(sequence, Finish::kError, error); });
  scheduler_.drop_finished();
  return false;
}

void ServingEngine::recompute_all(bool same_model) {
  const int64_t context = model_->config().max_position_embeddings;
  const Requeue requeue = scheduler_.requeue_all(same_model, context);
  recomputes_ += requeue.recomputed;
  for (Sequence* sequence : requeue.exceeds_context) {
    // The new model's context cannot hold what the sequence already has.
    if (!refuse_if_too_long(*sequence, context)) finish(*sequence, Finish::kLength);
  }
  scheduler_.drop_finished();
}

bool ServingEngine::refuse_if_too_long(Sequence& sequence, int64_t context) {
  if (sequence.generated > 0 || sequence.prompt_length < context) return false;
  // What the front end answers a prompt that long, for a request it accepted under a model
  // with a longer context.
  finish(sequence, Finish::kError,
         fmt::format("prompt: {} tokens (with BOS) leave no room to generate within the "
                     "context of {} tokens of {}, the model now serving",
                     sequence.prompt_length, context, model_name_),
         ErrorCode::kInvalidArgument);
  return true;
}

// ---- Settings and status (any thread) ----

EngineStats ServingEngine::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

std::shared_ptr<const ModelInstance> ServingEngine::model() const {
  std::lock_guard lock(mutex_);
  return model_;
}

void ServingEngine::set_exit_threshold(double threshold) {
  model::ExitPolicy policy = options_.exit_policy;
  policy.threshold = threshold;
  policy.validate();
  exit_threshold_.store(threshold);
}

void ServingEngine::set_max_running(int64_t cap) {
  scheduler_.set_max_running(cap);
  wake();
}

void ServingEngine::set_prompt_sampling(double rate) {
  if (!(rate >= 0.0 && rate <= 1.0)) {
    throw Error(ErrorCode::kInvalidArgument,
                "prompt sampling rate must be in [0, 1], got " + std::to_string(rate));
  }
  prompt_sampling_.store(rate);
}

// ---- The engine thread ----

void ServingEngine::run() {
  while (true) {
    std::deque<SwitchCommand> commands;
    bool work = false;
    {
      std::unique_lock lock(mutex_);
      wakeup_.wait(lock, [&] {
        return stopping_ || !incoming_.empty() || !scheduler_.idle() || cancel_all_.load() ||
               !commands_.empty();
      });
      if (stopping_) break;
      commands.swap(commands_);
      work = !incoming_.empty() || !scheduler_.idle() || cancel_all_.load();
    }
    // An exception escaping the thread would end the process: whatever escapes a step fails
    // that step's batch, and the engine goes on with the next.
    try {
      // At the step boundary: nothing holds a pointer into the batch or the cache.
      for (SwitchCommand& command : commands) apply_switch(command);
      if (work) step();
    } catch (const std::exception& e) {
      recover(exception_message(e).c_str());
    } catch (...) {
      recover("unknown exception");
    }
  }
  // Stopping: whatever is still in flight ends now, cancelled.
  try {
    ingest();
    scheduler_.for_each([&](Sequence& sequence) { finish(sequence, Finish::kCancelled); });
    scheduler_.drop_finished();
    publish_stats();
  } catch (const std::exception& e) {
    spdlog::error("engine: stopping: {}", exception_message(e));
  }
}

void ServingEngine::recover(const char* what) {
  spdlog::error("engine step failed: {}; its batch fails, the engine goes on", what);
  try {
    metrics_.on_fault("step");
    const std::string error = std::string("engine step failed: ") + what;
    scheduler_.for_each_running([&](Sequence& sequence) {
      finish(sequence, Finish::kError, error);
    });
    scheduler_.drop_finished();
    publish_stats();
  } catch (const std::exception& e) {
    spdlog::error("engine: recovering from a failed step: {}", exception_message(e));
  }
}

void ServingEngine::ingest() {
  std::deque<std::shared_ptr<Request>> arrived;
  {
    std::lock_guard lock(mutex_);
    arrived.swap(incoming_);
  }
  // Validated by the front end against the model serving then, which a switch may since have
  // replaced with one of a shorter context.
  const int64_t context = model_->config().max_position_embeddings;
  for (auto& request : arrived) {
    auto sequence = std::make_unique<Sequence>(std::move(request), model_->shared_tokenizer());
    if (!refuse_if_too_long(*sequence, context)) scheduler_.enqueue(std::move(sequence));
  }
}

void ServingEngine::reap() {
  const bool cancel_everything = cancel_all_.exchange(false);
  const Clock::time_point now = Clock::now();
  scheduler_.for_each([&](Sequence& sequence) {
    if (sequence.finished()) return;
    // The deadline first: a call cut by its deadline is cancelled as well (gRPC cancels it at
    // the deadline), and it must count as what it was.
    if (now >= sequence.request->spec().deadline) {
      finish(sequence, Finish::kDeadline);
    } else if (cancel_everything || sequence.request->cancelled()) {
      finish(sequence, Finish::kCancelled);
    }
  });
  scheduler_.drop_finished();
}

void ServingEngine::step() {
  const Clock::time_point start = Clock::now();
  policy_.threshold = exit_threshold_.load();
  metrics_.begin_step();
  ingest();
  reap();
  if (!regrow_lost_pool()) {
    publish_stats();
    return;
  }

  const StepPlan plan = scheduler_.schedule(options_.limits.max_batch_tokens);
  preemptions_ += plan.preempted;
  metrics_.on_preempt(plan.preempted);
  admit(plan);
  // Status shows the batch this step runs (its blocks reserved) before any of its tokens
  // reach a client: a client that reads its first token and then asks for the status sees
  // the blocks its request holds.
  publish_stats();
  if (options_.faults.step) options_.faults.step();

  forward_seconds_ = 0.0;
  for (const PrefillChunk& prefill : plan.prefills) {
    run_prefill(*prefill.sequence, prefill.tokens);
  }
  if (!plan.decodes.empty()) run_decode(plan.decodes);
  scheduler_.drop_finished();
  ++steps_;
  publish_stats();
  metrics_.on_step(plan.batch(), served(), scheduler_.running(), scheduler_.waiting(), start,
                   forward_seconds_);
}

void ServingEngine::admit(const StepPlan& plan) {
  // Deterministic prompt sampling: admission n (0-based) is scored when
  // floor((n + 1) * rate) > floor(n * rate).
  const double rate = prompt_sampling_.load();
  for (Sequence* sequence : plan.admitted) {
    const Clock::time_point now = Clock::now();
    const uint64_t n = admissions_++;
    const bool sampled =
        std::floor(static_cast<double>(n + 1) * rate) > std::floor(static_cast<double>(n) * rate);
    sequence->admit(now, epoch_, sequence->request->spec().score_prompt || sampled);
    metrics_.on_admit(*sequence, now);
  }
}

void ServingEngine::run_prefill(Sequence& sequence, int64_t chunk) {
  const int64_t begin = sequence.kv.length;
  const std::span<const int32_t> tokens(sequence.tokens.data() + begin, chunk);
  const std::vector<int32_t> exits = sequence.replay_exits(begin, chunk);
  const bool score = sequence.score_prompt && exits.empty();
  model::StepOutput out;
  try {
    out = forward({&sequence}, [&] {
      return model_->transformer().prefill(*cache_, sequence.kv, tokens, policy_, score, exits,
                                           score && begin + chunk < sequence.prompt_length
                                               ? sequence.tokens[begin + chunk]
                                               : -1);
    });
  } catch (const std::exception& e) {
    fail(sequence, "forward", "prefill forward", exception_message(e));
    return;
  }
  if (score) {
    sequence.prompt_scores->add(out.prompt_scores);
    // Scored once: a later recompute of the prompt is not.
    if (sequence.kv.length >= sequence.prompt_length) {
      sequence.score_prompt = false;
      metrics_.on_prompt_scored(sequence, served(), Clock::now());
    }
  }
  if (sequence.kv.length == sequence.prefill_target() && sequence.generated == 0) {
    emit_row(sequence, out, 0, false);
  }
}

void ServingEngine::run_decode(const std::vector<Sequence*>& decodes) {
  model::StepOutput out;
  try {
    out = forward_decode(decodes);
  } catch (const std::exception& e) {
    if (decodes.size() == 1) {
      fail(*decodes[0], "forward", "decode forward", exception_message(e));
      return;
    }
    // The batch's forward failed (out of memory for its activations, say): each row alone may
    // still run, so only a row whose own forward fails too is lost.
    spdlog::warn("decode forward of {} sequences failed ({}); running them one at a time",
                 decodes.size(), exception_message(e));
    metrics_.on_fault("forward");
    for (Sequence* sequence : decodes) {
      model::StepOutput alone;
      try {
        alone = forward_decode({sequence});
      } catch (const std::exception& row_error) {
        fail(*sequence, "forward", "decode forward", row_error.what());
        continue;
      }
      emit_row(*sequence, alone, 0, true);
    }
    return;
  }
  for (size_t b = 0; b < decodes.size(); ++b) emit_row(*decodes[b], out, b, true);
}

model::StepOutput ServingEngine::forward_decode(const std::vector<Sequence*>& rows) {
  std::vector<kv::SequenceKv*> kvs;
  std::vector<int32_t> tokens;
  kvs.reserve(rows.size());
  tokens.reserve(rows.size());
  for (Sequence* sequence : rows) {
    kvs.push_back(&sequence->kv);
    tokens.push_back(sequence->tokens.back());
  }
  return forward(rows, [&] { return model_->transformer().decode(*cache_, kvs, tokens, policy_); });
}

model::StepOutput ServingEngine::forward(const std::vector<Sequence*>& rows,
                                         const std::function<model::StepOutput()>& run) {
  std::vector<int64_t> lengths;
  lengths.reserve(rows.size());
  for (const Sequence* sequence : rows) lengths.push_back(sequence->kv.length);
  const Clock::time_point t0 = Clock::now();
  try {
    model::StepOutput out = run();
    if (options_.faults.forward) {
      c10::InferenceMode inference;  // the logits are inference tensors
      std::vector<std::string> ids;
      for (const Sequence* sequence : rows) ids.push_back(sequence->request->spec().id);
      options_.faults.forward(ids, out.logits);
    }
    forward_seconds_ += seconds_between(t0, Clock::now());
    return out;
  } catch (...) {
    forward_seconds_ += seconds_between(t0, Clock::now());
    for (size_t i = 0; i < rows.size(); ++i) rows[i]->kv.length = lengths[i];
    throw;
  }
}

void ServingEngine::emit_row(Sequence& sequence, const model::StepOutput& out, size_t row,
                             bool decoded) {
  try {
    if (decoded) sequence.decoded_exits.push_back(out.exits[row].exit_layer);
    emit(sequence, out.logits[static_cast<int64_t>(row)], out.exits[row]);
  } catch (const std::exception& e) {
    fail(sequence, "sampling", "sampling", exception_message(e));
  }
}

void ServingEngine::fail(Sequence& sequence, std::string_view fault, std::string_view stage,
                         std::string_view what) {
  spdlog::error("request {}: {} failed: {}", sequence.request->spec().id, stage, what);
  metrics_.on_fault(fault);
  finish(sequence, Finish::kError, fmt::format("{} failed: {}", stage, what));
}

void ServingEngine::emit(Sequence& sequence, const at::Tensor& logits,
                         const model::TokenExit& exit) {
  const int32_t token = sequence.sampler.sample(logits);
  const Clock::time_point now = Clock::now();
  metrics_.on_token(sequence, exit, now);
  const Finish end = output_.emit_token(sequence, token, exit, now);
  if (end != Finish::kNone) finish(sequence, end);
}

void ServingEngine::finish(Sequence& sequence, Finish reason, std::string error,
                           ErrorCode code) {
  if (sequence.finished()) return;
  sequence.finish = reason;
  cache_->release(sequence.kv);
  const Clock::time_point now = Clock::now();
  const ServedModel model = served();
  Update last = output_.final_update(sequence, reason, std::move(error), model_name_,
                                     model.loaded_layers, now);
  last.error_code = code;
  ++finished_;
  metrics_.on_finish(sequence, reason, model, now);
  sequence.request->channel().push(std::move(last));
  {
    std::lock_guard lock(mutex_);
    ids_in_flight_.erase(sequence.request->spec().id);
  }
  in_flight_.fetch_sub(1);
}

ServedModel ServingEngine::served() const {
  return ServedModel{model_name_, model_->transformer().loaded_layers(), epoch_};
}

void ServingEngine::publish_stats() {
  EngineStats stats;
  stats.running = scheduler_.running();
  stats.kv_blocks_total = cache_->pool().total_blocks();
  stats.kv_blocks_used = cache_->pool().used_blocks();
  stats.kv_cache_bytes = cache_->resident_bytes();
  stats.steps = steps_;
  stats.preemptions = preemptions_;
  stats.finished = finished_;
  stats.model_name = model_name_;
  stats.loaded_layers = model_->transformer().loaded_layers();
  stats.model_epoch = epoch_;
  stats.kv_block_size = options_.kv_block_size;
  stats.kv_sequences = sequences_in(stats.kv_blocks_total, options_.kv_block_size,
                                    model_->config().max_position_embeddings);
  stats.recomputes = recomputes_;
  stats.weight_bytes = weight_bytes_;
  {
    std::lock_guard lock(mutex_);
    stats.waiting = scheduler_.waiting() + static_cast<int64_t>(incoming_.size());
    stats_ = stats;
  }
  metrics_.publish(stats, scheduler_.waiting());
}

}  // namespace helios::engine
