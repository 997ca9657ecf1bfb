// Replay prefill: recomputing a preempted sequence's cache from its tokens and recorded exits.

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <span>
#include <vector>

#include "common/expect_error.h"
#include "helios/common/error.h"
#include "helios/engine/generator.h"
#include "helios/model/transformer.h"
#include "transformer/test_model.h"

namespace helios {
namespace {

constexpr int64_t kSteps = 12;

int32_t greedy(const model::StepOutput& out) {
  return static_cast<int32_t>(out.logits[0].argmax().item<int64_t>());
}

model::StepOutput decode_one(const model::Transformer& transformer, kv::KvCache& cache,
                             kv::SequenceKv& sequence, int32_t token,
                             const model::ExitPolicy& policy) {
  kv::SequenceKv* sequences[] = {&sequence};
  return transformer.decode(cache, sequences, std::span<const int32_t>(&token, 1), policy);
}

// Keys (or values) of positions [0, length) of `sequence` at `layer`: [length, kv_heads, hd].
at::Tensor gather(kv::KvCache& cache, const kv::SequenceKv& sequence, int64_t layer, bool keys) {
  const at::Tensor slots = cache.slots(sequence, 0, sequence.length);
  return (keys ? cache.keys(layer) : cache.values(layer)).index_select(0, slots);
}

class ReplayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Cache A: the prompt, then kSteps greedy decode steps under early exit, recording each
    // step's input token and how it left.
    ASSERT_TRUE(cache_a_.reserve(seq_a_, static_cast<int64_t>(prompt_.size()) + kSteps + 1));
    model::StepOutput out = transformer_.prefill(cache_a_, seq_a_, prompt_, policy_);
    for (int64_t i = 0; i < kSteps; ++i) {
      const int32_t token = greedy(out);
      out = decode_one(transformer_, cache_a_, seq_a_, token, policy_);
      tokens_.push_back(token);
      exits_.push_back(out.exits[0]);
      outputs_.push_back(out);
    }
  }

  // A fresh cache whose first blocks are taken by another sequence, so that the replayed
  // sequence's slots differ from A's; prefills the prompt into `sequence`.
  kv::KvCache prompt_cache(kv::SequenceKv& sequence) {
    kv::KvCache cache = engine::make_cache_for(transformer_, 2, 32, 4);
    kv::SequenceKv dummy;
    EXPECT_TRUE(cache.reserve(dummy, 10));
    EXPECT_TRUE(cache.reserve(sequence, static_cast<int64_t>(prompt_.size()) + kSteps + 1));
    transformer_.prefill(cache, sequence, prompt_, policy_);
    return cache;
  }

  std::vector<int32_t> exit_layers(size_t begin, size_t end) const {
    std::vector<int32_t> out;
    for (size_t i = begin; i < end; ++i) out.push_back(exits_[i].exit_layer);
    return out;
  }

  model::ModelConfig config_ = testing::tiny_config(4);
  model::ModelWeights weights_ = testing::peaked_weights(config_);
  model::Transformer transformer_{config_, weights_};
  const model::ExitPolicy policy_{0.5};
  const std::vector<int32_t> prompt_{1, 4, 9, 16, 25, 7};
  kv::KvCache cache_a_ = engine::make_cache_for(transformer_, 1, 32, 4);
  kv::SequenceKv seq_a_;
  std::vector<int32_t> tokens_;             // decode inputs, one per step
  std::vector<model::TokenExit> exits_;     // how each step's token left
  std::vector<model::StepOutput> outputs_;  // each step's output
};

TEST_F(ReplayTest, RecordedExitsAreMixed) {
  std::set<int32_t> layers;
  for (const auto& exit : exits_) layers.insert(exit.exit_layer);
  EXPECT_GE(layers.size(), 2u) << "the scenario should mix exit layers";
  EXPECT_LT(*layers.begin(), transformer_.loaded_layers()) << "some token should exit early";
}

