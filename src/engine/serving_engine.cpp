#include "helios/engine/serving_engine.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include "helios/common/error.h"
#include "helios/common/logging.h"
#include "helios/engine/stop_matcher.h"
#include "helios/tokenizer/stream_decoder.h"
#include "helios/tokenizer/utf8.h"

namespace helios::engine {

namespace {

double seconds_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

}  // namespace

int64_t kv_blocks_for_budget(const ModelInstance& model, int64_t budget_bytes, int64_t block_size,
                             std::string_view field) {
  const model::Transformer& transformer = model.transformer();
  const int64_t weights = model.loaded().weights.resident_bytes();
  const kv::KvCacheShape shape = transformer.kv_shape(block_size);
  const at::ScalarType dtype = transformer.weights().embed_tokens.scalar_type();
  const int64_t per_token = kv::KvCache::bytes_per_token(shape, dtype);
  const int64_t context = model.config().max_position_embeddings;
  const int64_t one_sequence = (context + block_size - 1) / block_size * block_size * per_token;
  const int64_t blocks =
      budget_bytes > weights ? kv::KvCache::blocks_for_budget(shape, dtype, budget_bytes - weights)
                             : 0;
  if (blocks * block_size < context) {
    constexpr double kMiB = 1024.0 * 1024.0;
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("{}: {:.2f} MiB does not hold the resident weights ({:.2f} MiB) plus "
                            "the KV cache of one full-context sequence ({:.2f} MiB, {} tokens)",
                            field, budget_bytes / kMiB, weights / kMiB, one_sequence / kMiB,
                            context));
  }
  return blocks;
}

// One request inside the engine.
struct ServingEngine::Sequence {
  Sequence(std::shared_ptr<Request> r, std::shared_ptr<const tokenizer::Tokenizer> t)
      : request(std::move(r)),
        sampler(request->spec().sampling),
        tokens(request->spec().prompt),
        prompt_length(static_cast<int64_t>(tokens.size())),
        tokenizer(std::move(t)),
        decoder(*tokenizer),
        stop(request->spec().stop) {}

  // Positions that must be in the cache before the next decode: the prompt, or after a
  // preemption everything but the last sampled token (which the next decode feeds).
  int64_t prefill_target() const {
    return generated == 0 ? prompt_length : static_cast<int64_t>(tokens.size()) - 1;
  }
  bool decoding() const { return generated > 0 && kv.length == prefill_target(); }

  std::shared_ptr<Request> request;
  kv::SequenceKv kv;
  Sampler sampler;
  std::vector<int32_t> tokens;  // prompt, then generated
  int64_t prompt_length;
  // Exit layer of each decoded position (position prompt_length + i), kept for recompute.
  std::vector<int32_t> decoded_exits;
  int64_t generated = 0;
  double exit_layer_sum = 0.0;
  // The decoder's tokenizer, kept alive across a model switch (the text continues with it).
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer;
  tokenizer::StreamDecoder decoder;
  StopMatcher stop;
  bool admitted = false;
  Clock::time_point admitted_at, first_token_at, last_token_at;
  int64_t preemptions = 0;
  Finish finish = Finish::kNone;
  // Telemetry.
  uint64_t admitted_epoch = 0;
  bool score_prompt = false;  // until its prompt has been prefilled once, uninterrupted
  std::optional<model::ExitScores> prompt_scores;
  std::vector<int64_t> exit_counts;  // by exit layer
  int64_t greedy_exits = 0;

  // A prefill that will not finish as one (preemption, model switch) drops its partial
  // scores, which would mislead; a prompt whose client asked for the score is scored again by
  // the recomputed prefill (which, before any token was generated, covers only the prompt).
  void restart_prompt_scoring() {
    if (!score_prompt) return;  // scored already, or never asked
    prompt_scores.reset();
    score_prompt = request->spec().score_prompt && generated == 0;
    if (score_prompt) prompt_scores.emplace();
  }
};

