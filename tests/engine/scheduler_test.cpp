// The scheduler on its own, over a bare block pool (a KV cache with no layers): which sequences
// decode, which prefill and how much, who is preempted, and what a switch's requeue does. The
// model's part of a step is played by advance(): a prefill chunk fills its positions, the
// last chunk of a prompt and every decode append one sampled token.
#include "helios/engine/scheduler.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "helios/tokenizer/byte_tokenizer.h"

namespace helios::engine {
namespace {

constexpr int64_t kBlockSize = 4;

class SchedulerTest : public ::testing::Test {
 protected:
  // A pool of `blocks` blocks of kBlockSize positions, and a scheduler over it.
  void make(int64_t blocks, int64_t max_running = 8) {
    cache_ = std::make_unique<kv::KvCache>(kv::KvCacheShape{0, 1, 1, kBlockSize}, blocks,
                                           at::kFloat, at::Device(at::kCPU));
    scheduler_ = std::make_unique<Scheduler>(*cache_, max_running);
  }

  // A second lane (lane 1) with a pool of its own of `blocks` blocks.
  kv::KvCache& add_lane(int64_t blocks) {
    other_ = std::make_unique<kv::KvCache>(kv::KvCacheShape{0, 1, 1, kBlockSize}, blocks,
                                           at::kFloat, at::Device(at::kCPU));
    scheduler_->set_caches({cache_.get(), other_.get()});
    return *other_;
  }

  // Queues request `id` with a prompt of `prompt_length` tokens; returns its sequence.
  Sequence* add(const std::string& id, int64_t prompt_length, bool score_prompt = false,
               int32_t priority = 0) {
    RequestSpec spec;
    spec.id = id;
    spec.priority = priority;
    spec.prompt.assign(static_cast<size_t>(prompt_length), 'a');
    spec.max_tokens = 1000;
    spec.score_prompt = score_prompt;
    auto sequence = std::make_unique<Sequence>(std::make_shared<Request>(std::move(spec)),
                                               tokenizer_);
    Sequence* raw = sequence.get();
    scheduler_->enqueue(std::move(sequence));
    return raw;
  }

  // What the model does with a plan: prefill chunks fill their positions, and a sequence
  // whose prompt is complete (or that decodes) gets one more token.
  static void advance(const StepPlan& plan) {
    for (const PrefillChunk& p : plan.prefills) {
      if (!p.sequence->admitted) p.sequence->admit(Clock::now(), 0, false);
      p.sequence->kv.length += p.tokens;
      if (p.sequence->kv.length == p.sequence->prefill_target() && p.sequence->generated == 0) {
        p.sequence->record_token('b', model::TokenExit{}, Clock::now());
      }
    }
    for (Sequence* s : plan.decodes) {
      s->kv.length += 1;
      s->decoded_exits.push_back(1);
      s->record_token('b', model::TokenExit{}, Clock::now());
    }
  }

  StepPlan step(int64_t budget) {
    StepPlan plan = scheduler_->schedule(budget);
    advance(plan);
    return plan;
  }

  static std::vector<std::string> ids(const std::vector<Sequence*>& sequences) {
    std::vector<std::string> out;
    for (const Sequence* s : sequences) out.push_back(s->request->spec().id);
    return out;
  }
  static std::vector<std::string> ids(const std::vector<PrefillChunk>& chunks) {
    std::vector<std::string> out;
    for (const PrefillChunk& c : chunks) out.push_back(c.sequence->request->spec().id);
    return out;
  }

