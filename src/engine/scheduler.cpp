#include "helios/engine/scheduler.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "helios/common/error.h"

namespace helios::engine {

namespace {

int32_t priority_of(const Sequence& sequence) { return sequence.request->spec().priority; }

// Blocks `sequence` still needs from its pool to hold its whole prefill.
int64_t blocks_to_prefill(const Sequence& sequence, const kv::KvCache& cache) {
  const int64_t block = cache.shape().block_size;
  const int64_t needed = (sequence.prefill_target() + block - 1) / block;
  return std::max<int64_t>(0, needed - static_cast<int64_t>(sequence.kv.block_table.size()));
}

}  // namespace

bool fits_context(const Sequence& sequence, int64_t context) {
  return sequence.generated > 0 ? static_cast<int64_t>(sequence.tokens.size()) <= context
                                : sequence.prompt_length < context;
}

Scheduler::Scheduler(kv::KvCache& cache, int64_t max_running)
    : caches_{&cache}, max_running_bound_(max_running), cap_(max_running) {
  if (max_running < 1) {
    throw Error(ErrorCode::kInvalidArgument, "scheduler: max_running must be positive");
  }
}

void Scheduler::set_caches(std::vector<kv::KvCache*> caches) {
  if (caches.empty() || std::find(caches.begin(), caches.end(), nullptr) != caches.end()) {
    throw Error(ErrorCode::kInvalidArgument, "scheduler: every lane needs a KV cache");
  }
  caches_ = std::move(caches);
}

void Scheduler::set_max_running(int64_t cap) {
  cap_.store(std::clamp<int64_t>(cap, 1, max_running_bound_));
}

void Scheduler::enqueue(std::unique_ptr<Sequence> sequence) {
  // Behind every waiting request of its class or a more urgent one.
  const int32_t priority = priority_of(*sequence);
  auto at = waiting_.end();
  while (at != waiting_.begin() && priority_of(**std::prev(at)) > priority) --at;
  waiting_.insert(at, std::move(sequence));
}

void Scheduler::requeue_front(std::unique_ptr<Sequence> sequence) {
  // Ahead of every waiting request of its class, behind the more urgent ones.
  const int32_t priority = priority_of(*sequence);
  auto at = std::find_if(waiting_.begin(), waiting_.end(), [&](const auto& waiting) {
    return priority_of(*waiting) >= priority;
  });
  waiting_.insert(at, std::move(sequence));
}

Sequence* Scheduler::least_urgent_running(int32_t lane, int32_t below) const {
  // The least urgent class first, the newest admission within it.
  Sequence* victim = nullptr;
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
    Sequence* candidate = it->get();
    if (candidate == nullptr || candidate->finished()) continue;
    if (lane >= 0 && candidate->lane != lane) continue;
    if (priority_of(*candidate) <= below) continue;
    if (victim == nullptr || priority_of(*candidate) > priority_of(*victim)) victim = candidate;
  }
  return victim;
}

void Scheduler::make_room_for_urgent(StepPlan& plan) {
  // Waiting requests in queue order (most urgent first). Each one that would wait for a place
  // in the batch or for blocks of its pool, while a less urgent sequence holds them, takes
  // them: the less urgent one is preempted (recomputed later, as after any preemption).
  // Nothing to do unless the most urgent waiting request outranks some running sequence (every
  // step of a single-class workload ends here).
  if (waiting_.empty() || least_urgent_running(-1, priority_of(*waiting_.front())) == nullptr) {
    return;
  }
  int64_t free_slots = cap_.load() - static_cast<int64_t>(running_.size());
  std::vector<int64_t> free_blocks(caches_.size());
  for (size_t lane = 0; lane < caches_.size(); ++lane) {
    free_blocks[lane] = caches_[lane]->pool().free_blocks();
  }
  bool preempted = false;
  // A snapshot: preemption inserts into the queue (behind these, being less urgent).
  std::vector<Sequence*> queue;
  for (const auto& waiting : waiting_) queue.push_back(waiting.get());
  for (Sequence* waiting : queue) {
    Sequence& sequence = *waiting;
    const int32_t priority = priority_of(sequence);
    if (least_urgent_running(-1, priority) == nullptr) break;  // nothing less urgent runs
    if (free_slots <= 0) {
      Sequence* victim = least_urgent_running(-1, priority);
      free_blocks[victim->lane] += static_cast<int64_t>(victim->kv.block_table.size());
      preempt(*victim, plan);
      preempted = true;
      ++free_slots;
    }
    const int64_t needed = blocks_to_prefill(sequence, cache_of(sequence));
    while (free_blocks[sequence.lane] < needed) {
      Sequence* victim = least_urgent_running(sequence.lane, priority);
      if (victim == nullptr) break;
      free_blocks[sequence.lane] += static_cast<int64_t>(victim->kv.block_table.size());
      preempt(*victim, plan);
      preempted = true;
      ++free_slots;
    }
    free_blocks[sequence.lane] -= std::min(needed, free_blocks[sequence.lane]);
    --free_slots;
  }
  if (preempted) {
    std::erase_if(running_, [](const std::unique_ptr<Sequence>& s) { return s == nullptr; });
  }
}