struct ServingEngine::Metrics {
  Metrics(metrics::Registry& r, const EngineOptions& options, const ModelInstance& model)
      : registry(r) {
    const MetricBuckets& b = options.buckets;
    ttft = &r.histogram("helios_time_to_first_token_seconds",
                        "Time from arrival to the first generated token.",
                        b.time_to_first_token)
                .get();
    inter_token = &r.histogram("helios_inter_token_latency_seconds",
                               "Time between consecutive generated tokens of a request.",
                               b.inter_token)
                       .get();
    e2e = &r.histogram("helios_request_duration_seconds",
                       "End-to-end request latency, arrival to finish.", b.request)
               .get();
    queue = &r.histogram("helios_queue_time_seconds",
                         "Time from arrival to first admission into the batch.", b.queue)
                 .get();
    batch_size = &r.histogram("helios_batch_size",
                              "Sequences run per engine step (prefill chunks and decodes).",
                              b.batch_size)
                      .get();
    running = &r.gauge("helios_requests_running", "Sequences in the batch.").get();
    waiting = &r.gauge("helios_requests_waiting", "Requests waiting for admission.").get();
    blocks_total = &r.gauge("helios_kv_blocks_capacity", "KV cache blocks in the pool.").get();
    blocks_used = &r.gauge("helios_kv_blocks_used", "KV cache blocks held by sequences.").get();
    usage = &r.gauge("helios_kv_usage_ratio", "Share of KV cache blocks in use (0-1).").get();
    prompt_tokens = &r.counter("helios_prompt_tokens_total", "Prompt tokens admitted.").get();
    generated_tokens =
        &r.counter("helios_generation_tokens_total", "Tokens generated.").get();
    finished = &r.counter("helios_requests_finished_total", "Requests finished, by reason.",
                          {"reason"});
    exits = &r.counter("helios_token_exits_total",
                       "Generated tokens by the layer they left the network at.",
                       {"model", "layer"});
    greedy_family = &r.counter("helios_greedy_exits_total",
                               "Generated tokens no exit was confident about (left at the last "
                               "loaded layer).",
                               {"model"});
    preemptions = &r.counter("helios_preemptions_total",
                             "Sequences preempted because the KV cache was full.")
                       .get();
    steps = &r.counter("helios_engine_steps_total", "Engine steps run.").get();
    step_seconds = &r.counter("helios_engine_step_seconds_total",
                              "Wall time of engine steps (scheduling, model, sampling, "
                              "streaming).")
                        .get();
    forward_seconds = &r.counter("helios_model_forward_seconds_total",
                                 "Wall time of engine steps spent in the model forward.")
                           .get();
    weight_bytes = &r.gauge("helios_resident_weight_bytes",
                            "Bytes of model weights resident in memory.", {"model"});
    loaded_layers =
        &r.gauge("helios_loaded_layers", "Decoder layers loaded, per model.", {"model"});
    kv_bytes = &r.gauge("helios_kv_cache_bytes", "Bytes of the KV cache pool.").get();
    kv_sequences = &r.gauge("helios_kv_capacity_sequences",
                            "Full-context sequences the KV cache pool holds.")
                        .get();
    bind(options.model_name, model);
    for (const Finish f : {Finish::kStop, Finish::kLength, Finish::kCancelled, Finish::kDeadline,
                           Finish::kError}) {
      finished->labels({std::string(finish_label(f))});
    }
  }

  // Points the per-model series at `model`, served as `name`.
  void bind(const std::string& name, const ModelInstance& model) {
    weight_bytes->labels({name}).set(static_cast<double>(model.resident_bytes()));
    loaded_layers->labels({name}).set(static_cast<double>(model.transformer().loaded_layers()));
    greedy = &greedy_family->labels({name});
    exit_by_layer.assign(model.transformer().loaded_layers() + 1, nullptr);
    for (const int32_t layer : model.transformer().exit_points()) {
      exit_by_layer[layer] = &exits->labels({name, std::to_string(layer)});
    }
  }
  // The model served as `name` is no longer resident (counters keep their totals).
  void unbind(const std::string& name) {
    weight_bytes->labels({name}).set(0.0);
    loaded_layers->labels({name}).set(0.0);
  }

  metrics::Registry& registry;
  metrics::Histogram *ttft, *inter_token, *e2e, *queue, *batch_size;
  metrics::Gauge *running, *waiting, *blocks_total, *blocks_used, *usage, *kv_bytes = nullptr,
                                                                          *kv_sequences = nullptr;
  metrics::Counter *prompt_tokens, *generated_tokens, *greedy = nullptr, *preemptions, *steps,
      *step_seconds, *forward_seconds;
  metrics::Family<metrics::Counter>*finished, *exits, *greedy_family;
  metrics::Family<metrics::Gauge>*weight_bytes, *loaded_layers;
  std::vector<metrics::Counter*> exit_by_layer;  // by exit layer; null where no exit point
};

