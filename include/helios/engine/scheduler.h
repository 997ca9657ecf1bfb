#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <vector>

#include "helios/engine/sequence.h"
#include "helios/kv/kv_cache.h"

namespace helios::engine {

struct PrefillChunk {
  Sequence* sequence = nullptr;
  int64_t tokens = 0;  // positions this step prefills, from sequence->kv.length on
};

// What one engine step runs: every sequence in it has its KV blocks reserved.
struct StepPlan {
  std::vector<Sequence*> decodes;      // one token each, oldest admission first
  std::vector<PrefillChunk> prefills;  // chunks continuing in the batch, then new admissions
  std::vector<Sequence*> admitted;     // admitted into the batch for the first time this step
  int64_t preempted = 0;               // sequences that gave their blocks back this step
  std::vector<int32_t> preempted_priorities;  // their priority classes

  int64_t batch() const { return static_cast<int64_t>(decodes.size() + prefills.size()); }
};

// What a switch's requeue_all left behind.
struct Requeue {
  int64_t recomputed = 0;                  // sequences that were in the batch
  std::vector<Sequence*> sequences;        // every one requeued, running or waiting, in queue order
  std::vector<Sequence*> exceeds_context;  // see fits_context (requeue_all)
};

// Whether `sequence` can go on within a model of `context` positions: one that has generated
// must still fit (its next decode feeds its last token); one that has not must leave its
// prompt room for a token (the front end's rule for a new request).
bool fits_context(const Sequence& sequence, int64_t context);

// Continuous batching over paged KV pools: the waiting queue, the running batch (in admission
// order), the concurrency cap, and the rules that pick each step's work. Pure bookkeeping over
// KvCache block pools, one per lane (a member of the engine's resident set; Sequence::lane
// says whose pool a sequence uses): no model, no metrics, no clock.
//
// One queue, one batch, one token budget and one cap span every lane. Every request has a
// priority (RequestSpec::priority: 0 is the most urgent class) and the queue is ordered by
// class, then arrival. Each step, first, a waiting request that would wait for a place in a
// full batch, or for blocks of its pool, while a less urgent sequence runs, preempts the least
// urgent (newest) one. Then every decoding sequence gets one token of the budget and a block
// for it, most urgent class first and oldest first within it; when its pool runs dry the least
// urgent, newest running sequence of the same lane gives way (preemption: its blocks go back
// and it waits at the front of its class, to be recomputed). Sequences whose prefill is
// chunked continue next, then waiting requests are admitted in order while the budget, the cap
// and their pool allow. Neither of those preempts a sequence of the same class: a request
// waits for blocks rather than evicting one that holds them, and so does every later request
// of its lane (order holds within a lane), while requests of other lanes go on.
class Scheduler {
 public:
  // `max_running` bounds the batch and every later set_max_running. One lane, over `cache`.
  Scheduler(kv::KvCache& cache, int64_t max_running);

  // The pool of a new cache (a switch or resize) for a single lane; every sequence must have
  // released its blocks.
  void set_cache(kv::KvCache& cache) { set_caches({&cache}); }
  // The pools of the lanes (index = Sequence::lane). Every sequence must have released its
  // blocks of a pool that is replaced, and have a lane below caches.size().
  void set_caches(std::vector<kv::KvCache*> caches);
  int64_t lanes() const { return static_cast<int64_t>(caches_.size()); }
  kv::KvCache& cache_of(const Sequence& sequence) const { return *caches_.at(sequence.lane); }
  // Caps the batch below the constructor's bound (clamped to [1, bound]). Running sequences are
  // not evicted: admission waits until the batch is under the cap. Any thread.
  void set_max_running(int64_t cap);
  int64_t max_running() const { return cap_.load(); }

  // Queues a new request behind the others.
  void enqueue(std::unique_ptr<Sequence> sequence);
  // This step's work within `token_budget` tokens (decodes + prefill chunks).
  StepPlan schedule(int64_t token_budget);
  // Every sequence gives its blocks back (the pool is about to be freed).
  void release_all();
  // The sequences for which `affected` holds give their blocks back, and those running go back
  // to the front of the queue in admission order (not counted as preemptions), to be
  // recomputed: a lane whose pool or model changes. The caller sets their new lane (and forgets
  // their exits on another model) and checks their context.
  Requeue requeue_where(const std::function<bool(const Sequence&)>& affected);
  // For a switch (or resize) to a model with `context` positions: the batch goes back to the
  // front of the queue in admission order, ahead of work that has not started, as after a
  // preemption (but not counted as one), to be recomputed on the new pool. With
  // `same_model` false their recorded exits are reset (another model never produced them).
  // Returns the sequences, running or waiting, that no longer fit the context (fits_context),
  // for the caller to finish.
  Requeue requeue_all(bool same_model, int64_t context);
  // Drops the sequences that finished (their blocks were released when they finished).
  void drop_finished();

  // Calls f(Sequence&) for each sequence, running first.
  template <class F>
  void for_each(F&& f) {
    for (auto& sequence : running_) f(*sequence);
    for (auto& sequence : waiting_) f(*sequence);
  }
  template <class F>
  void for_each_running(F&& f) {
    for (auto& sequence : running_) {
      if (sequence) f(*sequence);
    }
  }
  int64_t running() const { return static_cast<int64_t>(running_.size()); }
  int64_t waiting() const { return static_cast<int64_t>(waiting_.size()); }
  bool idle() const { return running_.empty() && waiting_.empty(); }

 private:
  void schedule_decodes(StepPlan& plan, int64_t& budget);
  void schedule_prefills(StepPlan& plan, int64_t& budget);
  bool reserve_or_preempt(Sequence& sequence, int64_t new_length, StepPlan& plan);
  void preempt(Sequence& victim, StepPlan& plan);
  // Puts a sequence that already ran back at the front of its class's waiting requests.
  void requeue_front(std::unique_ptr<Sequence> sequence);
  // The running sequence of `lane` (any lane when negative) whose priority value is the
  // largest and above `below`, the newest of those; null when none.
  Sequence* least_urgent_running(int32_t lane, int32_t below) const;
  // Preempts less urgent running sequences for waiting requests that would otherwise wait
  // for a place in the batch or for blocks they hold.
  void make_room_for_urgent(StepPlan& plan);
  // Indices into running_, most urgent class first, admission order within a class.
  std::vector<size_t> running_by_urgency() const;
  // A lane whose running sequences all wait on its full pool mid-prefill: its newest gives its
  // blocks to the others rather than all of them waiting forever.
  void unblock_lanes(StepPlan& plan);

  std::vector<kv::KvCache*> caches_;
  const int64_t max_running_bound_;
  std::atomic<int64_t> cap_;
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;  // in admission order
};

}  // namespace helios::engine