TEST_F(ReplayTest, ChunkedReplayReproducesTheDecodedCacheAndContinuation) {
  kv::SequenceKv seq_b;
  kv::KvCache cache_b = prompt_cache(seq_b);
  ASSERT_FALSE(
      at::equal(cache_b.slots(seq_b, 0, seq_b.length), cache_a_.slots(seq_a_, 0, seq_b.length)))
      << "the replayed sequence should sit in different slots";

  // Replay the first kSteps - 1 decoded tokens in two chunks.
  const size_t split = 5, replayed = kSteps - 1;
  const std::span<const int32_t> tokens(tokens_);
  const std::vector<int32_t> first = exit_layers(0, split), second = exit_layers(split, replayed);
  model::StepOutput out =
      transformer_.prefill(cache_b, seq_b, tokens.subspan(0, split), policy_, false, first);
  EXPECT_EQ(out.exits[0].exit_layer, exits_[split - 1].exit_layer);
  out = transformer_.prefill(cache_b, seq_b, tokens.subspan(split, replayed - split), policy_,
                             false, second);
  ASSERT_EQ(seq_b.length, static_cast<int64_t>(prompt_.size() + replayed));

  // The replay's output for its last token is what decode gave for it.
  EXPECT_EQ(out.exits[0].exit_layer, exits_[replayed - 1].exit_layer);
  EXPECT_NEAR(out.exits[0].confidence, exits_[replayed - 1].confidence, 1e-4);
  EXPECT_TRUE(at::allclose(out.logits, outputs_[replayed - 1].logits, 1e-4, 1e-4));

  // Every position of every layer holds what decode wrote.
  kv::SequenceKv seq_a_prefix = seq_a_;
  seq_a_prefix.length = seq_b.length;
  for (int64_t l = 0; l < transformer_.loaded_layers(); ++l) {
    for (const bool keys : {true, false}) {
      const at::Tensor a = gather(cache_a_, seq_a_prefix, l, keys);
      const at::Tensor b = gather(cache_b, seq_b, l, keys);
      EXPECT_TRUE(at::allclose(a, b, 1e-4, 1e-5))
          << (keys ? "keys" : "values") << " of layer " << l << " differ by "
          << (a - b).abs().max().item<float>();
    }
  }

  // Decoding the last recorded token, then one more, continues exactly as in A.
  const model::StepOutput b_step =
      decode_one(transformer_, cache_b, seq_b, tokens_.back(), policy_);
  EXPECT_TRUE(at::allclose(b_step.logits, outputs_.back().logits, 1e-4, 1e-4));
  EXPECT_EQ(b_step.exits[0].exit_layer, exits_.back().exit_layer);
  const int32_t next = greedy(outputs_.back());
  ASSERT_EQ(greedy(b_step), next);
  const model::StepOutput a_next = decode_one(transformer_, cache_a_, seq_a_, next, policy_);
  const model::StepOutput b_next = decode_one(transformer_, cache_b, seq_b, next, policy_);
  EXPECT_TRUE(at::allclose(a_next.logits, b_next.logits, 1e-4, 1e-4));
  EXPECT_EQ(a_next.exits[0].exit_layer, b_next.exits[0].exit_layer);
  EXPECT_EQ(a_next.exits[0].greedy_exit, b_next.exits[0].greedy_exit);
  for (int64_t l = 0; l < transformer_.loaded_layers(); ++l) {
    EXPECT_TRUE(at::allclose(gather(cache_a_, seq_a_, l, true), gather(cache_b, seq_b, l, true),
                             1e-4, 1e-5));
    EXPECT_TRUE(at::allclose(gather(cache_a_, seq_a_, l, false), gather(cache_b, seq_b, l, false),
                             1e-4, 1e-5));
  }
}

TEST_F(ReplayTest, TokenByTokenReplayReproducesTheDecodedCache) {
  // One-token chunks: a chunk of an early-exited token has every row frozen past its exit,
  // the path that only writes the deeper layers' keys/values.
  kv::SequenceKv seq_b;
  kv::KvCache cache_b = prompt_cache(seq_b);
  for (int64_t i = 0; i < kSteps; ++i) {
    const int32_t exit = exits_[i].exit_layer;
    const auto out = transformer_.prefill(cache_b, seq_b, std::span<const int32_t>(&tokens_[i], 1),
                                          policy_, false, std::span<const int32_t>(&exit, 1));
    EXPECT_EQ(out.exits[0].exit_layer, exit) << "step " << i;
    EXPECT_TRUE(at::allclose(out.logits, outputs_[i].logits, 1e-4, 1e-4)) << "step " << i;
  }
  ASSERT_EQ(seq_b.length, seq_a_.length);
  for (int64_t l = 0; l < transformer_.loaded_layers(); ++l) {
    for (const bool keys : {true, false}) {
      EXPECT_TRUE(at::allclose(gather(cache_a_, seq_a_, l, keys), gather(cache_b, seq_b, l, keys),
                               1e-4, 1e-5))
          << (keys ? "keys" : "values") << " of layer " << l;
    }
  }
}