namespace {

std::unique_ptr<kv::KvCache> make_cache(const ModelInstance& model, int64_t block_size,
                                        int64_t blocks) {
  const model::ModelWeights& weights = model.transformer().weights();
  return std::make_unique<kv::KvCache>(model.transformer().kv_shape(block_size), blocks,
                                       weights.embed_tokens.scalar_type(),
                                       weights.embed_tokens.device());
}

bool same_directory(const std::filesystem::path& a, const std::filesystem::path& b) {
  std::error_code error;
  const bool equivalent = std::filesystem::equivalent(a, b, error);
  return error ? a.lexically_normal() == b.lexically_normal() : equivalent;
}

}  // namespace

ServingEngine::ServingEngine(const ModelInstance& model, EngineOptions options,
                             metrics::Registry* registry)
    : ServingEngine(std::shared_ptr<const ModelInstance>(&model, [](const ModelInstance*) {}),
                    std::move(options), registry) {}

ServingEngine::ServingEngine(std::shared_ptr<const ModelInstance> model, EngineOptions options,
                             metrics::Registry* registry)
    : model_(std::move(model)),
      options_(std::move(options)),
      exit_threshold_(options_.exit_policy.threshold),
      policy_(options_.exit_policy) {
  if (!model_) throw Error(ErrorCode::kInvalidArgument, "serving engine: no model");
  model_name_ = options_.model_name;
  weight_bytes_ = model_->resident_bytes();
  options_.exit_policy.validate();
  cache_ = make_cache(*model_, options_.kv_block_size, options_.kv_blocks);
  const SchedulerLimits& limits = options_.limits;
  if (limits.max_running < 1 || limits.max_batch_tokens < 1 || limits.max_queued < 0) {
    throw Error(ErrorCode::kInvalidArgument,
                "scheduler limits: max_running and max_batch_tokens must be positive, "
                "max_queued non-negative");
  }
  max_running_.store(limits.max_running);
  if (registry != nullptr) {
    metrics_ = std::make_unique<Metrics>(*registry, options_, *model_);
    metrics_->kv_bytes->set(static_cast<double>(cache_->resident_bytes()));
  }
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
  for (Command& command : commands_) {
    command.done.set_exception(std::make_exception_ptr(
        Error(ErrorCode::kUnavailable, "the engine stopped before the model switch")));
  }
  commands_.clear();
}

void ServingEngine::apply(Command& command) {
  try {
    const bool resize = command.model == nullptr;
    const std::shared_ptr<const ModelInstance> next = resize ? model_ : command.model;
    const std::string name = resize ? model_name_ : command.name;
    const int64_t block_size = options_.kv_block_size;
    const int64_t context = next->config().max_position_embeddings;
    if (command.kv_blocks < 0 || command.kv_blocks * block_size < context) {
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

    // From here on the old pool is gone: every sequence gives its blocks back first so that
    // the old cache can be freed before the new one is allocated (a memory budget holds).
    for (auto& sequence : running_) cache_->release(sequence->kv);
    for (auto& sequence : waiting_) cache_->release(sequence->kv);
    const int64_t old_blocks = cache_->pool().total_blocks();
    cache_.reset();
    try {
      cache_ = make_cache(*next, block_size, command.kv_blocks);
    } catch (...) {
      // Keep serving the old model with its old pool size.
      cache_ = make_cache(*model_, block_size, old_blocks);
      recompute_all(true);
      throw;
    }
    if (metrics_ && !resize) {
      metrics_->unbind(model_name_);
      metrics_->bind(name, *next);
    }
    {
      std::lock_guard lock(mutex_);
      model_ = next;
      model_name_ = name;
    }
    weight_bytes_ = next->resident_bytes();
    ++epoch_;
    const size_t batch = running_.size();
    recompute_all(same_model);
    if (metrics_) metrics_->kv_bytes->set(static_cast<double>(cache_->resident_bytes()));
    // Visible in stats() by the time the caller's future is ready.
    publish_stats();
    spdlog::info("{} {} ({} layers): KV pool of {} blocks, {} sequences recomputed",
                 resize ? "resized the KV pool of" : "switched to", name,
                 next->transformer().loaded_layers(), command.kv_blocks, batch);
    command.done.set_value();
  } catch (...) {
    command.done.set_exception(std::current_exception());
  }
}

void ServingEngine::recompute_all(bool same_model) {
  // The batch goes back to the front of the queue in admission order, ahead of work that has
  // not started, as after a preemption (but not counted as one).
  recomputes_ += static_cast<int64_t>(running_.size());
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
    waiting_.push_front(std::move(*it));
  }
  running_.clear();
  const int64_t context = model_->config().max_position_embeddings;
  for (auto& sequence : waiting_) {
    sequence->restart_prompt_scoring();
    // Another model's layers never produced these exits: recompute at full depth, and record
    // that, so a later preemption replays the cache this recompute builds.
    if (!same_model) std::fill(sequence->decoded_exits.begin(), sequence->decoded_exits.end(), 0);
    if (static_cast<int64_t>(sequence->tokens.size()) > context) {
      // The new model's context cannot hold what the sequence already has.
      if (sequence->generated > 0) {
        finish(*sequence, Finish::kLength);
      } else {
        finish(*sequence, Finish::kError,
               "the prompt exceeds the context of the model now serving");
      }
    }
  }
  remove_finished();
}

