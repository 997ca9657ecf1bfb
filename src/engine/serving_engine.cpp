#include "helios/engine/serving_engine.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include "helios/common/exception_message.h"
#include "helios/common/error.h"
#include "helios/common/files.h"
#include "helios/engine/router.h"
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
  if (limits.priority_levels < 1 || limits.default_priority < 0 ||
      limits.default_priority >= limits.priority_levels) {
    throw Error(ErrorCode::kInvalidArgument,
                "scheduler limits: priority_levels must be positive and default_priority below "
                "it");
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
    : lanes_(1),
      options_(std::move(options)),
      scheduler_(*(lanes_[0].cache = make_kv_cache(checked(model).transformer(),
                                                   options_.kv_block_size, options_.kv_blocks)),
                 checked(options_.limits).max_running),
      output_(options_.log_requests),
      metrics_(registry, options_.buckets, options_.telemetry, options_.model_name, *model),
      exit_threshold_(options_.exit_policy.threshold),
      policy_(options_.exit_policy) {
  options_.exit_policy.validate();
  lanes_[0].model = std::move(model);
  lanes_[0].name = options_.model_name;
  queued_by_class_.assign(static_cast<size_t>(options_.limits.priority_levels), 0);
  metrics_.declare_priorities(options_.limits.priority_levels);
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
    const int32_t priority = request->spec().priority;
    if (priority < 0 || priority >= options_.limits.priority_levels) {
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("priority: {} is outside 0..{}", priority,
                              options_.limits.priority_levels - 1));
    }
    refuse_if_queue_full_locked(priority);
    if (!ids_in_flight_.insert(request->spec().id).second) {
      throw Error(ErrorCode::kFailedPrecondition,
                  "request_id: a request with id '" + request->spec().id + "' is in flight");
    }
    ++queued_by_class_[static_cast<size_t>(priority)];
    incoming_.push_back(std::move(request));
    in_flight_.fetch_add(1);
  }
  wakeup_.notify_one();
}

void ServingEngine::refuse_if_queue_full_locked(int32_t priority) const {
  const int64_t queued = queued_by_class_[static_cast<size_t>(priority)];
  if (queued >= options_.limits.max_queued) {
    throw Error(ErrorCode::kResourceExhausted,
                fmt::format("request queue is full ({} requests of priority {} waiting, limit "
                            "scheduler.max_queued_requests = {} per priority class)",
                            queued, priority, options_.limits.max_queued));
  }
}

void ServingEngine::refuse_if_queue_full(int32_t priority) const {
  std::lock_guard lock(mutex_);
  if (priority < 0 || static_cast<size_t>(priority) >= queued_by_class_.size()) return;
  refuse_if_queue_full_locked(priority);
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
  SwitchCommand command;
  command.members.push_back({std::move(model), std::move(name), kv_blocks});
  command.rebuild_all = true;
  return post(std::move(command));
}

std::future<void> ServingEngine::resize_kv(int64_t kv_blocks) {
  SwitchCommand command;
  command.members.push_back({nullptr, {}, kv_blocks});
  command.resize = true;
  command.rebuild_all = true;
  return post(std::move(command));
}

std::future<void> ServingEngine::set_resident(std::vector<ResidentMember> members) {
  for (const ResidentMember& member : members) {
    if (!member.model) throw Error(ErrorCode::kInvalidArgument, "set_resident: no model");
  }
  SwitchCommand command;
  command.members = std::move(members);
  return post(std::move(command));
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

std::vector<ServingEngine::Lane> ServingEngine::resolve(const SwitchCommand& command) const {
  if (command.members.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "set_resident: the resident set is empty");
  }
  if (command.resize && lanes_.size() != 1) {
    throw Error(ErrorCode::kFailedPrecondition,
                fmt::format("resize_kv: {} models are resident; set_resident sizes each pool",
                            lanes_.size()));
  }
  const ModelInstance& current = *lanes_[0].model;
  std::vector<Lane> next(command.members.size());
  for (size_t i = 0; i < next.size(); ++i) {
    const ResidentMember& member = command.members[i];
    next[i].model = command.resize ? lanes_[0].model : member.model;
    next[i].name = command.resize ? lanes_[0].name : member.name;
    const std::string what = command.resize ? "resize_kv"
                             : command.rebuild_all ? "switch_model " + next[i].name
                                                   : "set_resident " + next[i].name;
    for (size_t j = 0; j < i; ++j) {
      if (next[j].name == next[i].name) {
        throw Error(ErrorCode::kInvalidArgument, what + ": the name is in the set twice");
      }
    }
    const int64_t block_size = options_.kv_block_size;
    const int64_t context = next[i].model->config().max_position_embeddings;
    if (member.kv_blocks < blocks_for_tokens(context, block_size)) {
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("{}: {} KV blocks of {} tokens cannot hold one full-context "
                              "sequence of {} tokens",
                              what, member.kv_blocks, block_size, context));
    }
    if (!same_directory(next[i].model->loaded().dir, current.loaded().dir)) {
      // Sequences in flight carry on with the new model: their tokens must mean the same.
      const tokenizer::Tokenizer &old_tok = current.tokenizer(),
                                 &new_tok = next[i].model->tokenizer();
      if (old_tok.vocab_size() != new_tok.vocab_size() || old_tok.bos_id() != new_tok.bos_id() ||
          old_tok.eos_id() != new_tok.eos_id() ||
          current.config().vocab_size != next[i].model->config().vocab_size) {
        throw Error(ErrorCode::kFailedPrecondition,
                    what + ": its tokenizer differs from the serving model's " +
                        "(vocabulary or special tokens)");
      }
    }
  }
  return next;
}

