#include "helios/engine/serving_engine.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "helios/common/error.h"
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
  Sequence(std::shared_ptr<Request> r, const tokenizer::Tokenizer& tokenizer)
      : request(std::move(r)),
        sampler(request->spec().sampling),
        tokens(request->spec().prompt),
        prompt_length(static_cast<int64_t>(tokens.size())),
        decoder(tokenizer),
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
  tokenizer::StreamDecoder decoder;
  StopMatcher stop;
  bool admitted = false;
  Clock::time_point admitted_at, first_token_at, last_token_at;
  int64_t preemptions = 0;
  Finish finish = Finish::kNone;
};

struct ServingEngine::Metrics {
  Metrics(metrics::Registry& r, const EngineOptions& options, const ModelInstance& model) {
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
    greedy = &r.counter("helios_greedy_exits_total",
                        "Generated tokens no exit was confident about (left at the last "
                        "loaded layer).",
                        {"model"})
                  .labels({options.model_name});
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
    r.gauge("helios_resident_weight_bytes", "Bytes of model weights resident in memory.",
            {"model"})
        .labels({options.model_name})
        .set(static_cast<double>(model.loaded().weights.resident_bytes()));
    r.gauge("helios_loaded_layers", "Decoder layers loaded, per model.", {"model"})
        .labels({options.model_name})
        .set(static_cast<double>(model.transformer().loaded_layers()));
    kv_bytes = &r.gauge("helios_kv_cache_bytes", "Bytes of the KV cache pool.").get();
    exit_by_layer.assign(model.transformer().loaded_layers() + 1, nullptr);
    for (const int32_t layer : model.transformer().exit_points()) {
      exit_by_layer[layer] = &exits->labels({options.model_name, std::to_string(layer)});
    }
    for (const Finish f : {Finish::kStop, Finish::kLength, Finish::kCancelled, Finish::kDeadline,
                           Finish::kError}) {
      finished->labels({std::string(finish_label(f))});
    }
  }

  metrics::Histogram *ttft, *inter_token, *e2e, *queue, *batch_size;
  metrics::Gauge *running, *waiting, *blocks_total, *blocks_used, *usage, *kv_bytes = nullptr;
  metrics::Counter *prompt_tokens, *generated_tokens, *greedy, *preemptions, *steps,
      *step_seconds, *forward_seconds;
  metrics::Family<metrics::Counter>*finished, *exits;
  std::vector<metrics::Counter*> exit_by_layer;  // by exit layer; null where no exit point
};

ServingEngine::ServingEngine(const ModelInstance& model, EngineOptions options,
                             metrics::Registry* registry)
    : model_(model),
      options_(std::move(options)),
      cache_(model.transformer().kv_shape(options_.kv_block_size), options_.kv_blocks,
             model.transformer().weights().embed_tokens.scalar_type(),
             model.transformer().weights().embed_tokens.device()) {
  options_.exit_policy.validate();
  const SchedulerLimits& limits = options_.limits;
  if (limits.max_running < 1 || limits.max_batch_tokens < 1 || limits.max_queued < 0) {
    throw Error(ErrorCode::kInvalidArgument,
                "scheduler limits: max_running and max_batch_tokens must be positive, "
                "max_queued non-negative");
  }
  if (registry != nullptr) {
    metrics_ = std::make_unique<Metrics>(*registry, options_, model_);
    metrics_->kv_bytes->set(static_cast<double>(cache_.resident_bytes()));
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
}

EngineStats ServingEngine::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void ServingEngine::run() {
  while (true) {
    {
      std::unique_lock lock(mutex_);
      wakeup_.wait(lock, [&] {
        return stopping_ || !incoming_.empty() || !waiting_.empty() || !running_.empty() ||
               cancel_all_.load();
      });
      if (stopping_) break;
    }
    step();
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
    waiting_.push_back(std::make_unique<Sequence>(std::move(request), model_.tokenizer()));
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
  if (metrics_) {
    metrics_->steps->inc();
    metrics_->batch_size->observe(static_cast<double>(decodes.size() + prefills.size()));
    metrics_->forward_seconds->inc(forward_seconds_);
    metrics_->step_seconds->inc(seconds_between(start, Clock::now()));
  }
  publish_stats();
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
    if (!cache_.reserve(sequence.kv, sequence.kv.length + chunk)) continue;
    prefills.emplace_back(&sequence, chunk);
    budget -= chunk;
  }
  // Then waiting requests, in order, while the batch, the budget and the pool allow. Admission
  // never preempts: a request waits for blocks rather than evicting one that holds them.
  while (!waiting_.empty() && budget > 0 &&
         static_cast<int64_t>(running_.size()) < options_.limits.max_running) {
    Sequence& sequence = *waiting_.front();
    const int64_t chunk = std::min(sequence.prefill_target() - sequence.kv.length, budget);
    if (!cache_.reserve(sequence.kv, sequence.kv.length + chunk)) break;
    const Clock::time_point now = Clock::now();
    if (!sequence.admitted) {
      sequence.admitted = true;
      sequence.admitted_at = now;
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
  while (!cache_.reserve(sequence.kv, new_length)) {
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
  cache_.release(victim.kv);
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
  const model::StepOutput out = model_.transformer().prefill(
      cache_, sequence.kv, tokens, options_.exit_policy, false, exits);
  forward_seconds_ += seconds_between(t0, Clock::now());
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
  const model::StepOutput out =
      model_.transformer().decode(cache_, kvs, tokens, options_.exit_policy);
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
  const int32_t eos = static_cast<int32_t>(model_.config().eos_token_id);
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
                 model_.config().max_position_embeddings) {
    finish(sequence, Finish::kLength);
  }
}

void ServingEngine::finish(Sequence& sequence, Finish reason, std::string error) {
  if (sequence.finish != Finish::kNone) return;
  sequence.finish = reason;
  cache_.release(sequence.kv);
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
  usage.model = options_.model_name;
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
  ++finished_;
  if (metrics_) {
    metrics_->finished->labels({std::string(finish_label(reason))}).inc();
    metrics_->e2e->observe(seconds_between(request.arrival(), now));
    if (!sequence.admitted) metrics_->queue->observe(seconds_between(request.arrival(), now));
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
  const int64_t used = cache_.pool().used_blocks(), total = cache_.pool().total_blocks();
  {
    std::lock_guard lock(mutex_);
    stats_.running = static_cast<int64_t>(running_.size());
    stats_.waiting = static_cast<int64_t>(waiting_.size() + incoming_.size());
    stats_.kv_blocks_total = total;
    stats_.kv_blocks_used = used;
    stats_.kv_cache_bytes = cache_.resident_bytes();
    stats_.steps = steps_;
    stats_.preemptions = preemptions_;
    stats_.finished = finished_;
  }
  if (metrics_) {
    metrics_->running->set(static_cast<double>(running_.size()));
    metrics_->waiting->set(static_cast<double>(waiting_.size()));
    metrics_->blocks_total->set(static_cast<double>(total));
    metrics_->blocks_used->set(static_cast<double>(used));
    metrics_->usage->set(total > 0 ? static_cast<double>(used) / static_cast<double>(total) : 0.0);
  }
}

}  // namespace helios::engine