EngineStats ServingEngine::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

std::shared_ptr<const ModelInstance> ServingEngine::model() const {
  std::lock_guard lock(mutex_);
  return model_;
}

std::future<void> ServingEngine::switch_model(std::shared_ptr<const ModelInstance> model,
                                              std::string name, int64_t kv_blocks) {
  if (!model) throw Error(ErrorCode::kInvalidArgument, "switch_model: no model");
  return post(Command{std::move(model), std::move(name), kv_blocks, {}});
}

std::future<void> ServingEngine::resize_kv(int64_t kv_blocks) {
  return post(Command{nullptr, {}, kv_blocks, {}});
}

std::future<void> ServingEngine::post(Command command) {
  std::future<void> done = command.done.get_future();
  {
    std::lock_guard lock(mutex_);
    if (stopping_) throw Error(ErrorCode::kUnavailable, "the engine is stopping");
    commands_.push_back(std::move(command));
  }
  wakeup_.notify_one();
  return done;
}

void ServingEngine::set_exit_threshold(double threshold) {
  model::ExitPolicy policy = options_.exit_policy;
  policy.threshold = threshold;
  policy.validate();
  exit_threshold_.store(threshold);
}

void ServingEngine::set_max_running(int64_t cap) {
  max_running_.store(std::clamp<int64_t>(cap, 1, options_.limits.max_running));
  wake();
}

void ServingEngine::set_prompt_sampling(double rate) {
  if (!(rate >= 0.0 && rate <= 1.0)) {
    throw Error(ErrorCode::kInvalidArgument,
                "prompt sampling rate must be in [0, 1], got " + std::to_string(rate));
  }
  prompt_sampling_.store(rate);
}

void ServingEngine::run() {
  while (true) {
    std::deque<Command> commands;
    bool work = false;
    {
      std::unique_lock lock(mutex_);
      wakeup_.wait(lock, [&] {
        return stopping_ || !incoming_.empty() || !waiting_.empty() || !running_.empty() ||
               cancel_all_.load() || !commands_.empty();
      });
      if (stopping_) break;
      commands.swap(commands_);
      work = !incoming_.empty() || !waiting_.empty() || !running_.empty() || cancel_all_.load();
    }
    // At the step boundary: nothing holds a pointer into the batch or the cache.
    for (Command& command : commands) apply(command);
    if (work) step();
  }
  // Stopping: whatever is still in flight ends now, cancelled.
  ingest();
  for (auto& sequence : running_) finish(*sequence, Finish::kCancelled);
  for (auto& sequence : waiting_) finish(*sequence, Finish::kCancelled);
  remove_finished();
  publish_stats();
}

void ServingEngine::ingest() {
  std::deque<std::shared_ptr<Request>> arrived;
  {
    std::lock_guard lock(mutex_);
    arrived.swap(incoming_);
  }
  for (auto& request : arrived) {
    waiting_.push_back(std::make_unique<Sequence>(std::move(request), model_->shared_tokenizer()));
  }
}

void ServingEngine::reap() {
  const bool cancel_everything = cancel_all_.exchange(false);
  const Clock::time_point now = Clock::now();
  auto check = [&](Sequence& sequence) {
    if (sequence.finish != Finish::kNone) return;
    if (cancel_everything || sequence.request->cancelled()) {
      finish(sequence, Finish::kCancelled);
    } else if (now >= sequence.request->spec().deadline) {
      finish(sequence, Finish::kDeadline);
    }
  };
  for (auto& sequence : running_) check(*sequence);
  for (auto& sequence : waiting_) check(*sequence);
  remove_finished();
}