void ServingEngine::apply_switch(SwitchCommand& command) {
  try {
    std::vector<Lane> next = resolve(command);
    std::vector<int64_t> blocks;
    for (const ResidentMember& member : command.members) blocks.push_back(member.kv_blocks);
    // Members that carry on untouched: the same instance with an intact pool of the same size.
    std::vector<int> carried(lanes_.size(), -1);  // old lane -> new lane
    std::vector<bool> kept(next.size(), false);
    for (size_t j = 0; j < lanes_.size() && !command.rebuild_all; ++j) {
      for (size_t i = 0; i < next.size(); ++i) {
        if (!kept[i] && next[i].model == lanes_[j].model && lanes_[j].lost_pool_blocks == 0 &&
            lanes_[j].cache->pool().total_blocks() == blocks[i]) {
          carried[j] = static_cast<int>(i);
          kept[i] = true;
          break;
        }
      }
    }
    // The sequences of the other lanes give their blocks back and wait to be recomputed; then
    // their pools are freed before the new ones are built, so that a memory budget holds.
    const Requeue requeue =
        scheduler_.requeue_where([&](const Sequence& s) { return carried[s.lane] < 0; });
    std::vector<int64_t> old_blocks(lanes_.size());
    for (size_t j = 0; j < lanes_.size(); ++j) {
      old_blocks[j] = lanes_[j].lost_pool_blocks > 0 ? lanes_[j].lost_pool_blocks
                                                     : lanes_[j].cache->pool().total_blocks();
      if (carried[j] < 0) lanes_[j].cache.reset();
    }
    try {
      for (size_t i = 0; i < next.size(); ++i) {
        if (!kept[i]) next[i].cache = allocate_cache(*next[i].model, blocks[i]);
      }
    } catch (const std::exception& e) {
      spdlog::error("KV pool could not be allocated: {}", exception_message(e));
      metrics_.on_fault("kv_cache");
      next.clear();  // frees what was built
      for (size_t j = 0; j < lanes_.size(); ++j) {
        if (!lanes_[j].cache) restore_lane(j, old_blocks[j]);
      }
      bind_caches();
      regrow_lost_pools();
      throw;
    }
    for (size_t j = 0; j < lanes_.size(); ++j) {
      if (carried[j] >= 0) {
        next[carried[j]].cache = std::move(lanes_[j].cache);
        next[carried[j]].routed = lanes_[j].routed;
      }
    }
    // Where each requeued sequence goes: the same instance or another load of its model
    // directory (its exits replay), else the member the router picks (full depth).
    std::vector<int32_t> moved_to;
    std::vector<Sequence*> to_route;
    for (Sequence* sequence : requeue.sequences) {
      const ModelInstance& was = *lanes_[sequence->lane].model;
      int32_t target = -1;
      for (size_t i = 0; i < next.size() && target < 0; ++i) {
        if (next[i].model.get() == &was) target = static_cast<int32_t>(i);
      }
      for (size_t i = 0; i < next.size() && target < 0; ++i) {
        if (same_directory(next[i].model->loaded().dir, was.loaded().dir)) {
          target = static_cast<int32_t>(i);
        }
      }
      if (target < 0) to_route.push_back(sequence);
      moved_to.push_back(target);
    }
    const std::vector<int32_t> routed = route(next, to_route);
    for (size_t k = 0, r = 0; k < moved_to.size(); ++k) {
      if (moved_to[k] >= 0) continue;
      moved_to[k] = routed[r++];
      ++next[moved_to[k]].routed;
      requeue.sequences[k]->forget_exits();
    }
    scheduler_.for_each([&](Sequence& sequence) {
      if (carried[sequence.lane] >= 0) sequence.lane = carried[sequence.lane];
    });
    for (size_t k = 0; k < requeue.sequences.size(); ++k) {
      requeue.sequences[k]->lane = moved_to[k];
    }
    std::vector<ResidentModel> resident;
    for (const Lane& lane : next) resident.push_back({lane.name, lane.model.get()});
    metrics_.on_resident(resident);
    {
      std::lock_guard lock(mutex_);
      lanes_ = std::move(next);
    }
    bind_caches();
    ++epoch_;
    recomputes_ += requeue.recomputed;
    for (Sequence* sequence : requeue.sequences) {
      // The new model's context cannot hold what the sequence already has.
      if (!fits_context(*sequence, lane_of(*sequence).model->config().max_position_embeddings) &&
          !refuse_if_too_long(*sequence)) {
        finish(*sequence, Finish::kLength);
      }
    }
    scheduler_.drop_finished();
    // Visible in stats() by the time the caller's future is ready.
    publish_stats();
    for (const Lane& lane : lanes_) {
      spdlog::info("{} {} ({} layers): KV pool of {} blocks",
                   command.resize ? "resized the KV pool of" : "serving", lane.name,
                   lane.model->transformer().loaded_layers(), lane.cache->pool().total_blocks());
    }
    spdlog::info("resident set of {} model(s): {} sequences recomputed", lanes_.size(),
                 requeue.recomputed);
    command.done.set_value();
  } catch (...) {
    // Whatever pools the engine kept are visible by the time the caller's future is ready.
    try {
      publish_stats();
    } catch (const std::exception& e) {
      spdlog::error("engine: status not refreshed after a failed switch: {}", exception_message(e));
    }
    command.done.set_exception(std::current_exception());
  }
}