StepPlan Scheduler::schedule(int64_t token_budget) {
  StepPlan plan;
  int64_t budget = token_budget;
  make_room_for_urgent(plan);
  schedule_decodes(plan, budget);
  schedule_prefills(plan, budget);
  if (budget > 0) unblock_lanes(plan);
  return plan;
}

void Scheduler::unblock_lanes(StepPlan& plan) {
  // With budget left, a lane with running sequences none of which runs this step is stuck on
  // its full pool (every one mid-prefill).
  std::vector<bool> runs(caches_.size(), false), holds(caches_.size(), false);
  for (const Sequence* sequence : plan.decodes) runs[sequence->lane] = true;
  for (const PrefillChunk& chunk : plan.prefills) runs[chunk.sequence->lane] = true;
  for (const auto& sequence : running_) holds[sequence->lane] = true;
  bool preempted = false;
  for (size_t lane = 0; lane < caches_.size(); ++lane) {
    if (!holds[lane] || runs[lane]) continue;
    auto newest = std::find_if(running_.rbegin(), running_.rend(), [&](const auto& s) {
      return s != nullptr && s->lane == static_cast<int32_t>(lane);
    });
    preempt(**newest, plan);
    preempted = true;
  }
  if (preempted) {
    std::erase_if(running_, [](const std::unique_ptr<Sequence>& s) { return s == nullptr; });
  }
}

std::vector<size_t> Scheduler::running_by_urgency() const {
  std::vector<size_t> order(running_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return priority_of(*running_[a]) < priority_of(*running_[b]);
  });
  return order;
}

void Scheduler::schedule_decodes(StepPlan& plan, int64_t& budget) {
  // The most urgent class first, oldest first within it: when the budget runs out the least
  // urgent wait a step, and when a pool runs dry the least urgent, newest sequence of its lane
  // gives way (which, in this order, has not been scheduled yet).
  for (const size_t i : running_by_urgency()) {
    if (!running_[i]) continue;  // preempted below
    Sequence& sequence = *running_[i];
    if (sequence.finished() || !sequence.decoding()) continue;
    if (budget <= 0) break;
    if (!reserve_or_preempt(sequence, sequence.kv.length + 1, plan)) continue;
    plan.decodes.push_back(&sequence);
    --budget;
  }
  // Preempted sequences were moved to the waiting queue; drop their slots in running_.
  std::erase_if(running_, [](const std::unique_ptr<Sequence>& s) { return s == nullptr; });
}

