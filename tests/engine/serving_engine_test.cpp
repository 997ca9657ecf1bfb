// The continuous-batching engine on its own (no gRPC): batching, chunked prefill and
// preemption must not change what a request produces.
#include "helios/engine/serving_engine.h"

#include <gtest/gtest.h>

#include <thread>

#include "common/expect_error.h"
#include "common/held_out_text.h"
#include "engine/wait_for_result.h"
#include "helios/common/files.h"

namespace helios::engine {
namespace {

using namespace std::chrono_literals;
using helios::testing::held_out_prompts;

const ModelInstance& micro_model() {
  static const auto model =
      ModelInstance::load(std::string(HELIOS_MICRO_ZOO_DIR) + "/prose-micro");
  return *model;
}

std::vector<std::string> prompts(size_t count) {
  return held_out_prompts("prose", count, 5000, 811, [](size_t i) { return 40 + (i % 5) * 9; });
}

std::shared_ptr<Request> make_request(const std::string& prompt, int64_t max_tokens,
                                      const std::string& id, bool score_prompt = false) {
  RequestSpec spec;
  spec.id = id;
  spec.prompt.push_back(micro_model().tokenizer().bos_id());
  for (const int32_t t : micro_model().tokenizer().encode(prompt)) spec.prompt.push_back(t);
  spec.max_tokens = max_tokens;
  spec.token_details = true;
  spec.score_prompt = score_prompt;
  return std::make_shared<Request>(std::move(spec));
}

EngineOptions options(int64_t blocks, int64_t max_batch_tokens = 512) {
  EngineOptions o;
  o.model_name = "prose-micro";
  o.kv_blocks = blocks;
  o.limits.max_batch_tokens = max_batch_tokens;
  return o;
}

// Requests r<first>, r<first + 1>, ...; the odd-numbered ones ask for their prompt's score.
std::vector<Update> run_all(ServingEngine& engine, const std::vector<std::string>& texts,
                            int64_t max_tokens, size_t first = 0) {
  std::vector<std::shared_ptr<Request>> requests;
  for (size_t i = first; i < first + texts.size(); ++i) {
    requests.push_back(
        make_request(texts[i - first], max_tokens, "r" + std::to_string(i), i % 2 == 1));
    engine.submit(requests.back());
  }
  std::vector<Update> results;
  for (auto& r : requests) results.push_back(result_of(*r));
  return results;
}

std::vector<int32_t> ids(const Update& u) {
  std::vector<int32_t> out;
  for (const auto& t : u.tokens) out.push_back(t.id);
  return out;
}

TEST(ServingEngine, BatchingChunkingAndPreemptionKeepEveryOutput) {
  const std::vector<std::string> texts = prompts(12);
  constexpr int64_t kTokens = 40;
  // Reference: one request at a time, a roomy pool.
  std::vector<Update> alone;
  {
    ServingEngine engine(micro_model(), options(256));
    engine.start();
    for (size_t i = 0; i < texts.size(); ++i) {
      alone.push_back(run_all(engine, {texts[i]}, kTokens, i)[0]);
    }
  }
  // All at once, prompts chunked 7 tokens a step, in a pool of 20 blocks (320 tokens) that
  // cannot hold 12 sequences of ~90 tokens: chunking and preemption both happen.
  ServingEngine engine(micro_model(), options(20, 12));
  engine.start();
  const std::vector<Update> batched = run_all(engine, texts, kTokens);
  int64_t preemptions = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    EXPECT_EQ(batched[i].finish, Finish::kLength);
    EXPECT_EQ(ids(batched[i]), ids(alone[i]));
    EXPECT_EQ(batched[i].text, alone[i].text);
    EXPECT_EQ(batched[i].usage.completion_tokens, kTokens);
    // Prompt scores add up over chunks: the same perplexity as one uninterrupted prefill.
    if (i % 2 == 1) {
      EXPECT_EQ(batched[i].usage.prompt_scored_tokens, batched[i].usage.prompt_tokens - 1);
      EXPECT_GT(alone[i].usage.prompt_perplexity, 1.0);
      EXPECT_NEAR(batched[i].usage.prompt_perplexity, alone[i].usage.prompt_perplexity,
                  1e-4 * alone[i].usage.prompt_perplexity);
    } else {
      EXPECT_EQ(batched[i].usage.prompt_scored_tokens, 0);
      EXPECT_EQ(batched[i].usage.prompt_perplexity, 0.0);
    }
    preemptions += batched[i].usage.preemptions;
  }
  EXPECT_GT(preemptions, 0);
  const EngineStats stats = engine.stats();
  EXPECT_EQ(stats.preemptions, preemptions);
  EXPECT_EQ(stats.kv_blocks_used, 0);
  EXPECT_EQ(engine.in_flight(), 0);
}

TEST(ServingEngine, CancelFreesBlocksAndFinishesCancelled) {
  ServingEngine engine(micro_model(), options(64));
  engine.start();
  auto request = make_request(prompts(1)[0], 200, "long");
  engine.submit(request);
  while (engine.stats().kv_blocks_used == 0) std::this_thread::sleep_for(1ms);
  request->cancel();
  engine.wake();
  const Update result = result_of(*request);
  EXPECT_EQ(result.finish, Finish::kCancelled);
  EXPECT_LT(result.usage.completion_tokens, 200);
  EXPECT_EQ(engine.stats().kv_blocks_used, 0);
}

TEST(ServingEngine, RequestPastItsDeadlineCountsAsDeadlineEvenWhenCancelled) {
  // gRPC cancels a call when its deadline passes: the engine sees both, and the deadline is
  // what ended the request.
  metrics::Registry registry;
  ServingEngine engine(micro_model(), options(64), &registry);
  auto late = make_request(prompts(1)[0], 8, "late");
  auto cancelled = make_request(prompts(1)[0], 8, "cancelled");
  {
    RequestSpec spec = late->spec();
    spec.deadline = Clock::now() - 1ms;
    late = std::make_shared<Request>(std::move(spec));
  }
  late->cancel();
  cancelled->cancel();
  engine.submit(late);
  engine.submit(cancelled);
  engine.start();
  EXPECT_EQ(result_of(*late).finish, Finish::kDeadline);
  EXPECT_EQ(result_of(*cancelled).finish, Finish::kCancelled);
  const std::string text = registry.render();
  EXPECT_NE(text.find("helios_requests_finished_total{reason=\"deadline\"} 1"), std::string::npos)
      << text;
  EXPECT_NE(text.find("helios_requests_finished_total{reason=\"cancelled\"} 1"),
            std::string::npos)
      << text;
}

TEST(ServingEngine, QueueLimitDuplicateIdsAndClose) {
  EngineOptions o = options(64);
  o.limits.max_queued = 1;
  ServingEngine engine(micro_model(), o);  // not started: nothing leaves the queue
  engine.submit(make_request("a", 4, "one"));
  testing::expect_error([&] { engine.submit(make_request("b", 4, "two")); },
                        ErrorCode::kResourceExhausted, {"max_queued_requests"});
  o.limits.max_queued = 8;
  ServingEngine roomy(micro_model(), o);
  roomy.submit(make_request("a", 4, "same"));
  testing::expect_error([&] { roomy.submit(make_request("b", 4, "same")); },
                        ErrorCode::kFailedPrecondition, {"request_id", "same"});
  roomy.close();
  testing::expect_error([&] { roomy.submit(make_request("c", 4, "other")); },
                        ErrorCode::kUnavailable, {"shutting down"});
}

TEST(ServingEngine, BudgetMustHoldWeightsAndOneContext) {
  const ModelInstance& model = micro_model();
  const int64_t weights = model.loaded().weights.resident_bytes();
  testing::expect_error([&] { kv_blocks_for_budget(model, weights, 16, "memory.budget_mib"); },
                        ErrorCode::kInvalidArgument, {"memory.budget_mib", "resident weights"});
  const int64_t blocks = kv_blocks_for_budget(model, weights + (int64_t{8} << 20), 16, "x");
  EXPECT_GE(blocks * 16, model.config().max_position_embeddings);
  // Fewer loaded layers: fewer bytes per token, more blocks in the same budget.
  model::LoadOptions shallow;
  shallow.max_layers = 2;
  const auto half = ModelInstance::load(std::string(HELIOS_MICRO_ZOO_DIR) + "/prose-micro", shallow);
  const int64_t budget = weights + (int64_t{8} << 20);
  EXPECT_GT(kv_blocks_for_budget(*half, budget, 16, "x"), blocks * 3 / 2);
}

TEST(KvBlocksForSet, WeightsFirstThenOneSequenceEachThenTheRestByShare) {
  ModelFootprint small;
  small.kv_bytes_per_token_layer = 100;
  small.context_length = 64;
  ModelFootprint deep = small;
  deep.context_length = 128;
  // Block of 16 tokens: 1600 bytes per layer of depth; one sequence is 4 (small) or 8 blocks.
  const std::vector<SetMemberFootprint> set = {{small, 2, 10000, 1.0}, {deep, 4, 20000, 1.0}};
  const int64_t needed = 10000 + 4 * 3200 + 20000 + 8 * 6400;  // 94,000 bytes
  testing::expect_error([&] { kv_blocks_for_set(set, needed - 1, 16, "memory.budget_mib"); },
                        ErrorCode::kResourceExhausted, {"memory.budget_mib", "resident set"});
  EXPECT_EQ(kv_blocks_for_set(set, needed, 16, "x"), (std::vector<int64_t>{4, 8}));
  // 64,000 spare bytes, 32,000 each: 10 blocks of 3200 bytes, 5 of 6400.
  const std::vector<int64_t> blocks = kv_blocks_for_set(set, needed + 64000, 16, "x");
  EXPECT_EQ(blocks, (std::vector<int64_t>{14, 13}));
  EXPECT_LE(10000 + blocks[0] * 3200 + 20000 + blocks[1] * 6400, needed + 64000);
  // Shares weight the split: 3:1 gives the first 48,000 bytes.
  std::vector<SetMemberFootprint> weighted = set;
  weighted[0].share = 3.0;
  EXPECT_EQ(kv_blocks_for_set(weighted, needed + 64000, 16, "x"), (std::vector<int64_t>{19, 10}));
  weighted[0].share = 0.0;
  testing::expect_error([&] { kv_blocks_for_set(weighted, needed, 16, "x"); },
                        ErrorCode::kInvalidArgument, {"shares"});
}

}  // namespace
}  // namespace helios::engine