std::unique_ptr<kv::KvCache> ServingEngine::allocate_cache(const ModelInstance& model,
                                                           int64_t blocks) {
  if (options_.faults.kv_cache) options_.faults.kv_cache(blocks);
  return make_kv_cache(model.transformer(), options_.kv_block_size, blocks);
}

void ServingEngine::bind_caches() {
  std::vector<kv::KvCache*> caches;
  for (Lane& lane : lanes_) caches.push_back(lane.cache.get());
  scheduler_.set_caches(std::move(caches));
}

void ServingEngine::restore_lane(size_t index, int64_t blocks) {
  // Keep serving the lane's model: its old pool size, or the smallest pool that still runs one
  // full-context sequence when the memory the old one held is gone.
  Lane& lane = lanes_[index];
  const int64_t minimum =
      blocks_for_tokens(lane.model->config().max_position_embeddings, options_.kv_block_size);
  for (const int64_t size : {blocks, std::min(blocks, minimum)}) {
    try {
      lane.cache = allocate_cache(*lane.model, size);
      lane.lost_pool_blocks = 0;
      return;
    } catch (const std::exception& e) {
      spdlog::error("KV pool of {} blocks for {} could not be allocated: {}", size, lane.name,
                    exception_message(e));
      metrics_.on_fault("kv_cache");
    }
  }
  // No pool at all: an empty one keeps the engine consistent, nothing of this lane can run
  // until a later step rebuilds it.
  lane.cache = make_kv_cache(lane.model->transformer(), options_.kv_block_size, 0);
  lane.lost_pool_blocks = blocks;
}

bool ServingEngine::regrow_lost_pools() {
  bool any_pool = false;
  for (size_t index = 0; index < lanes_.size(); ++index) {
    Lane& lane = lanes_[index];
    if (lane.lost_pool_blocks == 0) {
      any_pool = true;
      continue;
    }
    std::string why;
    try {
      std::unique_ptr<kv::KvCache> cache = allocate_cache(*lane.model, lane.lost_pool_blocks);
      // Its sequences hold no blocks of the empty pool.
      lane.cache = std::move(cache);
      bind_caches();
      spdlog::info("KV pool of {} blocks rebuilt for {}", lane.lost_pool_blocks, lane.name);
      lane.lost_pool_blocks = 0;
      any_pool = true;
      continue;
    } catch (const std::exception& e) {
      why = exception_message(e);
    }
    metrics_.on_fault("kv_cache");
    spdlog::error("no KV pool: {} blocks for {} could not be allocated: {}",
                  lane.lost_pool_blocks, lane.name, why);
    const std::string error = "the engine has no KV cache (" + why + ")";
    scheduler_.for_each([&](Sequence& sequence) {
      if (sequence.lane == static_cast<int32_t>(index)) finish(sequence, Finish::kError, error);
    });
    scheduler_.drop_finished();
  }
  return any_pool;
}

