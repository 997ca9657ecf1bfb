// Faults inside the engine stay with the request they belong to: a row whose logits turn NaN,
// a forward that runs out of memory, an exception that escapes a step, a KV pool that cannot be
// allocated. The engine keeps serving, the others finish as they would have, and each fault is
// counted. Faults are injected through EngineOptions::faults.
#include <gtest/gtest.h>

#include <atomic>
#include <limits>
#include <mutex>
#include <new>
#include <set>

#include "common/expect_error.h"
#include "common/held_out_text.h"
#include "engine/wait_for_result.h"
#include "helios/engine/serving_engine.h"

namespace helios::engine {
namespace {

using helios::testing::held_out_prompts;

const ModelInstance& micro_model() {
  static const auto model = ModelInstance::load(std::string(HELIOS_MICRO_ZOO_DIR) + "/prose-micro");
  return *model;
}

std::shared_ptr<Request> make_request(const std::string& prompt, int64_t max_tokens,
                                      const std::string& id) {
  RequestSpec spec;
  spec.id = id;
  spec.prompt.push_back(micro_model().tokenizer().bos_id());
  for (const int32_t t : micro_model().tokenizer().encode(prompt)) spec.prompt.push_back(t);
  spec.max_tokens = max_tokens;
  spec.token_details = true;
  return std::make_shared<Request>(std::move(spec));
}

EngineOptions options(int64_t blocks = 64) {
  EngineOptions o;
  o.model_name = "prose-micro";
  o.kv_blocks = blocks;
  return o;
}

std::vector<int32_t> ids(const Update& u) {
  std::vector<int32_t> out;
  for (const auto& t : u.tokens) out.push_back(t.id);
  return out;
}

std::vector<std::string> texts() {
  return held_out_prompts("prose", 2, 5000, 977, [](size_t i) { return 30 + i * 7; });
}

// What `prompt` produces alone on a healthy engine.
std::vector<int32_t> reference(const std::string& prompt, int64_t max_tokens) {
  ServingEngine engine(micro_model(), options());
  engine.start();
  auto request = make_request(prompt, max_tokens, "reference");
  engine.submit(request);
  return ids(result_of(*request));
}

bool contains(const std::vector<std::string>& ids, const std::string& id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

// The sample of `series` in the registry's text ("" when absent).
std::string sample(metrics::Registry& registry, const std::string& series) {
  const std::string text = registry.render();
  const size_t at = text.find("\n" + series + " ");
  if (at == std::string::npos) return "";
  const size_t begin = at + series.size() + 2;
  return text.substr(begin, text.find('\n', begin) - begin);
}

// Submits both before the engine starts: both are prefilled in the first step and then decode
// together, one batch of two rows per step.
std::pair<Update, Update> run_pair(ServingEngine& engine, const std::string& good_prompt,
                                   const std::string& bad_prompt, int64_t max_tokens) {
  auto good = make_request(good_prompt, max_tokens, "good");
  auto bad = make_request(bad_prompt, max_tokens, "bad");
  engine.submit(good);
  engine.submit(bad);
  engine.start();
  Update good_result = result_of(*good);
  Update bad_result = result_of(*bad);
  return {std::move(good_result), std::move(bad_result)};
}

TEST(EngineFaults, NanLogitsFailOnlyTheirRow) {
  const auto prompts = texts();
  constexpr int64_t kTokens = 24;
  const std::vector<int32_t> expected = reference(prompts[0], kTokens);
  metrics::Registry registry;
  EngineOptions o = options();
  // The bad request's row turns NaN in the first batched decode.
  o.faults.forward = [](const std::vector<std::string>& rows, at::Tensor& logits) {
    for (size_t r = 0; r < rows.size() && rows.size() > 1; ++r) {
      if (rows[r] == "bad") logits[static_cast<int64_t>(r)].fill_(NAN);
    }
  };
  ServingEngine engine(micro_model(), o, &registry);
  const auto [good, bad] = run_pair(engine, prompts[0], prompts[1], kTokens);

  EXPECT_EQ(good.finish, Finish::kLength) << good.error;
  EXPECT_EQ(ids(good), expected);
  EXPECT_EQ(bad.finish, Finish::kError);
  EXPECT_EQ(bad.error_code, ErrorCode::kInternal);
  EXPECT_NE(bad.error.find("sampling failed"), std::string::npos) << bad.error;
  EXPECT_NE(bad.error.find("NaN"), std::string::npos) << bad.error;
  EXPECT_EQ(bad.usage.completion_tokens, 1);  // its prefill's token, then the NaN row
  EXPECT_EQ(sample(registry, "helios_engine_faults_total{fault=\"sampling\"}"), "1");
  EXPECT_EQ(sample(registry, "helios_engine_faults_total{fault=\"forward\"}"), "0");
  EXPECT_EQ(sample(registry, "helios_requests_finished_total{reason=\"error\"}"), "1");

  // The engine goes on serving.
  auto later = make_request(prompts[0], kTokens, "later");
  engine.submit(later);
  EXPECT_EQ(ids(result_of(*later)), expected);
  EXPECT_EQ(engine.stats().kv_blocks_used, 0);
  EXPECT_EQ(engine.in_flight(), 0);
}

TEST(EngineFaults, FailedBatchedForwardIsRetriedRowByRow) {
  const auto prompts = texts();
  constexpr int64_t kTokens = 20;
  const std::vector<int32_t> expected_good = reference(prompts[0], kTokens);
  const std::vector<int32_t> expected_bad = reference(prompts[1], kTokens);
  metrics::Registry registry;
  EngineOptions o = options();
  // The first batched forward of two rows runs out of memory; each row alone fits.
  auto failed_once = std::make_shared<std::atomic<bool>>(false);
  o.faults.forward = [failed_once](const std::vector<std::string>& rows, at::Tensor&) {
    if (rows.size() > 1 && !failed_once->exchange(true)) throw std::bad_alloc();
  };
  ServingEngine engine(micro_model(), o, &registry);
  const auto [good, bad] = run_pair(engine, prompts[0], prompts[1], kTokens);
  EXPECT_TRUE(failed_once->load());
  EXPECT_EQ(good.finish, Finish::kLength) << good.error;
  EXPECT_EQ(bad.finish, Finish::kLength) << bad.error;
  EXPECT_EQ(ids(good), expected_good);
  EXPECT_EQ(ids(bad), expected_bad);
  EXPECT_EQ(sample(registry, "helios_engine_faults_total{fault=\"forward\"}"), "1");
  EXPECT_EQ(sample(registry, "helios_requests_finished_total{reason=\"error\"}"), "0");
}

TEST(EngineFaults, RowWhoseOwnForwardFailsIsTheOnlyOneLost) {
  const auto prompts = texts();
  constexpr int64_t kTokens = 20;
  const std::vector<int32_t> expected = reference(prompts[0], kTokens);
  metrics::Registry registry;
  EngineOptions o = options();
  // After its prefill, every forward with the bad request in it runs out of memory, in a batch
  // or alone.
  auto prefilled = std::make_shared<std::set<std::string>>();
  o.faults.forward = [prefilled](const std::vector<std::string>& rows, at::Tensor&) {
    if (contains(rows, "bad") && !prefilled->insert("bad").second) throw std::bad_alloc();
  };
  ServingEngine engine(micro_model(), o, &registry);
  const auto [good, bad] = run_pair(engine, prompts[0], prompts[1], kTokens);
  EXPECT_EQ(good.finish, Finish::kLength) << good.error;
  EXPECT_EQ(ids(good), expected);
  EXPECT_EQ(bad.finish, Finish::kError);
  EXPECT_NE(bad.error.find("decode forward failed"), std::string::npos) << bad.error;
  EXPECT_NE(bad.error.find("bad_alloc"), std::string::npos) << bad.error;
  // The batch's forward, then the bad row's own.
  EXPECT_EQ(sample(registry, "helios_engine_faults_total{fault=\"forward\"}"), "2");
  EXPECT_EQ(engine.stats().kv_blocks_used, 0);
}

TEST(EngineFaults, ExceptionEscapingAStepFailsItsBatchAndTheEngineGoesOn) {
  const auto prompts = texts();
  metrics::Registry registry;
  EngineOptions o = options();
  auto steps = std::make_shared<std::atomic<int>>(0);
  o.faults.step = [steps] {
    if (steps->fetch_add(1) == 3) throw std::runtime_error("bookkeeping broke");
  };
  ServingEngine engine(micro_model(), o, &registry);
  const auto [first, second] = run_pair(engine, prompts[0], prompts[1], 40);
  for (const Update* u : {&first, &second}) {
    EXPECT_EQ(u->finish, Finish::kError);
    EXPECT_NE(u->error.find("engine step failed: bookkeeping broke"), std::string::npos)
        << u->error;
  }
  EXPECT_EQ(sample(registry, "helios_engine_faults_total{fault=\"step\"}"), "1");
  EXPECT_EQ(engine.stats().kv_blocks_used, 0);
  auto later = make_request(prompts[0], 12, "later");
  engine.submit(later);
  EXPECT_EQ(result_of(*later).finish, Finish::kLength);
  EXPECT_EQ(engine.in_flight(), 0);
}

TEST(EngineFaults, PoolThatCannotBeAllocatedLeavesTheEngineAPool) {
  const auto prompts = texts();
  metrics::Registry registry;
  EngineOptions o = options(64);
  // Sizes that cannot be allocated now; every size when `all` is set.
  struct Refused {
    std::mutex mutex;
    std::set<int64_t> sizes;
    bool all = false;
  };
  auto refused = std::make_shared<Refused>();
  o.faults.kv_cache = [refused](int64_t blocks) {
    std::lock_guard lock(refused->mutex);
    if (refused->all || refused->sizes.count(blocks) > 0) throw std::bad_alloc();
  };
  ServingEngine engine(micro_model(), o, &registry);
  engine.start();
  const int64_t minimum = 256 / 16;  // one full-context sequence

  // The new size fails, and so does the old one: the engine falls back to one sequence's pool.
  refused->sizes = {40, 64};
  EXPECT_THROW(engine.resize_kv(40).get(), std::bad_alloc);
  EXPECT_EQ(engine.stats().kv_blocks_total, minimum);
  auto served = make_request(prompts[0], 12, "served");
  engine.submit(served);
  EXPECT_EQ(result_of(*served).finish, Finish::kLength);
  EXPECT_EQ(sample(registry, "helios_engine_faults_total{fault=\"kv_cache\"}"), "2");

  // Nothing can be allocated: the pool is empty, requests fail instead of waiting forever...
  {
    std::lock_guard lock(refused->mutex);
    refused->all = true;
  }
  EXPECT_THROW(engine.resize_kv(48).get(), std::bad_alloc);
  EXPECT_EQ(engine.stats().kv_blocks_total, 0);
  auto starved = make_request(prompts[0], 12, "starved");
  engine.submit(starved);
  const Update failed = result_of(*starved);
  EXPECT_EQ(failed.finish, Finish::kError);
  EXPECT_NE(failed.error.find("no KV cache"), std::string::npos) << failed.error;

  // ...until memory is back: the next step rebuilds the pool it lost.
  {
    std::lock_guard lock(refused->mutex);
    refused->all = false;
    refused->sizes.clear();
  }
  auto recovered = make_request(prompts[0], 12, "recovered");
  engine.submit(recovered);
  EXPECT_EQ(result_of(*recovered).finish, Finish::kLength);
  EXPECT_EQ(engine.stats().kv_blocks_total, minimum);
  EXPECT_EQ(engine.in_flight(), 0);
}

}  // namespace
}  // namespace helios::engine
