// The controller's same-prompt evidence: the sample of recent prompts, the pass's frozen copy,
// the tokenizer fingerprint and the scoring of a model on the prompts of its tokenizer.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <utility>

#include "common/scratch_dir.h"
#include "helios/controller/evidence.h"
#include "helios/controller/slo_config.h"
#include "helios/model/perplexity.h"
#include "transformer/test_model.h"

namespace helios::controller {
namespace {

std::vector<int32_t> ids(std::initializer_list<int32_t> list) { return list; }

TEST(EvidenceSample, KeepsTheLastPromptsUpToItsCapacityEachCut) {
  EvidenceSample sample;
  sample.add(ids({1, 2, 3}), 7);
  EXPECT_EQ(sample.size(), 0u) << "capacity 0 keeps nothing";
  sample.set_capacity(2);
  sample.add(ids({1}), 7);
  EXPECT_EQ(sample.size(), 0u) << "a prompt of one token predicts nothing";
  sample.add(ids({1, 10}), 7);
  sample.add(ids({1, 11}), 7);
  sample.add(ids({1, 12}), 8);
  ASSERT_EQ(sample.size(), 2u);
  const auto& pass = sample.pass_sample();
  ASSERT_EQ(pass.size(), 2u);
  EXPECT_EQ(pass[0].ids, ids({1, 11}));
  EXPECT_EQ(pass[1].ids, ids({1, 12}));
  EXPECT_EQ(pass[1].tokenizer, 8u);

  std::vector<int32_t> long_prompt(static_cast<size_t>(kEvidencePromptTokens) + 100, 3);
  sample.add(long_prompt, 7);
  sample.begin_pass();
  EXPECT_EQ(sample.pass_sample().back().ids.size(), static_cast<size_t>(kEvidencePromptTokens));

  sample.set_capacity(1);
  EXPECT_EQ(sample.size(), 1u);
}

// Every candidate of a pass sees the prompts as they were when the pass first asked, whatever
// arrives meanwhile; the next pass sees the new ones.
TEST(EvidenceSample, APassScoresEveryCandidateOnTheSamePrompts) {
  EvidenceSample sample;
  sample.set_capacity(4);
  sample.begin_pass();
  EXPECT_TRUE(sample.pass_sample().empty()) << "no prompt sampled yet";
  sample.add(ids({1, 5, 6}), 3);
  ASSERT_EQ(sample.pass_sample().size(), 1u) << "an empty sample is taken again";
  sample.add(ids({1, 7, 8}), 3);
  EXPECT_EQ(sample.pass_sample().size(), 1u) << "frozen for the rest of the pass";
  sample.begin_pass();
  EXPECT_EQ(sample.pass_sample().size(), 2u);
}

// Each prompt keeps when it arrived, and the frozen sample says how old its prompts were when
// it was taken: the lag of the pass's evidence behind the traffic.
TEST(EvidenceSample, KnowsHowOldTheFrozenPromptsWere) {
  using std::chrono::seconds;
  EvidenceSample sample;
  sample.set_capacity(3);
  EXPECT_EQ(sample.frozen_ages(), std::make_pair(0.0, 0.0)) << "nothing frozen";
  const auto now = std::chrono::steady_clock::now();
  sample.add(ids({1, 2}), 3, now - seconds(9));
  sample.add(ids({1, 3}), 3, now - seconds(2));
  sample.add(ids({1, 4}), 3, now - seconds(5));
  ASSERT_EQ(sample.pass_sample().size(), 3u);
  const auto [oldest, newest] = sample.frozen_ages();
  EXPECT_NEAR(oldest, 9.0, 0.5);
  EXPECT_NEAR(newest, 2.0, 0.5);
}

TEST(TokenizerFingerprint, SameBytesSameFingerprintOtherwiseNot) {
  testing::ScratchDir dir("fingerprint");
  for (const char* name : {"a", "b", "c", "d"}) std::filesystem::create_directories(dir.path() / name);
  std::ofstream(dir.path() / "a" / "tokenizer.json") << R"({"model": {"type": "BPE"}})";
  std::ofstream(dir.path() / "b" / "tokenizer.json") << R"({"model": {"type": "BPE"}})";
  std::ofstream(dir.path() / "c" / "tokenizer.json") << R"({"model": {"type": "BPE "}})";
  model::ModelConfig hf;
  hf.tokenizer = model::TokenizerKind::kHuggingFace;
  const uint64_t a = tokenizer_fingerprint(hf, dir.path() / "a");
  EXPECT_NE(a, 0u);
  EXPECT_EQ(tokenizer_fingerprint(hf, dir.path() / "b"), a);
  EXPECT_NE(tokenizer_fingerprint(hf, dir.path() / "c"), a);
  EXPECT_EQ(tokenizer_fingerprint(hf, dir.path() / "d"), 0u) << "no tokenizer.json: unknown";
  // Byte tokenizers agree when their BOS does, whatever the directory holds.
  model::ModelConfig bytes;
  bytes.tokenizer = model::TokenizerKind::kByte;
  bytes.bos_token_id = 256;
  const uint64_t b = tokenizer_fingerprint(bytes, dir.path() / "d");
  EXPECT_NE(b, 0u);
  EXPECT_NE(b, a);
  EXPECT_EQ(tokenizer_fingerprint(bytes, dir.path() / "a"), b);
  bytes.bos_token_id = 1;
  EXPECT_NE(tokenizer_fingerprint(bytes, dir.path() / "d"), b);
}

TEST(ScoreOnSample, ScoresOnlyThePromptsOfTheModelsTokenizer) {
  const auto config = testing::tiny_config(2);
  const auto weights = testing::peaked_weights(config);
  const model::Transformer transformer(config, weights);
  const model::ExitPolicy policy{0.5};
  const std::vector<EvidencePrompt> sample = {
      {ids({1, 4, 5, 6}), 11}, {ids({1, 60, 70}), 22}, {ids({1, 9, 9}), 11}};
  const auto evidence = score_on_sample(transformer, sample, 11, policy);
  ASSERT_TRUE(evidence.has_value());
  EXPECT_EQ(evidence->prompts, 2);
  EXPECT_EQ(evidence->scores.tokens, 3 + 2);
  EXPECT_GE(evidence->seconds, 0.0);
  const std::vector<std::vector<int32_t>> own = {sample[0].ids, sample[2].ids};
  // Scored one prompt at a time, for the per-prompt scores a paired comparison reads.
  std::vector<model::ExitScores> each;
  const model::ExitScores direct = model::score_prompts(transformer, own, policy, 1, &each);
  EXPECT_EQ(evidence->scores.nll_sum, direct.nll_sum);
  ASSERT_EQ(evidence->per_prompt.size(), 2u);
  EXPECT_EQ(evidence->per_prompt[0].tokens, 3);
  EXPECT_EQ(evidence->per_prompt[1].tokens, 2);
  EXPECT_EQ(evidence->per_prompt[1].nll_sum, each[1].nll_sum);
  EXPECT_FALSE(score_on_sample(transformer, sample, 33, policy).has_value()) << "no prompt";
  EXPECT_FALSE(score_on_sample(transformer, sample, 0, policy).has_value()) << "unknown";
}

}  // namespace
}  // namespace helios::controller