void ServingEngine::step() {
  const Clock::time_point start = Clock::now();
  policy_.threshold = exit_threshold_.load();
  step_telemetry_ = StepTelemetry{};
  ingest();
  reap();

  int64_t budget = options_.limits.max_batch_tokens;
  std::vector<Sequence*> decodes;
  std::vector<std::pair<Sequence*, int64_t>> prefills;
  schedule_decodes(decodes, budget);
  schedule_prefills(prefills, budget);
  if (decodes.empty() && prefills.empty() && !running_.empty()) {
    // Every sequence in the batch is mid-prefill and the pool is full: the newest gives its
    // blocks to the others rather than all of them waiting forever. (remove_finished() below
    // drops the slot it leaves.)
    preempt(*running_.back());
  }

  forward_seconds_ = 0.0;
  for (auto& [sequence, chunk] : prefills) {
    try {
      run_prefill(*sequence, chunk);
    } catch (const std::exception& e) {
      spdlog::error("request {}: prefill failed: {}", sequence->request->spec().id, e.what());
      finish(*sequence, Finish::kError, e.what());
    }
  }
  if (!decodes.empty()) {
    try {
      run_decode(decodes);
    } catch (const std::exception& e) {
      spdlog::error("decode step of {} sequences failed: {}", decodes.size(), e.what());
      for (Sequence* sequence : decodes) finish(*sequence, Finish::kError, e.what());
    }
  }
  remove_finished();
  ++steps_;
  const int64_t batch = static_cast<int64_t>(decodes.size() + prefills.size());
  if (metrics_) {
    metrics_->steps->inc();
    metrics_->batch_size->observe(static_cast<double>(batch));
    metrics_->forward_seconds->inc(forward_seconds_);
    metrics_->step_seconds->inc(seconds_between(start, Clock::now()));
  }
  publish_stats();
  if (options_.telemetry != nullptr) {
    StepTelemetry& t = step_telemetry_;
    t.model_epoch = epoch_;
    t.batch = batch;
    t.running = static_cast<int64_t>(running_.size());
    t.waiting = static_cast<int64_t>(waiting_.size());
    t.seconds = seconds_between(start, Clock::now());
    t.forward_seconds = forward_seconds_;
    options_.telemetry->on_step(t);
  }
}

void ServingEngine::schedule_decodes(std::vector<Sequence*>& decodes, int64_t& budget) {
  // Oldest first: when the pool runs dry, the newest sequences give way.
  for (size_t i = 0; i < running_.size(); ++i) {
    if (!running_[i]) continue;  // preempted below
    Sequence& sequence = *running_[i];
    if (sequence.finish != Finish::kNone || !sequence.decoding()) continue;
    if (budget <= 0) break;
    if (!reserve_or_preempt(sequence, sequence.kv.length + 1)) continue;
    decodes.push_back(&sequence);
    --budget;
  }
  // Preempted sequences were moved to the waiting queue; drop their slots in running_.
  std::erase_if(running_, [](const std::unique_ptr<Sequence>& s) { return s == nullptr; });
}

void ServingEngine::schedule_prefills(std::vector<std::pair<Sequence*, int64_t>>& prefills,
                                      int64_t& budget) {
  // Sequences already in the batch whose prefill is chunked continue first. They do not
  // preempt: the sequences that could give way may already be scheduled to decode.
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    Sequence& sequence = *running_[i];
    if (sequence.finish != Finish::kNone || sequence.decoding()) continue;
    const int64_t chunk = std::min(sequence.prefill_target() - sequence.kv.length, budget);
    if (!cache_->reserve(sequence.kv, sequence.kv.length + chunk)) continue;
    prefills.emplace_back(&sequence, chunk);
    budget -= chunk;
  }
  // Then waiting requests, in order, while the batch, the budget and the pool allow. Admission
  // never preempts: a request waits for blocks rather than evicting one that holds them.
  while (!waiting_.empty() && budget > 0 &&
         static_cast<int64_t>(running_.size()) < max_running_.load()) {
    Sequence& sequence = *waiting_.front();
    const int64_t chunk = std::min(sequence.prefill_target() - sequence.kv.length, budget);
    if (!cache_->reserve(sequence.kv, sequence.kv.length + chunk)) break;
    const Clock::time_point now = Clock::now();
    if (!sequence.admitted) {
      sequence.admitted = true;
      sequence.admitted_at = now;
      sequence.admitted_epoch = epoch_;
      const double rate = prompt_sampling_.load();
      const uint64_t n = admissions_++;
      if (sequence.request->spec().score_prompt ||
          std::floor(static_cast<double>(n + 1) * rate) >
              std::floor(static_cast<double>(n) * rate)) {
        sequence.score_prompt = true;
        sequence.prompt_scores.emplace();
      }
      if (metrics_) {
        metrics_->queue->observe(seconds_between(sequence.request->arrival(), now));
        metrics_->prompt_tokens->inc(static_cast<double>(sequence.prompt_length));
      }
    }
    prefills.emplace_back(&sequence, chunk);
    budget -= chunk;
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
}