std::vector<int32_t> ServingEngine::route(const std::vector<Lane>& lanes,
                                          const std::vector<Sequence*>& sequences) {
  std::vector<int32_t> out(sequences.size(), 0);
  if (lanes.size() < 2 || sequences.empty()) return out;
  std::vector<const model::Transformer*> members;
  for (const Lane& lane : lanes) members.push_back(&lane.model->transformer());
  std::vector<std::span<const int32_t>> prompts;
  for (const Sequence* sequence : sequences) {
    prompts.emplace_back(sequence->tokens.data(), static_cast<size_t>(sequence->prompt_length));
  }
  const RouteChoices choices = route_prompts(members, prompts, options_.router_max_tokens);
  router_seconds_ += choices.seconds;
  metrics_.on_router_seconds(choices.seconds);
  for (size_t i = 0; i < sequences.size(); ++i) out[i] = static_cast<int32_t>(choices.members[i]);
  return out;
}

bool ServingEngine::refuse_if_too_long(Sequence& sequence) {
  const Lane& lane = lane_of(sequence);
  const int64_t context = lane.model->config().max_position_embeddings;
  if (sequence.generated > 0 || sequence.prompt_length < context) return false;
  // What the front end answers a prompt that long, for a request it accepted under a model
  // with a longer context.
  finish(sequence, Finish::kError,
         fmt::format("prompt: {} tokens (with BOS) leave no room to generate within the "
                     "context of {} tokens of {}, the model now serving",
                     sequence.prompt_length, context, lane.name),
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
  return lanes_[0].model;
}

std::vector<std::shared_ptr<const ModelInstance>> ServingEngine::resident_models() const {
  std::lock_guard lock(mutex_);
  std::vector<std::shared_ptr<const ModelInstance>> models;
  for (const Lane& lane : lanes_) models.push_back(lane.model);
  return models;
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
  std::vector<std::unique_ptr<Sequence>> sequences;
  for (auto& request : arrived) {
    sequences.push_back(
        std::make_unique<Sequence>(std::move(request), lanes_[0].model->shared_tokenizer()));
  }
  if (lanes_.size() > 1 && !sequences.empty()) {
    std::vector<Sequence*> routed;
    for (auto& sequence : sequences) routed.push_back(sequence.get());
    const std::vector<int32_t> members = route(lanes_, routed);
    for (size_t i = 0; i < routed.size(); ++i) {
      routed[i]->lane = members[i];
      ++lanes_[members[i]].routed;
      metrics_.on_route(members[i]);
    }
    routed_ += static_cast<int64_t>(routed.size());
  }
  for (auto& sequence : sequences) {
    // Validated by the front end against the model serving then, which a switch may since have
    // replaced with one of a shorter context.
    if (!refuse_if_too_long(*sequence)) scheduler_.enqueue(std::move(sequence));
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
  if (!regrow_lost_pools()) {
    publish_stats();
    return;
  }

  const StepPlan plan = scheduler_.schedule(options_.limits.max_batch_tokens);
  preemptions_ += plan.preempted;
  metrics_.on_preempt(plan.preempted_priorities);
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
  if (lanes_.size() == 1) {
    if (!plan.decodes.empty()) run_decode(plan.decodes);
  } else {
    // One batched decode per lane (each runs its own model over its own pool).
    for (size_t lane = 0; lane < lanes_.size(); ++lane) {
      std::vector<Sequence*> rows;
      for (Sequence* sequence : plan.decodes) {
        if (sequence->lane == static_cast<int32_t>(lane)) rows.push_back(sequence);
      }
      if (!rows.empty()) run_decode(rows);
    }
  }
  scheduler_.drop_finished();
  ++steps_;
  publish_stats();
  metrics_.on_step(plan.batch(), served(lanes_[0]), scheduler_.running(), scheduler_.waiting(), start,
                   forward_seconds_);
}

void ServingEngine::admit(const StepPlan& plan) {
  // Deterministic prompt sampling: admission n (0-based) is scored when
  // floor((n + 1) * rate) > floor(n * rate).
  const double rate = prompt_sampling_.load();
  if (!plan.admitted.empty()) {
    std::lock_guard lock(mutex_);
    for (const Sequence* sequence : plan.admitted) {
      --queued_by_class_[static_cast<size_t>(sequence->request->spec().priority)];
    }
  }
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
    const Lane& lane = lane_of(sequence);
    out = forward({&sequence}, [&] {
      return lane.model->transformer().prefill(*lane.cache, sequence.kv, tokens, policy_, score, exits,
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
      metrics_.on_prompt_scored(sequence, served(lane_of(sequence)), Clock::now());
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
  const Lane& lane = lane_of(*rows.front());
  return forward(rows,
                 [&] { return lane.model->transformer().decode(*lane.cache, kvs, tokens, policy_); });
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
  const Finish end = output_.emit_token(sequence, token, exit, now, lane_of(sequence).model->config());
  if (end != Finish::kNone) finish(sequence, end);
}

void ServingEngine::finish(Sequence& sequence, Finish reason, std::string error,
                           ErrorCode code) {
  if (sequence.finished()) return;
  sequence.finish = reason;
  const Lane& lane = lane_of(sequence);
  lane.cache->release(sequence.kv);
  const Clock::time_point now = Clock::now();
  const ServedModel model = served(lane);
  Update last = output_.final_update(sequence, reason, std::move(error), lane.name,
                                     model.loaded_layers, now);
  last.error_code = code;
  ++finished_;
  metrics_.on_finish(sequence, reason, model, now);
  // Before the client can read its final update: whoever reads it and then asks for the
  // status sees the request gone and its blocks free.
  {
    std::lock_guard lock(mutex_);
    ids_in_flight_.erase(sequence.request->spec().id);
    if (!sequence.admitted) {
      --queued_by_class_[static_cast<size_t>(sequence.request->spec().priority)];
    }
    ++stats_.finished;
    stats_.kv_blocks_used = 0;
    for (size_t i = 0; i < lanes_.size(); ++i) {
      const int64_t used = lanes_[i].cache->pool().used_blocks();
      stats_.kv_blocks_used += used;
      // Mid set change the published members may be the old set's until the next publish.
      if (lanes_.size() == stats_.members.size()) stats_.members[i].kv_blocks_used = used;
    }
  }
  in_flight_.fetch_sub(1);
  sequence.request->channel().push(std::move(last));
}

ServedModel ServingEngine::served(const Lane& lane) const {
  return ServedModel{lane.name, lane.model->transformer().loaded_layers(), epoch_};
}

void ServingEngine::publish_stats() {
  EngineStats stats;
  stats.running = scheduler_.running();
  for (const Lane& lane : lanes_) {
    MemberStats member;
    member.name = lane.name;
    member.loaded_layers = lane.model->transformer().loaded_layers();
    member.weight_bytes = lane.model->resident_bytes();
    member.kv_blocks_total = lane.cache->pool().total_blocks();
    member.kv_blocks_used = lane.cache->pool().used_blocks();
    member.kv_cache_bytes = lane.cache->resident_bytes();
    member.kv_sequences = sequences_in(member.kv_blocks_total, options_.kv_block_size,
                                       lane.model->config().max_position_embeddings);
    member.routed = lane.routed;
    stats.kv_blocks_total += member.kv_blocks_total;
    stats.kv_blocks_used += member.kv_blocks_used;
    stats.kv_cache_bytes += member.kv_cache_bytes;
    stats.kv_sequences += member.kv_sequences;
    stats.weight_bytes += member.weight_bytes;
    stats.members.push_back(std::move(member));
  }
  scheduler_.for_each([&](const Sequence& sequence) { ++stats.members.at(sequence.lane).waiting; });
  scheduler_.for_each_running([&](const Sequence& sequence) {
    MemberStats& member = stats.members.at(sequence.lane);
    ++member.running;
    --member.waiting;
  });
  stats.steps = steps_;
  stats.preemptions = preemptions_;
  stats.finished = finished_;
  stats.model_name = lanes_[0].name;
  stats.loaded_layers = lanes_[0].model->transformer().loaded_layers();
  stats.model_epoch = epoch_;
  stats.kv_block_size = options_.kv_block_size;
  stats.recomputes = recomputes_;
  stats.router_seconds = router_seconds_;
  stats.routed = routed_;
  {
    std::lock_guard lock(mutex_);
    stats.waiting = scheduler_.waiting() + static_cast<int64_t>(incoming_.size());
    stats_ = stats;
  }
  metrics_.publish(stats, scheduler_.waiting());
}

}  // namespace helios::engine
