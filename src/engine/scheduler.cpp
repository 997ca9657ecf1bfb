#include "helios/engine/scheduler.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "helios/common/error.h"

namespace helios::engine {

bool fits_context(const Sequence& sequence, int64_t context) {
  return sequence.generated > 0 ? static_cast<int64_t>(sequence.tokens.size()) <= context
                                : sequence.prompt_length < context;
}

Scheduler::Scheduler(kv::KvCache& cache, int64_t max_running)
    : cache_(&cache), max_running_bound_(max_running), cap_(max_running) {
  if (max_running < 1) {
    throw Error(ErrorCode::kInvalidArgument, "scheduler: max_running must be positive");
  }
}

void Scheduler::set_max_running(int64_t cap) {
  cap_.store(std::clamp<int64_t>(cap, 1, max_running_bound_));
}

void Scheduler::enqueue(std::unique_ptr<Sequence> sequence) {
  waiting_.push_back(std::move(sequence));
}

StepPlan Scheduler::schedule(int64_t token_budget) {
  StepPlan plan;
  int64_t budget = token_budget;
  schedule_decodes(plan, budget);
  schedule_prefills(plan, budget);
  if (plan.decodes.empty() && plan.prefills.empty() && !running_.empty()) {
    // Every sequence in the batch is mid-prefill and the pool is full: the newest gives its
    // blocks to the others rather than all of them waiting forever.
    preempt(*running_.back(), plan);
    std::erase_if(running_, [](const std::unique_ptr<Sequence>& s) { return s == nullptr; });
  }
  return plan;
}

void Scheduler::schedule_decodes(StepPlan& plan, int64_t& budget) {
  // Oldest first: when the pool runs dry, the newest sequences give way.
  for (size_t i = 0; i < running_.size(); ++i) {
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
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    Sequence& sequence = *running_[i];
    if (sequence.finished() || sequence.decoding()) continue;
    const int64_t chunk = std::min(sequence.prefill_remaining(), budget);
    if (!cache_->reserve(sequence.kv, sequence.kv.length + chunk)) continue;
    plan.prefills.push_back({&sequence, chunk});
    budget -= chunk;
  }
  // Then waiting requests, in order, while the batch, the budget and the pool allow.
  while (!waiting_.empty() && budget > 0 &&
         static_cast<int64_t>(running_.size()) < cap_.load()) {
    Sequence& sequence = *waiting_.front();
    const int64_t chunk = std::min(sequence.prefill_remaining(), budget);
    if (!cache_->reserve(sequence.kv, sequence.kv.length + chunk)) break;
    if (!sequence.admitted) plan.admitted.push_back(&sequence);
    plan.prefills.push_back({&sequence, chunk});
    budget -= chunk;
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
}

bool Scheduler::reserve_or_preempt(Sequence& sequence, int64_t new_length, StepPlan& plan) {
  while (!cache_->reserve(sequence.kv, new_length)) {
    // The newest running sequence gives way, possibly this one.
    auto victim = std::find_if(running_.rbegin(), running_.rend(),
                               [](const std::unique_ptr<Sequence>& s) { return s != nullptr; });
    if (victim == running_.rend()) return false;
    Sequence* const victim_ptr = victim->get();
    preempt(*victim_ptr, plan);
    // preempt() moved it to the waiting queue and left a null slot in running_.
    if (victim_ptr == &sequence) return false;
  }
  return true;
}

void Scheduler::preempt(Sequence& victim, StepPlan& plan) {
  cache_->release(victim.kv);
  victim.restart_prompt_scoring();
  ++victim.preemptions;
  ++plan.preempted;
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

void Scheduler::release_all() {
  for_each([&](Sequence& sequence) { cache_->release(sequence.kv); });
}

Requeue Scheduler::requeue_all(bool same_model, int64_t context) {
  Requeue result;
  result.recomputed = static_cast<int64_t>(running_.size());
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
    waiting_.push_front(std::move(*it));
  }
  running_.clear();
  for (auto& sequence : waiting_) {
    sequence->restart_prompt_scoring();
    if (!same_model) sequence->forget_exits();
    if (!fits_context(*sequence, context)) {
      result.exceeds_context.push_back(sequence.get());
    }
  }
  return result;
}

void Scheduler::drop_finished() {
  auto done = [](const std::unique_ptr<Sequence>& s) { return s == nullptr || s->finished(); };
  std::erase_if(running_, done);
  std::erase_if(waiting_, done);
}

}  // namespace helios::engine