bool ServingEngine::reserve_or_preempt(Sequence& sequence, int64_t new_length) {
  while (!cache_->reserve(sequence.kv, new_length)) {
    // The newest running sequence gives way, possibly this one.
    auto victim = std::find_if(running_.rbegin(), running_.rend(),
                               [](const std::unique_ptr<Sequence>& s) { return s != nullptr; });
    if (victim == running_.rend()) return false;
    Sequence* const victim_ptr = victim->get();
    preempt(*victim_ptr);
    // preempt() moved it to the waiting queue and left a null slot in running_.
    if (victim_ptr == &sequence) return false;
  }
  return true;
}

void ServingEngine::preempt(Sequence& victim) {
  cache_->release(victim.kv);
  victim.restart_prompt_scoring();
  ++victim.preemptions;
  ++preemptions_;
  if (metrics_) metrics_->preemptions->inc();
  spdlog::debug("request {}: preempted after {} tokens", victim.request->spec().id,
                victim.generated);
  for (auto& slot : running_) {
    if (slot.get() == &victim) {
      // Resumes before anything that has not started yet.
      waiting_.push_front(std::move(slot));
      break;
    }
  }
}

void ServingEngine::run_prefill(Sequence& sequence, int64_t chunk) {
  const int64_t begin = sequence.kv.length;
  const std::span<const int32_t> tokens(sequence.tokens.data() + begin, chunk);
  // Generated positions are recomputed with the exits they were decoded with, so the cache
  // holds exactly what it held before the preemption.
  std::vector<int32_t> exits;
  if (begin + chunk > sequence.prompt_length) {
    exits.reserve(chunk);
    for (int64_t p = begin; p < begin + chunk; ++p) {
      exits.push_back(p < sequence.prompt_length ? 0
                                                 : sequence.decoded_exits[p - sequence.prompt_length]);
    }
  }
  const Clock::time_point t0 = Clock::now();
  const bool score = sequence.score_prompt && exits.empty();
  const model::StepOutput out =
      model_->transformer().prefill(*cache_, sequence.kv, tokens, policy_, score, exits,
                                    score && begin + chunk < sequence.prompt_length
                                        ? sequence.tokens[begin + chunk]
                                        : -1);
  forward_seconds_ += seconds_between(t0, Clock::now());
  if (score) {
    sequence.prompt_scores->add(out.prompt_scores);
    // Scored once: a later recompute of the prompt is not.
    if (sequence.kv.length >= sequence.prompt_length) sequence.score_prompt = false;
  }
  if (sequence.kv.length == sequence.prefill_target() && sequence.generated == 0) {
    accept_token(sequence, out.logits[0], out.exits[0]);
  }
}

void ServingEngine::run_decode(const std::vector<Sequence*>& decodes) {
  std::vector<kv::SequenceKv*> kvs;
  std::vector<int32_t> tokens;
  kvs.reserve(decodes.size());
  tokens.reserve(decodes.size());
  for (Sequence* sequence : decodes) {
    kvs.push_back(&sequence->kv);
    tokens.push_back(sequence->tokens.back());
  }
  const Clock::time_point t0 = Clock::now();
  const model::StepOutput out = model_->transformer().decode(*cache_, kvs, tokens, policy_);
  forward_seconds_ += seconds_between(t0, Clock::now());
  for (size_t b = 0; b < decodes.size(); ++b) {
    decodes[b]->decoded_exits.push_back(out.exits[b].exit_layer);
    accept_token(*decodes[b], out.logits[b], out.exits[b]);
  }
}