void Scheduler::schedule_prefills(StepPlan& plan, int64_t& budget) {
  // Sequences already in the batch whose prefill is chunked continue first. They do not
  // preempt: the sequences that could give way may already be scheduled to decode.
  for (const size_t i : running_by_urgency()) {
    if (budget <= 0) break;
    Sequence& sequence = *running_[i];
    if (sequence.finished() || sequence.decoding()) continue;
    const int64_t chunk = std::min(sequence.prefill_remaining(), budget);
    if (!cache_of(sequence).reserve(sequence.kv, sequence.kv.length + chunk)) continue;
    plan.prefills.push_back({&sequence, chunk});
    budget -= chunk;
  }
  // Then waiting requests, in order, while the batch, the budget and their pool allow. A request
  // its pool cannot take holds back the rest of its lane, not the other lanes.
  std::vector<bool> blocked(caches_.size(), false);
  size_t blocked_lanes = 0;
  for (auto it = waiting_.begin(); it != waiting_.end() && budget > 0 &&
                                   blocked_lanes < caches_.size() &&
                                   static_cast<int64_t>(running_.size()) < cap_.load();) {
    Sequence& sequence = **it;
    if (blocked[sequence.lane]) {
      ++it;
      continue;
    }
    const int64_t chunk = std::min(sequence.prefill_remaining(), budget);
    if (!cache_of(sequence).reserve(sequence.kv, sequence.kv.length + chunk)) {
      blocked[sequence.lane] = true;
      ++blocked_lanes;
      ++it;
      continue;
    }
    if (!sequence.admitted) plan.admitted.push_back(&sequence);
    plan.prefills.push_back({&sequence, chunk});
    budget -= chunk;
    running_.push_back(std::move(*it));
    it = waiting_.erase(it);
  }
}

bool Scheduler::reserve_or_preempt(Sequence& sequence, int64_t new_length, StepPlan& plan) {
  while (!cache_of(sequence).reserve(sequence.kv, new_length)) {
    // The least urgent, newest running sequence of its lane gives way, possibly this one.
    Sequence* const victim_ptr = least_urgent_running(sequence.lane, -1);
    if (victim_ptr == nullptr) return false;
    preempt(*victim_ptr, plan);
    // preempt() moved it to the waiting queue and left a null slot in running_.
    if (victim_ptr == &sequence) return false;
  }
  return true;
}

void Scheduler::preempt(Sequence& victim, StepPlan& plan) {
  cache_of(victim).release(victim.kv);
  victim.restart_prompt_scoring();
  ++victim.preemptions;
  ++plan.preempted;
  plan.preempted_priorities.push_back(priority_of(victim));
  spdlog::debug("request {}: preempted after {} tokens", victim.request->spec().id,
                victim.generated);
  for (auto& slot : running_) {
    if (slot.get() == &victim) {
      // Resumes before anything of its class that has not started yet.
      requeue_front(std::move(slot));
      break;
    }
  }
}

void Scheduler::release_all() {
  for_each([&](Sequence& sequence) { cache_of(sequence).release(sequence.kv); });
}

Requeue Scheduler::requeue_where(const std::function<bool(const Sequence&)>& affected) {
  std::vector<std::unique_ptr<Sequence>> moved;
  for (auto& sequence : running_) {
    if (!affected(*sequence)) continue;
    cache_of(*sequence).release(sequence->kv);
    moved.push_back(std::move(sequence));
  }
  std::erase_if(running_, [](const std::unique_ptr<Sequence>& s) { return s == nullptr; });
  Requeue result;
  result.recomputed = static_cast<int64_t>(moved.size());
  for (auto it = moved.rbegin(); it != moved.rend(); ++it) waiting_.push_front(std::move(*it));
  // Each class keeps its place: the recomputed sequences lead their class.
  std::stable_sort(waiting_.begin(), waiting_.end(), [](const auto& a, const auto& b) {
    return priority_of(*a) < priority_of(*b);
  });
  for (auto& sequence : waiting_) {
    if (!affected(*sequence)) continue;
    cache_of(*sequence).release(sequence->kv);
    sequence->restart_prompt_scoring();
    result.sequences.push_back(sequence.get());
  }
  return result;
}

Requeue Scheduler::requeue_all(bool same_model, int64_t context) {
  Requeue result = requeue_where([](const Sequence&) { return true; });
  for (Sequence* sequence : result.sequences) {
    if (!same_model) sequence->forget_exits();
    if (!fits_context(*sequence, context)) result.exceeds_context.push_back(sequence);
  }
  return result;
}

void Scheduler::drop_finished() {
  auto done = [](const std::unique_ptr<Sequence>& s) { return s == nullptr || s->finished(); };
  std::erase_if(running_, done);
  std::erase_if(waiting_, done);
}

}  // namespace helios::engine