  std::shared_ptr<const tokenizer::Tokenizer> tokenizer_ =
      std::make_shared<tokenizer::ByteTokenizer>(258, 256, 257);
  std::unique_ptr<kv::KvCache> cache_, other_;
  std::unique_ptr<Scheduler> scheduler_;
};

TEST_F(SchedulerTest, AdmitsInOrderAndChunksPrefillsToTheTokenBudget) {
  make(64);
  Sequence* a = add("a", 6);
  Sequence* b = add("b", 10);
  add("c", 3);

  // 8 tokens: a's whole prompt (6), then 2 of b's; c waits (no budget left).
  StepPlan plan = step(8);
  EXPECT_EQ(ids(plan.prefills), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(plan.prefills[0].tokens, 6);
  EXPECT_EQ(plan.prefills[1].tokens, 2);
  EXPECT_EQ(ids(plan.admitted), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(plan.decodes.empty());
  EXPECT_EQ(scheduler_->running(), 2);
  EXPECT_EQ(scheduler_->waiting(), 1);
  EXPECT_EQ(a->generated, 1);
  EXPECT_EQ(b->kv.length, 2);

  // Decodes come first (a: 1 token), then b's chunk continues (7 of its 8 left), and c waits.
  plan = step(8);
  EXPECT_EQ(ids(plan.decodes), (std::vector<std::string>{"a"}));
  EXPECT_EQ(ids(plan.prefills), (std::vector<std::string>{"b"}));
  EXPECT_EQ(plan.prefills[0].tokens, 7);
  EXPECT_TRUE(plan.admitted.empty());
  EXPECT_EQ(plan.batch(), 2);

  // b finishes its prompt (1 token) next to a's decode; c is admitted with the rest.
  plan = step(8);
  EXPECT_EQ(ids(plan.decodes), (std::vector<std::string>{"a"}));
  EXPECT_EQ(ids(plan.prefills), (std::vector<std::string>{"b", "c"}));
  EXPECT_EQ(plan.prefills[0].tokens, 1);
  EXPECT_EQ(plan.prefills[1].tokens, 3);
  EXPECT_EQ(ids(plan.admitted), (std::vector<std::string>{"c"}));
  EXPECT_EQ(b->generated, 1);

  // Everyone decodes, oldest admission first, one token of the budget each.
  plan = step(2);
  EXPECT_EQ(ids(plan.decodes), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(plan.prefills.empty());
}

TEST_F(SchedulerTest, TheConcurrencyCapHoldsAdmissionsWithoutEvicting) {
  make(64, /*max_running=*/4);
  for (int i = 0; i < 4; ++i) add("r" + std::to_string(i), 2);
  step(64);
  EXPECT_EQ(scheduler_->running(), 4);

  scheduler_->set_max_running(2);
  EXPECT_EQ(scheduler_->max_running(), 2);
  add("late", 2);
  const StepPlan plan = step(64);
  EXPECT_EQ(plan.decodes.size(), 4u) << "running sequences are not evicted by a lower cap";
  EXPECT_TRUE(plan.prefills.empty()) << "admission waits until the batch is under the cap";
  EXPECT_EQ(scheduler_->waiting(), 1);

  // Clamped to [1, the constructor's bound].
  scheduler_->set_max_running(0);
  EXPECT_EQ(scheduler_->max_running(), 1);
  scheduler_->set_max_running(100);
  EXPECT_EQ(scheduler_->max_running(), 4);
}

TEST_F(SchedulerTest, AFullPoolPreemptsTheNewestRunningSequence) {
  // 4 blocks of 4: a and b each fill 2 blocks with a prompt of 8, then sample a token.
  make(4);
  Sequence* a = add("a", 8);
  Sequence* b = add("b", 8);
  StepPlan plan = step(64);
  ASSERT_EQ(ids(plan.prefills), (std::vector<std::string>{"a", "b"}));
  ASSERT_EQ(cache_->pool().free_blocks(), 0);

  // Both need a third block for position 8: a (the oldest) gets b's, b gives way.
  plan = step(64);
  EXPECT_EQ(ids(plan.decodes), (std::vector<std::string>{"a"}));
  EXPECT_EQ(plan.preempted, 1);
  EXPECT_EQ(b->preemptions, 1);
  EXPECT_EQ(a->preemptions, 0);
  EXPECT_EQ(b->kv.length, 0) << "a preempted sequence keeps no cache";
  EXPECT_TRUE(b->kv.block_table.empty());
  EXPECT_EQ(scheduler_->running(), 1);
  EXPECT_EQ(scheduler_->waiting(), 1);
  EXPECT_EQ(b->prefill_target(), 8) << "recomputed: the prompt, not the token to feed next";
  EXPECT_FALSE(b->decoding());
}

TEST_F(SchedulerTest, AFullLaneHoldsBackOnlyItsOwnRequests) {
  // Lane 0: 4 blocks, filled by a's prompt of 16; lane 1: a pool of its own.
  make(4);
  kv::KvCache& other = add_lane(8);
  add("a", 16);
  Sequence* b = add("b", 8);
  Sequence* c = add("c", 8);
  Sequence* d = add("d", 4);
  c->lane = 1;
  StepPlan plan = step(64);
  EXPECT_EQ(ids(plan.prefills), (std::vector<std::string>{"a", "c"}))
      << "b waits for lane 0's blocks, and so does d behind it; c's lane has room";
  EXPECT_EQ(b->kv.length, 0);
  EXPECT_EQ(d->kv.length, 0);
  EXPECT_EQ(other.pool().used_blocks(), 2);
  EXPECT_EQ(scheduler_->waiting(), 2);
}

TEST_F(SchedulerTest, PreemptionTakesTheNewestSequenceOfTheFullLane) {
  // Lane 0 holds 2 blocks: a and b fill one each; c, the newest, runs in lane 1.
  make(2);
  kv::KvCache& other = add_lane(8);
  Sequence* a = add("a", 4);
  Sequence* b = add("b", 4);
  Sequence* c = add("c", 4);
  c->lane = 1;
  step(64);
  // Position 4 needs a second block: a takes b's, not c's (another pool).
  const StepPlan plan = step(64);
  EXPECT_EQ(ids(plan.decodes), (std::vector<std::string>{"a", "c"}));
  EXPECT_EQ(plan.preempted, 1);
  EXPECT_EQ(b->preemptions, 1);
  EXPECT_EQ(c->preemptions, 0);
  EXPECT_EQ(a->kv.block_table.size(), 2u);
}

TEST_F(SchedulerTest, RequeueWhereMovesOnlyTheAffectedLane) {
  make(8);
  kv::KvCache& other = add_lane(8);
  Sequence* a = add("a", 4);
  Sequence* b = add("b", 4);
  Sequence* c = add("c", 4);
  b->lane = 1;
  step(64);
  const Requeue requeue = scheduler_->requeue_where([](const Sequence& s) { return s.lane == 1; });
  EXPECT_EQ(requeue.recomputed, 1);
  ASSERT_EQ(requeue.sequences, (std::vector<Sequence*>{b}));
  EXPECT_TRUE(b->kv.block_table.empty()) << "its blocks went back to lane 1's pool";
  EXPECT_EQ(other.pool().used_blocks(), 0);
  EXPECT_EQ(scheduler_->running(), 2);
  EXPECT_EQ(scheduler_->waiting(), 1);
  EXPECT_EQ(a->kv.length, 4);
  EXPECT_EQ(c->kv.length, 4);
}

TEST_F(SchedulerTest, APreemptedSequenceResumesAheadOfNewWork) {
  make(4);
  add("a", 8);
  Sequence* b = add("b", 8);
  step(64);
  step(64);  // b preempted
  ASSERT_EQ(b->preemptions, 1);
  add("c", 1);
  // a holds 3 blocks, 1 is free: b (front of the queue) cannot fit its 8 positions, and
  // admission is in order and never preempts, so c waits behind it.
  StepPlan plan = step(64);
  EXPECT_EQ(ids(plan.decodes), (std::vector<std::string>{"a"}));
  EXPECT_TRUE(plan.prefills.empty());
  EXPECT_EQ(scheduler_->waiting(), 2);

  // Once a finishes, b is recomputed first, and is not a new admission.
  scheduler_->for_each([&](Sequence& s) {
    if (s.request->spec().id == "a") {
      s.finish = Finish::kStop;
      cache_->release(s.kv);
    }
  });
  scheduler_->drop_finished();
  plan = step(64);
  EXPECT_EQ(ids(plan.prefills), (std::vector<std::string>{"b", "c"}));
  EXPECT_EQ(plan.prefills[0].tokens, 8);
  EXPECT_EQ(ids(plan.admitted), (std::vector<std::string>{"c"}));
}

TEST_F(SchedulerTest, RecomputeReplaysTheExitsATokenWasDecodedWith) {
  make(64);
  Sequence* a = add("a", 3);
  step(64);
  step(64);
  step(64);
  ASSERT_EQ(a->generated, 3);
  // Positions 0-2 are the prompt (all layers), 3-4 were decoded with exit 1.
  EXPECT_TRUE(a->replay_exits(0, 3).empty());
  EXPECT_EQ(a->replay_exits(1, 4), (std::vector<int32_t>{0, 0, 1, 1}));
  a->forget_exits();
  EXPECT_EQ(a->replay_exits(3, 2), (std::vector<int32_t>{0, 0}));
}

TEST_F(SchedulerTest, ABatchThatCannotRunGivesWayRatherThanWaitingForever) {
  make(4);
  Sequence* a = add("a", 12);
  step(4);  // a: 4 positions (1 block), mid-prefill
  kv::SequenceKv other;  // the rest of the pool is held elsewhere
  ASSERT_TRUE(cache_->reserve(other, 12));
  ASSERT_EQ(cache_->pool().free_blocks(), 0);

  // a's next chunk needs blocks, nothing decodes: the newest running sequence gives its blocks
  // back rather than the batch holding them forever.
  StepPlan plan = step(8);
  EXPECT_EQ(plan.batch(), 0);
  EXPECT_EQ(plan.preempted, 1);
  EXPECT_EQ(a->preemptions, 1);
  EXPECT_EQ(cache_->pool().free_blocks(), 1);
  EXPECT_EQ(scheduler_->running(), 0);

  cache_->release(other);
  plan = step(12);
  EXPECT_EQ(ids(plan.prefills), (std::vector<std::string>{"a"}));
  EXPECT_EQ(plan.prefills[0].tokens, 12);
  EXPECT_EQ(a->generated, 1);
}

TEST_F(SchedulerTest, RequeueAllPutsTheBatchBackInAdmissionOrder) {
  make(64);
  Sequence* a = add("a", 3);
  Sequence* b = add("b", 5);
  step(64);
  step(64);
  Sequence* c = add("c", 30);  // not admitted yet
  ASSERT_EQ(scheduler_->running(), 2);

  scheduler_->release_all();
  EXPECT_EQ(cache_->pool().used_blocks(), 0);
  EXPECT_EQ(a->kv.length, 0);
  const Requeue requeue = scheduler_->requeue_all(/*same_model=*/false, /*context=*/16);
  EXPECT_EQ(requeue.recomputed, 2);
  EXPECT_EQ(ids(requeue.exceeds_context), (std::vector<std::string>{"c"}));
  ASSERT_EQ(a->decoded_exits.size(), 1u);
  EXPECT_EQ(a->replay_exits(3, 1), (std::vector<int32_t>{0})) << "another model's exits";
  EXPECT_EQ(a->preemptions, 0) << "a switch is not a preemption";
  EXPECT_EQ(scheduler_->running(), 0);
  EXPECT_EQ(scheduler_->waiting(), 3);

  // The caller finishes what no longer fits; the rest resume in admission order.
  c->finish = Finish::kError;
  scheduler_->drop_finished();
  const StepPlan plan = step(64);
  EXPECT_EQ(ids(plan.prefills), (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(plan.admitted.empty()) << "recomputed sequences were admitted before";
  EXPECT_EQ(plan.prefills[0].tokens, a->prefill_target());
}

TEST_F(SchedulerTest, DropFinishedRemovesFinishedSequencesEverywhere) {
  make(64);
  Sequence* a = add("a", 2);
  step(64);
  Sequence* b = add("b", 2);
  EXPECT_EQ(scheduler_->running(), 1);
  EXPECT_EQ(scheduler_->waiting(), 1);
  a->finish = Finish::kCancelled;
  b->finish = Finish::kDeadline;
  scheduler_->drop_finished();
  EXPECT_TRUE(scheduler_->idle());
}

// Priority classes (RequestSpec::priority): 0 is the most urgent.
TEST_F(SchedulerTest, TheQueueIsOrderedByPriorityThenArrival) {
  make(64);
  add("low-1", 2, false, 2);
  add("urgent-1", 2, false, 0);
  add("low-2", 2, false, 2);
  add("normal", 2, false, 1);
  add("urgent-2", 2, false, 0);
  const StepPlan plan = step(64);
  EXPECT_EQ(ids(plan.prefills),
            (std::vector<std::string>{"urgent-1", "urgent-2", "normal", "low-1", "low-2"}));
}

TEST_F(SchedulerTest, AnUrgentRequestTakesThePlaceOfTheLeastUrgentInAFullBatch) {
  make(64, /*max_running=*/2);
  Sequence* low = add("low", 2, false, 2);
  Sequence* normal = add("normal", 2, false, 1);
  step(64);
  ASSERT_EQ(scheduler_->running(), 2);
  add("urgent", 2, false, 0);
  const StepPlan plan = step(64);
  // The least urgent gives way even though it is the oldest; the other class keeps running.
  EXPECT_EQ(low->preemptions, 1);
  EXPECT_EQ(normal->preemptions, 0);
  EXPECT_EQ(plan.preempted_priorities, (std::vector<int32_t>{2}));
  EXPECT_EQ(ids(plan.decodes), (std::vector<std::string>{"normal"}));
  EXPECT_EQ(ids(plan.prefills), (std::vector<std::string>{"urgent"}));
  EXPECT_EQ(scheduler_->waiting(), 1);

  // Nothing less urgent than itself is running: the preempted one waits for a free place.
  const StepPlan next = step(64);
  EXPECT_EQ(next.preempted, 0);
  EXPECT_EQ(scheduler_->waiting(), 1);
}

TEST_F(SchedulerTest, ARequestNeverPreemptsItsOwnClassOrAMoreUrgentOne) {
  make(64, /*max_running=*/1);
  add("urgent", 2, false, 0);
  step(64);
  add("same", 2, false, 0);
  add("low", 2, false, 2);
  const StepPlan plan = step(64);
  EXPECT_EQ(plan.preempted, 0);
  EXPECT_EQ(ids(plan.decodes), (std::vector<std::string>{"urgent"}));
  EXPECT_EQ(scheduler_->waiting(), 2);
}

TEST_F(SchedulerTest, AnUrgentRequestTakesBlocksFromTheLeastUrgent) {
  // 4 blocks of 4: normal's prompt of 7 and low's of 8 fill 2 blocks each.
  make(4);
  Sequence* normal = add("normal", 7, false, 1);
  Sequence* low = add("low", 8, false, 2);
  step(64);
  ASSERT_EQ(cache_->pool().free_blocks(), 0);
  add("urgent", 8, false, 0);
  const StepPlan plan = step(64);
  EXPECT_EQ(low->preemptions, 1);
  EXPECT_EQ(normal->preemptions, 0);
  EXPECT_EQ(ids(plan.decodes), (std::vector<std::string>{"normal"}));
  EXPECT_EQ(ids(plan.prefills), (std::vector<std::string>{"urgent"}));
}

TEST_F(SchedulerTest, UnderPoolPressureTheLeastUrgentGivesWayNotTheNewest) {
  // 4 blocks of 4. low (prompt 7) is admitted first and decodes within its 2 blocks; urgent
  // (prompt 8) fills the other 2. Then urgent needs a third block for position 8.
  make(4);
  Sequence* low = add("low", 7, false, 2);
  step(64);
  Sequence* urgent = add("urgent", 8, false, 1);
  StepPlan plan = step(64);
  ASSERT_EQ(ids(plan.prefills), (std::vector<std::string>{"urgent"}));
  ASSERT_EQ(cache_->pool().free_blocks(), 0);
  plan = step(64);
  EXPECT_EQ(ids(plan.decodes), (std::vector<std::string>{"urgent"}));
  EXPECT_EQ(low->preemptions, 1) << "the older but less urgent sequence gives way";
  EXPECT_EQ(urgent->preemptions, 0);
  // Back in the queue it stays ahead of newer work of its class, behind more urgent work.
  add("low-new", 2, false, 2);
  add("urgent-new", 2, false, 1);
  add("urgent-old", 2, false, 0);
  std::vector<std::string> waiting;
  scheduler_->for_each([&](Sequence& s) {
    if (s.kv.length == 0) waiting.push_back(s.request->spec().id);
  });
  EXPECT_EQ(waiting, (std::vector<std::string>{"urgent-old", "urgent-new", "low", "low-new"}));
}

}  // namespace
}  // namespace helios::engine