void ServingEngine::accept_token(Sequence& sequence, const at::Tensor& logits,
                                 const model::TokenExit& exit) {
  const RequestSpec& spec = sequence.request->spec();
  const int32_t token = sequence.sampler.sample(logits);
  const Clock::time_point now = Clock::now();
  sequence.tokens.push_back(token);
  ++sequence.generated;
  sequence.exit_layer_sum += exit.exit_layer;
  if (static_cast<size_t>(exit.exit_layer) >= sequence.exit_counts.size()) {
    sequence.exit_counts.resize(exit.exit_layer + 1, 0);
  }
  ++sequence.exit_counts[exit.exit_layer];
  if (exit.greedy_exit) ++sequence.greedy_exits;
  ++step_telemetry_.generated;
  if (exit.greedy_exit) ++step_telemetry_.greedy_exits;
  if (options_.telemetry != nullptr) step_telemetry_.breaches.push_back(exit.greedy_exit ? 1 : 0);
  if (metrics_) {
    metrics_->generated_tokens->inc();
    if (metrics::Counter* exits = metrics_->exit_by_layer.at(exit.exit_layer)) exits->inc();
    if (exit.greedy_exit) metrics_->greedy->inc();
    if (sequence.generated == 1) {
      metrics_->ttft->observe(seconds_between(sequence.request->arrival(), now));
    } else {
      metrics_->inter_token->observe(seconds_between(sequence.last_token_at, now));
    }
  }
  if (sequence.generated == 1) sequence.first_token_at = now;
  sequence.last_token_at = now;

  Update update;
  if (spec.token_details) update.tokens.push_back(TokenDetail{token, exit});
  const int32_t eos = static_cast<int32_t>(model_->config().eos_token_id);
  if (token == eos) {
    sequence.request->channel().push(std::move(update));
    finish(sequence, Finish::kStop);
    return;
  }
  // A model may emit bytes that are not UTF-8; clients get U+FFFD for them, never broken text.
  update.text = sequence.stop.push(tokenizer::replace_invalid_utf8(sequence.decoder.push(token)));
  sequence.request->channel().push(std::move(update));
  if (sequence.stop.stopped()) {
    finish(sequence, Finish::kStop);
  } else if (sequence.generated >= spec.max_tokens ||
             static_cast<int64_t>(sequence.tokens.size()) >
                 model_->config().max_position_embeddings) {
    finish(sequence, Finish::kLength);
  }
}

void ServingEngine::log_finished(const Request& request, const Usage& usage, Finish reason,
                                 const std::string& error, const Sequence& sequence) const {
  nlohmann::ordered_json fields = {{"id", request.spec().id},
                           {"model", usage.model},
                           {"layers", model_->transformer().loaded_layers()},
                           {"finish", finish_label(reason)},
                           {"prompt_tokens", usage.prompt_tokens},
                           {"output_tokens", usage.completion_tokens}};
  if (usage.completion_tokens > 0) fields["ttft_ms"] = usage.time_to_first_token_ms;
  fields["queue_ms"] = usage.queue_time_ms;
  fields["total_ms"] = usage.total_time_ms;
  fields["mean_exit_layer"] = usage.mean_exit_layer;
  fields["greedy_exits"] = sequence.greedy_exits;
  fields["preemptions"] = usage.preemptions;
  if (!error.empty()) fields["error"] = error;
  logging::event(reason == Finish::kError ? spdlog::level::warn : spdlog::level::info,
                 "request_finished", fields);
}