TEST_F(ReplayTest, PlainPrefillOfTheGeneratedTokensDoesNotReproduceTheCache) {
  // Negative control: without the recorded exits, the layers an early-exited token skipped
  // hold full-depth keys/values instead of the exit state's projections.
  kv::SequenceKv seq_c;
  kv::KvCache cache_c = prompt_cache(seq_c);
  const size_t replayed = kSteps - 1;
  transformer_.prefill(cache_c, seq_c, std::span<const int32_t>(tokens_).first(replayed), policy_);
  kv::SequenceKv seq_a_prefix = seq_a_;
  seq_a_prefix.length = seq_c.length;
  const int64_t deepest = transformer_.loaded_layers() - 1;
  float worst = 0.0f;
  for (size_t i = 0; i < replayed; ++i) {
    if (exits_[i].exit_layer >= transformer_.loaded_layers()) continue;
    const int64_t position = static_cast<int64_t>(prompt_.size() + i);
    for (const bool keys : {true, false}) {
      const at::Tensor a = gather(cache_a_, seq_a_prefix, deepest, keys)[position];
      const at::Tensor c = gather(cache_c, seq_c, deepest, keys)[position];
      worst = std::max(worst, (a - c).abs().max().item<float>());
    }
  }
  EXPECT_GT(worst, 1e-2) << "plain prefill should differ at an early-exited position";
}

TEST_F(ReplayTest, FullDepthExitsMatchPlainPrefillExactly) {
  // Entries <= 0 or >= the loaded depth mean full depth: the same numbers as no exit_layers.
  kv::SequenceKv seq_p, seq_r;
  kv::KvCache cache_p = prompt_cache(seq_p);
  kv::KvCache cache_r = prompt_cache(seq_r);
  const std::span<const int32_t> tokens = std::span<const int32_t>(tokens_).first(4);
  const std::vector<int32_t> full{0, 4, 7, -1};
  const auto plain = transformer_.prefill(cache_p, seq_p, tokens, policy_);
  const auto replay = transformer_.prefill(cache_r, seq_r, tokens, policy_, false, full);
  EXPECT_TRUE(at::equal(plain.logits, replay.logits));
  EXPECT_EQ(plain.exits[0].exit_layer, replay.exits[0].exit_layer);
  for (int64_t l = 0; l < transformer_.loaded_layers(); ++l) {
    EXPECT_TRUE(at::equal(gather(cache_p, seq_p, l, true), gather(cache_r, seq_r, l, true)));
    EXPECT_TRUE(at::equal(gather(cache_p, seq_p, l, false), gather(cache_r, seq_r, l, false)));
  }
}

TEST_F(ReplayTest, RejectsExitLayersOfTheWrongSizeAndScorePrompt) {
  kv::SequenceKv seq_b;
  kv::KvCache cache_b = prompt_cache(seq_b);
  const int64_t length = seq_b.length;
  const std::span<const int32_t> tokens = std::span<const int32_t>(tokens_).first(3);
  const std::vector<int32_t> two{1, 2};
  testing::expect_error([&] { transformer_.prefill(cache_b, seq_b, tokens, policy_, false, two); },
                        ErrorCode::kInvalidArgument, {"exit_layers", "2", "3"});
  const std::vector<int32_t> three{1, 2, 3};
  testing::expect_error([&] { transformer_.prefill(cache_b, seq_b, tokens, policy_, true, three); },
                        ErrorCode::kInvalidArgument, {"exit_layers", "score_prompt"});
  EXPECT_EQ(seq_b.length, length) << "a rejected replay leaves the sequence as it was";
}

}  // namespace
}  // namespace helios