void ServingEngine::finish(Sequence& sequence, Finish reason, std::string error) {
  if (sequence.finish != Finish::kNone) return;
  sequence.finish = reason;
  cache_->release(sequence.kv);
  const Clock::time_point now = Clock::now();
  const Request& request = *sequence.request;

  Update last;
  last.finish = reason;
  last.error = std::move(error);
  if (reason == Finish::kLength) {
    // Nothing can complete a stop string any more: what was held back is text.
    last.text = sequence.stop.push(tokenizer::replace_invalid_utf8(sequence.decoder.finish()));
    last.text += sequence.stop.flush();
  }
  Usage& usage = last.usage;
  usage.model = model_name_;
  usage.prompt_tokens = sequence.prompt_length;
  usage.completion_tokens = sequence.generated;
  usage.preemptions = sequence.preemptions;
  usage.mean_exit_layer =
      sequence.generated > 0 ? sequence.exit_layer_sum / static_cast<double>(sequence.generated)
                             : 0.0;
  auto ms = [](Clock::time_point a, Clock::time_point b) { return seconds_between(a, b) * 1e3; };
  if (sequence.generated > 0) usage.time_to_first_token_ms = ms(request.arrival(), sequence.first_token_at);
  usage.queue_time_ms = ms(request.arrival(), sequence.admitted ? sequence.admitted_at : now);
  usage.total_time_ms = ms(request.arrival(), now);
  if (request.spec().score_prompt && sequence.prompt_scores && !sequence.score_prompt &&
      sequence.prompt_scores->tokens > 0) {
    const model::ExitScores& scores = *sequence.prompt_scores;
    usage.prompt_perplexity = scores.policy_perplexity(scores.policy_nll_sum.size() - 1);
    usage.prompt_scored_tokens = scores.tokens;
  }
  ++finished_;
  if (options_.log_requests) log_finished(request, usage, reason, last.error, sequence);
  if (metrics_) {
    metrics_->finished->labels({std::string(finish_label(reason))}).inc();
    metrics_->e2e->observe(seconds_between(request.arrival(), now));
    if (!sequence.admitted) metrics_->queue->observe(seconds_between(request.arrival(), now));
  }
  if (options_.telemetry != nullptr) {
    RequestTelemetry t;
    t.id = request.spec().id;
    t.model = model_name_;
    t.loaded_layers = model_->transformer().loaded_layers();
    t.model_epoch = epoch_;
    t.single_epoch = !sequence.admitted || sequence.admitted_epoch == epoch_;
    t.finish = reason;
    t.prompt_tokens = sequence.prompt_length;
    t.generated = sequence.generated;
    t.greedy_exits = sequence.greedy_exits;
    t.exit_counts = std::move(sequence.exit_counts);
    t.exit_counts.resize(std::max<size_t>(t.exit_counts.size(), t.loaded_layers + 1), 0);
    // Complete scores only: a prompt whose prefill never finished reports none.
    if (sequence.prompt_scores && !sequence.score_prompt) {
      t.prompt_scores = std::move(sequence.prompt_scores);
    }
    if (sequence.generated > 0) t.ttft_s = seconds_between(request.arrival(), sequence.first_token_at);
    if (sequence.generated > 1) {
      t.tpot_s = seconds_between(sequence.first_token_at, sequence.last_token_at) /
                 static_cast<double>(sequence.generated - 1);
    }
    t.total_s = seconds_between(request.arrival(), now);
    options_.telemetry->on_request(std::move(t));
  }
  sequence.request->channel().push(std::move(last));
  {
    std::lock_guard lock(mutex_);
    ids_in_flight_.erase(request.spec().id);
  }
  in_flight_.fetch_sub(1);
}

void ServingEngine::remove_finished() {
  auto done = [](const std::unique_ptr<Sequence>& s) {
    return s == nullptr || s->finish != Finish::kNone;
  };
  std::erase_if(running_, done);
  std::erase_if(waiting_, done);
}

void ServingEngine::publish_stats() {
  const int64_t used = cache_->pool().used_blocks(), total = cache_->pool().total_blocks();
  {
    std::lock_guard lock(mutex_);
    stats_.running = static_cast<int64_t>(running_.size());
    stats_.waiting = static_cast<int64_t>(waiting_.size() + incoming_.size());
    stats_.kv_blocks_total = total;
    stats_.kv_blocks_used = used;
    stats_.kv_cache_bytes = cache_->resident_bytes();
    stats_.steps = steps_;
    stats_.preemptions = preemptions_;
    stats_.finished = finished_;
    stats_.model_name = model_name_;
    stats_.loaded_layers = model_->transformer().loaded_layers();
    stats_.model_epoch = epoch_;
    stats_.kv_block_size = options_.kv_block_size;
    stats_.kv_sequences = total * options_.kv_block_size / model_->config().max_position_embeddings;
    stats_.recomputes = recomputes_;
    stats_.weight_bytes = weight_bytes_;
  }
  if (metrics_) {
    metrics_->running->set(static_cast<double>(running_.size()));
    metrics_->waiting->set(static_cast<double>(waiting_.size()));
    metrics_->blocks_total->set(static_cast<double>(total));
    metrics_->blocks_used->set(static_cast<double>(used));
    metrics_->usage->set(total > 0 ? static_cast<double>(used) / static_cast<double>(total) : 0.0);
    metrics_->kv_sequences->set(static_cast<double>(
        total * options_.kv_block_size / model_->config().max_position_embeddings));
  }
}

}  // namespace helios::engine
