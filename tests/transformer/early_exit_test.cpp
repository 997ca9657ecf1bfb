#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "helios/common/error.h"
#include "helios/engine/generator.h"
#include "helios/model/checkpoint.h"
#include "helios/model/perplexity.h"
#include "helios/model/transformer.h"
#include "common/expect_error.h"
#include "common/scratch_dir.h"
#include "test_model.h"

namespace helios {
namespace {

std::vector<engine::GenerationRequest> requests_of(const std::vector<std::vector<int32_t>>& prompts,
                                                   int64_t max_tokens) {
  std::vector<engine::GenerationRequest> out;
  for (const auto& prompt : prompts) {
    engine::GenerationRequest r;
    r.prompt = prompt;
    r.max_tokens = max_tokens;
    r.stop_at_eos = false;
    out.push_back(r);
  }
  return out;
}

// Greedy generation by re-running the plain full-depth forward over the whole sequence for
// every token: no cache, no early exit.
std::vector<int32_t> plain_greedy(const model::Transformer& transformer,
                                  std::vector<int32_t> sequence, int64_t max_tokens) {
  std::vector<int32_t> generated;
  for (int64_t i = 0; i < max_tokens; ++i) {
    std::vector<int64_t> ids(sequence.begin(), sequence.end());
    const auto hidden = transformer.forward_exits(at::tensor(ids).unsqueeze(0));
    const at::Tensor logits = transformer.exit_logits(hidden.back())[0][-1];
    const int32_t next = static_cast<int32_t>(logits.argmax().item<int64_t>());
    generated.push_back(next);
    sequence.push_back(next);
  }
  return generated;
}

class EarlyExitTest : public ::testing::Test {
 protected:
  model::ModelConfig config_ = testing::tiny_config(4);
  model::ModelWeights weights_ = testing::peaked_weights(config_);
  model::Transformer transformer_{config_, weights_};
  std::vector<std::vector<int32_t>> prompts_{
      {1, 4, 9, 16, 25}, {1, 3}, {1, 10, 20, 30, 40, 45, 12, 7, 33}, {1, 8, 8, 8, 8, 8, 8}};
};

TEST_F(EarlyExitTest, ThresholdAboveOneMatchesPlainFullDepthGreedy) {
  kv::KvCache cache = engine::make_cache_for(transformer_, 4, 64, 4);
  const auto requests = requests_of(prompts_, 24);
  const auto results = engine::generate_batch(transformer_, cache, requests, {1.01});
  for (size_t i = 0; i < prompts_.size(); ++i) {
    std::vector<int32_t> tokens;
    for (const auto& token : results[i].tokens) {
      tokens.push_back(token.id);
      EXPECT_EQ(token.exit.exit_layer, 4) << "no token may exit early above threshold 1";
    }
    EXPECT_EQ(tokens, plain_greedy(transformer_, prompts_[i], 24)) << "prompt " << i;
  }
}

TEST_F(EarlyExitTest, ThresholdZeroExitsEveryTokenAtTheFirstExitLayer) {
  model::ModelConfig config = config_;
  config.exit_layers = {2, 4};
  const model::Transformer transformer(config, weights_);
  kv::KvCache cache = engine::make_cache_for(transformer, 4, 64, 4);
  const auto results = engine::generate_batch(transformer, cache, requests_of(prompts_, 16), {0.0});
  for (const auto& result : results) {
    ASSERT_EQ(result.tokens.size(), 16u);
    for (const auto& token : result.tokens) {
      EXPECT_EQ(token.exit.exit_layer, 2);
      EXPECT_FALSE(token.exit.greedy_exit);
    }
  }
}

TEST_F(EarlyExitTest, BatchedDecodeOfDifferentLengthsEqualsDecodingEachAlone) {
  // A threshold in the middle of the confidence range, so the batch mixes exit layers.
  const model::ExitPolicy policy{0.5};
  kv::KvCache batch_cache = engine::make_cache_for(transformer_, 4, 64, 4);
  const auto requests = requests_of(prompts_, 20);
  const auto batched = engine::generate_batch(transformer_, batch_cache, requests, policy);
  std::set<int32_t> layers_seen;
  for (size_t i = 0; i < requests.size(); ++i) {
    kv::KvCache alone_cache = engine::make_cache_for(transformer_, 1, 64, 4);
    const auto alone =
        engine::generate_batch(transformer_, alone_cache,
                               std::span<const engine::GenerationRequest>(&requests[i], 1), policy);
    ASSERT_EQ(batched[i].tokens.size(), alone[0].tokens.size());
    for (size_t t = 0; t < alone[0].tokens.size(); ++t) {
      const auto& a = batched[i].tokens[t];
      const auto& b = alone[0].tokens[t];
      EXPECT_EQ(a.id, b.id) << "request " << i << " token " << t;
      EXPECT_EQ(a.exit.exit_layer, b.exit.exit_layer) << "request " << i << " token " << t;
      EXPECT_NEAR(a.exit.confidence, b.exit.confidence, 1e-4);
      layers_seen.insert(a.exit.exit_layer);
    }
  }
  EXPECT_GE(layers_seen.size(), 2u) << "the test should exercise mixed exit layers";
  EXPECT_EQ(batch_cache.pool().used_blocks(), 0) << "finished sequences free their blocks";
}

TEST_F(EarlyExitTest, SkippedLayersGetKeysAndValuesFromTheExitState) {
  // With threshold 0 every decoded token exits after layer 1. Layer 1's output does not
  // depend on exits (its attention reads layer-0 keys, always computed), so the plain
  // forward gives the exit hidden state to check the filled cache against.
  model::ModelConfig config = config_;
  const model::Transformer transformer(config, weights_);
  kv::KvCache cache = engine::make_cache_for(transformer, 1, 32, 4);
  const std::vector<int32_t> prompt{1, 6, 11};
  std::vector<int32_t> sequence_tokens = prompt;
  kv::SequenceKv sequence;
  ASSERT_TRUE(cache.reserve(sequence, 8));
  auto out = transformer.prefill(cache, sequence, prompt, {0.0});
  for (int step = 0; step < 4; ++step) {
    const int32_t next = static_cast<int32_t>(out.logits[0].argmax().item<int64_t>());
    sequence_tokens.push_back(next);
    kv::SequenceKv* seqs[] = {&sequence};
    out = transformer.decode(cache, seqs, std::span<const int32_t>(&next, 1), {0.0});
    EXPECT_EQ(out.exits[0].exit_layer, 1);
  }
  std::vector<int64_t> ids(sequence_tokens.begin(), sequence_tokens.end());
  const at::Tensor h1 = transformer.forward_exits(at::tensor(ids).unsqueeze(0))[0][0];
  const at::Tensor slots = cache.slots(sequence, 0, sequence.length);
  for (int64_t l = 1; l < 4; ++l) {
    const auto& layer = weights_.layers[l];
    for (int64_t t = static_cast<int64_t>(prompt.size()); t < sequence.length; ++t) {
      // Position t holds a decoded token's input, which exited at layer 1 on the step after.
      const at::Tensor x =
          h1[t] * at::rsqrt(h1[t].pow(2).mean() + config.rms_norm_eps) * layer.input_norm;
      const at::Tensor v = at::matmul(layer.v_proj, x).view({config.num_key_value_heads, -1});
      const at::Tensor cached_v = cache.values(l)[slots[t].item<int64_t>()];
      EXPECT_TRUE(at::allclose(cached_v, v, 1e-4, 1e-4)) << "layer " << l << " position " << t;
    }
  }
}

TEST(Confidence, MaxProbAndEntropyMetrics) {
  const at::Tensor peaked = at::tensor({100.0f, 0.0f, 0.0f, 0.0f}).unsqueeze(0);
  const at::Tensor uniform = at::zeros({1, 4});
  using model::ConfidenceMetric;
  using model::Transformer;
  EXPECT_NEAR(Transformer::confidence(peaked, ConfidenceMetric::kMaxProb).item<float>(), 1.0, 1e-5);
  EXPECT_NEAR(Transformer::confidence(uniform, ConfidenceMetric::kMaxProb).item<float>(), 0.25,
              1e-6);
  EXPECT_NEAR(Transformer::confidence(peaked, ConfidenceMetric::kEntropy).item<float>(), 1.0, 1e-4);
  EXPECT_NEAR(Transformer::confidence(uniform, ConfidenceMetric::kEntropy).item<float>(), 0.0,
              1e-5);
}

TEST(ExitPoints, ConfiguredExitsWithinLoadedDepthPlusTheDepth) {
  auto config = testing::tiny_config(6);
  config.exit_layers = {2, 4, 6};
  auto weights = model::init_weights(config, 1);
  weights.layers.resize(3);  // as a load with max_layers = 3 would leave it
  const model::Transformer transformer(config, weights);
  EXPECT_EQ(transformer.exit_points(), (std::vector<int32_t>{2, 3}));
}

TEST(PromptScores, PrefillScoresMatchTheTeacherForcedPerplexity) {
  const auto config = testing::tiny_config(4);
  const auto weights = testing::peaked_weights(config);
  const model::Transformer transformer(config, weights);
  const std::vector<int32_t> text{5, 9, 14, 3, 3, 27, 41, 8, 19, 22, 6, 30};
  std::vector<int32_t> prompt{static_cast<int32_t>(config.bos_token_id)};
  prompt.insert(prompt.end(), text.begin(), text.end());
  const model::ExitPolicy policy{0.5};

  kv::KvCache cache = engine::make_cache_for(transformer, 1, 32, 4);
  kv::SequenceKv sequence;
  ASSERT_TRUE(cache.reserve(sequence, static_cast<int64_t>(prompt.size())));
  const auto out = transformer.prefill(cache, sequence, prompt, policy, /*score_prompt=*/true);
  const model::ExitScores& scores = out.prompt_scores;
  const model::ExitPerplexity reference = model::evaluate_perplexity(transformer, text, policy);

  ASSERT_EQ(scores.tokens, static_cast<int64_t>(text.size()));
  EXPECT_EQ(scores.exit_histogram, reference.exit_histogram);
  for (size_t e = 0; e < reference.exit_layers.size(); ++e) {
    EXPECT_NEAR(scores.perplexity(e), reference.perplexity[e], 1e-3 * reference.perplexity[e]);
  }
  int64_t early = 0;
  for (size_t e = 0; e + 1 < scores.exit_histogram.size(); ++e) early += scores.exit_histogram[e];
  EXPECT_GT(early, 0) << "the policy should let some prompt positions exit early";

  // Chunked prefill, each chunk told the token after it: the scores add up to the same.
  kv::SequenceKv chunked;
  ASSERT_TRUE(cache.reserve(chunked, static_cast<int64_t>(prompt.size())));
  model::ExitScores sum;
  for (size_t begin = 0; begin < prompt.size(); begin += 5) {
    const size_t end = std::min(prompt.size(), begin + 5);
    const int32_t next = end < prompt.size() ? prompt[end] : -1;
    sum.add(transformer
                .prefill(cache, chunked, std::span(prompt).subspan(begin, end - begin), policy,
                         true, {}, next)
                .prompt_scores);
  }
  ASSERT_EQ(sum.tokens, scores.tokens);
  EXPECT_EQ(sum.exit_histogram, scores.exit_histogram);
  for (size_t e = 0; e < scores.policy_nll_sum.size(); ++e) {
    EXPECT_NEAR(sum.policy_nll_sum[e], scores.policy_nll_sum[e], 1e-3 * scores.policy_nll_sum[e]);
    EXPECT_NEAR(sum.nll_sum[e], scores.nll_sum[e], 1e-3 * scores.nll_sum[e]);
  }
}

TEST(PromptScores, PolicyLossCapsEachPositionAtItsFirstConfidentExit) {
  const auto config = testing::tiny_config(4);
  const auto weights = testing::peaked_weights(config);
  const model::Transformer transformer(config, weights);
  const std::vector<int64_t> text{1, 5, 9, 14, 3, 3, 27, 41, 8, 19, 22, 6, 30, 11, 17};
  const model::ExitPolicy policy{0.5};
  const at::Tensor tokens = at::tensor(text, at::kLong).unsqueeze(0);
  const std::vector<at::Tensor> hidden = transformer.forward_exits(tokens);
  const int64_t n = static_cast<int64_t>(text.size());
  std::vector<int64_t> targets(text.begin() + 1, text.end());
  targets.push_back(-1);
  std::vector<at::Tensor> flat;
  for (const at::Tensor& h : hidden) flat.push_back(h.view({n, -1}));
  const model::ExitScores scores =
      transformer.score_exits(flat, at::tensor(targets, at::kLong), policy);

  // Direct: per position, the loss and confidence at every exit point.
  const size_t exits = hidden.size();
  std::vector<std::vector<double>> nll(exits), conf(exits);
  for (size_t e = 0; e < exits; ++e) {
    const at::Tensor logits = transformer.exit_logits(flat[e]).to(at::kFloat);
    const at::Tensor log_probs = at::log_softmax(logits, -1);
    const at::Tensor c = model::Transformer::confidence(logits, policy.metric);
    for (int64_t p = 0; p + 1 < n; ++p) {
      nll[e].push_back(-log_probs[p][targets[p]].item<double>());
      conf[e].push_back(c[p].item<double>());
    }
  }
  ASSERT_EQ(scores.policy_nll_sum.size(), exits);
  bool differs = false;
  for (size_t cap = 0; cap < exits; ++cap) {
    double expected = 0.0;
    for (int64_t p = 0; p + 1 < n; ++p) {
      size_t leave = cap;
      for (size_t e = 0; e < cap; ++e) {
        if (conf[e][p] >= policy.threshold) {
          leave = e;
          break;
        }
      }
      expected += nll[leave][p];
    }
    EXPECT_NEAR(scores.policy_nll_sum[cap], expected, 1e-4 * std::abs(expected)) << cap;
    differs |= std::abs(scores.policy_nll_sum[cap] - scores.nll_sum[cap]) > 1e-3;
  }
  // The first exit point has no earlier one to leave at.
  EXPECT_NEAR(scores.policy_nll_sum[0], scores.nll_sum[0], 1e-4 * scores.nll_sum[0]);
  EXPECT_TRUE(differs) << "some positions should leave before the cap";
  EXPECT_NEAR(scores.policy_perplexity(exits - 1),
              std::exp(scores.policy_nll_sum[exits - 1] / static_cast<double>(n - 1)), 1e-9);

  model::ExitScores sum = scores;
  sum.add(scores);
  EXPECT_NEAR(sum.policy_nll_sum[1], 2 * scores.policy_nll_sum[1], 1e-9);
  EXPECT_NEAR(sum.policy_perplexity(1), scores.policy_perplexity(1), 1e-9);
}

TEST(GenerateBatch, AFailingRequestGivesBackEveryBlockTaken) {
  const auto config = testing::tiny_config(2);
  const auto weights = model::init_weights(config, 5);
  const model::Transformer transformer(config, weights);
  kv::KvCache cache = engine::make_cache_for(transformer, 3, 32, 4);
  std::vector<engine::GenerationRequest> requests(3);
  for (auto& request : requests) request.max_tokens = 8;
  requests[0].prompt = {1, 2, 3};
  requests[1].prompt = {1, 7};
  requests[2].prompt = {};  // invalid: rejected after the first two have their blocks
  try {
    engine::generate_batch(transformer, cache, requests, {});
    ADD_FAILURE() << "an empty prompt must be rejected";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("request 2: empty prompt"), std::string::npos);
  }
  EXPECT_EQ(cache.pool().used_blocks(), 0);
}

TEST(SeededSampling, SameTokensAloneOrInABatch) {
  const auto config = testing::tiny_config(4);
  const auto weights = testing::peaked_weights(config);
  const model::Transformer transformer(config, weights);
  std::vector<engine::GenerationRequest> requests;
  for (int i = 0; i < 3; ++i) {
    engine::GenerationRequest r;
    r.prompt = {1, 4 + i, 9, 2 * i + 3};
    r.max_tokens = 16;
    r.stop_at_eos = false;
    r.sampling.temperature = 0.9f;
    r.sampling.top_p = 0.95f;
    r.sampling.seed = 100 + static_cast<uint64_t>(i);
    requests.push_back(r);
  }
  const model::ExitPolicy policy{0.5};
  kv::KvCache cache = engine::make_cache_for(transformer, 3, 32, 4);
  const auto batched = engine::generate_batch(transformer, cache, requests, policy);
  for (size_t i = 0; i < requests.size(); ++i) {
    kv::KvCache alone_cache = engine::make_cache_for(transformer, 1, 32, 4);
    const auto alone =
        engine::generate_batch(transformer, alone_cache,
                               std::span<const engine::GenerationRequest>(&requests[i], 1), policy);
    std::vector<int32_t> a, b;
    for (const auto& t : batched[i].tokens) a.push_back(t.id);
    for (const auto& t : alone[0].tokens) b.push_back(t.id);
    EXPECT_EQ(a, b) << "request " << i;
  }
  std::vector<int32_t> first, second;
  for (const auto& t : batched[0].tokens) first.push_back(t.id);
  for (const auto& t : batched[1].tokens) second.push_back(t.id);
  EXPECT_NE(first, second) << "different seeds and prompts should not collapse to one output";
}

// score_prompts (the controller's same-prompt evidence) gives what prefilling each prompt with
// score_prompt gives, whether the prompts are batched (padded on the right) or not.
TEST(PromptScores, ScoringPromptsInBatchesEqualsPrefillingEachAlone) {
  const auto config = testing::tiny_config(4);
  const auto weights = testing::peaked_weights(config);
  const model::Transformer transformer(config, weights);
  const auto bos = static_cast<int32_t>(config.bos_token_id);
  const std::vector<std::vector<int32_t>> prompts = {
      {bos, 5, 9, 14, 3, 3, 27, 41, 8, 19, 22, 6, 30},
      {bos, 7},
      {bos, 12, 40, 40, 2, 17},
      {bos},  // nothing to predict
      {bos, 33, 21, 9, 48, 11, 5, 5, 5, 26},
  };
  const model::ExitPolicy policy{0.5};

  model::ExitScores prefilled;
  kv::KvCache cache = engine::make_cache_for(transformer, 8, 32, 4);
  for (const auto& prompt : prompts) {
    kv::SequenceKv sequence;
    ASSERT_TRUE(cache.reserve(sequence, static_cast<int64_t>(prompt.size())));
    prefilled.add(transformer.prefill(cache, sequence, prompt, policy, /*score_prompt=*/true)
                      .prompt_scores);
    cache.release(sequence);
  }
  for (const int64_t batch : {1, 2, 8}) {
    SCOPED_TRACE(batch);
    std::vector<model::ExitScores> per_batch;
    const model::ExitScores scored =
        model::score_prompts(transformer, prompts, policy, batch, &per_batch);
    // One entry per batch, in order, adding up to the sums (the prompt with nothing to
    // predict is an empty entry when it is a batch of its own).
    ASSERT_EQ(per_batch.size(), (prompts.size() + static_cast<size_t>(batch) - 1) /
                                    static_cast<size_t>(batch));
    model::ExitScores added;
    for (const auto& b : per_batch) added.add(b);
    EXPECT_EQ(added.tokens, scored.tokens);
    EXPECT_EQ(added.exit_histogram, scored.exit_histogram);
    if (batch == 1) {
      EXPECT_EQ(per_batch[0].tokens, 12);
      EXPECT_EQ(per_batch[3].tokens, 0);
    }
    ASSERT_EQ(scored.tokens, prefilled.tokens);
    ASSERT_EQ(scored.tokens, 12 + 1 + 5 + 9);
    EXPECT_EQ(scored.exit_histogram, prefilled.exit_histogram);
    for (size_t e = 0; e < prefilled.nll_sum.size(); ++e) {
      EXPECT_NEAR(scored.nll_sum[e], prefilled.nll_sum[e], 1e-3 * prefilled.nll_sum[e]);
      EXPECT_NEAR(scored.policy_nll_sum[e], prefilled.policy_nll_sum[e],
                  1e-3 * prefilled.policy_nll_sum[e]);
    }
  }
}

TEST(PromptScores, ScoringRefusesIdsOutsideTheVocabularyNamingThePosition) {
  const auto config = testing::tiny_config(2);
  const auto weights = testing::peaked_weights(config);
  const model::Transformer transformer(config, weights);
  const std::vector<std::vector<int32_t>> prompts = {{1, 4, 5}, {1, 6, 50}};
  testing::expect_error([&] { model::score_prompts(transformer, prompts, model::ExitPolicy{}); },
               ErrorCode::kInvalidArgument, {"prompt 1 position 2", "token id 50", "vocabulary of 50"});
}

// Streamed scoring (one layer resident at a time, the controller's off-path evidence) gives
// the sums of scoring the model loaded whole, and holds far less than the whole model.
TEST(PromptScores, StreamedLayerByLayerEqualsTheModelLoadedWhole) {
  const auto config = testing::tiny_config(4);
  const auto weights = testing::peaked_weights(config);
  const testing::ScratchDir dir("helios_streamed");
  model::save_model(dir.path(), config, weights);
  const model::LoadedModel loaded = model::load_model(dir.path());
  const model::Transformer transformer(loaded.config, loaded.weights);
  const auto bos = static_cast<int32_t>(config.bos_token_id);
  const std::vector<std::vector<int32_t>> prompts = {
      {bos, 5, 9, 14, 3, 3, 27, 41, 8, 19, 22, 6, 30}, {bos, 7}, {bos},
      {bos, 12, 40, 40, 2, 17}, {bos, 33, 21, 9, 48, 11, 5, 5, 5, 26}};
  const model::ExitPolicy policy{0.5};
  const model::ExitScores whole = model::score_prompts(transformer, prompts, policy, 2);
  const model::StreamedScores streamed =
      model::score_prompts_streamed(dir.path(), prompts, policy, c10::kFloat, c10::kCPU, 2);
  EXPECT_EQ(streamed.exit_points, transformer.exit_points());
  // Prompt by prompt (batch 1, as the controller scores its sample): the same scores as the
  // whole model's, one entry per prompt, the one with nothing to predict empty.
  std::vector<model::ExitScores> whole_each;
  model::score_prompts(transformer, prompts, policy, 1, &whole_each);
  const model::StreamedScores each =
      model::score_prompts_streamed(dir.path(), prompts, policy, c10::kFloat, c10::kCPU, 1);
  ASSERT_EQ(each.per_batch.size(), prompts.size());
  ASSERT_EQ(whole_each.size(), prompts.size());
  EXPECT_EQ(each.per_batch[2].tokens, 0);
  for (size_t p = 0; p < prompts.size(); ++p) {
    SCOPED_TRACE(p);
    EXPECT_EQ(each.per_batch[p].tokens, static_cast<int64_t>(prompts[p].size()) - 1);
    EXPECT_EQ(each.per_batch[p].exit_histogram, whole_each[p].exit_histogram);
    for (size_t e = 0; e < whole_each[p].policy_nll_sum.size(); ++e) {
      EXPECT_NEAR(each.per_batch[p].policy_nll_sum[e], whole_each[p].policy_nll_sum[e],
                  1e-4 * whole_each[p].policy_nll_sum[e] + 1e-6);
    }
  }
  ASSERT_EQ(streamed.scores.tokens, whole.tokens);
  EXPECT_EQ(streamed.scores.exit_histogram, whole.exit_histogram);
  ASSERT_EQ(streamed.scores.nll_sum.size(), whole.nll_sum.size());
  for (size_t e = 0; e < whole.nll_sum.size(); ++e) {
    EXPECT_NEAR(streamed.scores.nll_sum[e], whole.nll_sum[e], 1e-4 * whole.nll_sum[e]);
    EXPECT_NEAR(streamed.scores.policy_nll_sum[e], whole.policy_nll_sum[e],
                1e-4 * whole.policy_nll_sum[e]);
  }
  // Every tensor was read once; at most one layer beside the shared tensors was resident.
  EXPECT_EQ(streamed.bytes_read, loaded.bytes_read);
  int64_t layer_bytes = 0;
  for (const at::Tensor& t : loaded.weights.layers[0].tensors()) {
    layer_bytes += static_cast<int64_t>(t.nbytes());
  }
  EXPECT_EQ(streamed.peak_weight_bytes,
            loaded.weights.resident_bytes() - (config.num_hidden_layers - 1) * layer_bytes);
  EXPECT_GT(streamed.hidden_bytes, 0);
  testing::expect_error(
      [&] {
        model::score_prompts_streamed(dir.path() / "missing", prompts, policy, c10::kFloat,
                                      c10::kCPU);
      },
      ErrorCode::kNotFound, {"missing", "not found"});
}

// The streamed continuation (where generated tokens leave, for the controller's off-path
// rows): with early exit off it is plain greedy decoding; with every token confident at the
// first exit it never reads a deeper layer.
TEST(StreamedContinuation, GreedyWithoutEarlyExitAndShallowWithIt) {
  const auto config = testing::tiny_config(4);  // exit points 1 (configured) .. 4
  const auto weights = testing::peaked_weights(config);
  const testing::ScratchDir dir("helios_continuation");
  model::save_model(dir.path(), config, weights);
  const model::LoadedModel loaded = model::load_model(dir.path());
  const model::Transformer transformer(loaded.config, loaded.weights);
  const auto bos = static_cast<int32_t>(config.bos_token_id);
  const std::vector<std::vector<int32_t>> prompts = {{bos, 5, 9, 14, 3}, {bos, 12, 40}};

  const model::StreamedContinuation full = model::continue_streamed(
      dir.path(), prompts, model::ExitPolicy{2.0}, 6, 64, c10::kFloat, c10::kCPU);
  ASSERT_EQ(full.generated.size(), 2u);
  int64_t generated = 0;
  for (size_t p = 0; p < prompts.size(); ++p) {
    std::vector<int32_t> expected = plain_greedy(transformer, prompts[p], 6);
    const auto eos = std::find(expected.begin(), expected.end(), config.eos_token_id);
    if (eos != expected.end()) expected.erase(eos + 1, expected.end());
    EXPECT_EQ(full.generated[p], expected) << "prompt " << p;
    generated += static_cast<int64_t>(expected.size());
  }
  EXPECT_EQ(full.tokens, generated);
  ASSERT_EQ(full.exit_histogram.size(), transformer.exit_points().size());
  EXPECT_EQ(full.exit_histogram.back(), generated) << "no early exit: every token at the last";

  const model::StreamedContinuation shallow = model::continue_streamed(
      dir.path(), prompts, model::ExitPolicy{0.0}, 6, 64, c10::kFloat, c10::kCPU);
  EXPECT_EQ(shallow.exit_histogram.front(), shallow.tokens);
  EXPECT_LT(shallow.bytes_read, full.bytes_read) << "layers past the first exit are not read";
}

// A continuation per prompt: the tokens, each token's exit layer, tokens per exit point.
struct Continuation {
  std::vector<std::vector<int32_t>> generated, exits;
  std::vector<int64_t> histogram;
};

// The last tokens of each prompt that continue_streamed keeps.
std::vector<std::vector<int32_t>> kept_contexts(const model::ModelConfig& config,
                                               const std::vector<std::vector<int32_t>>& prompts,
                                               int64_t max_new_tokens, int64_t context) {
  const int64_t keep = std::min(context, config.max_position_embeddings - max_new_tokens);
  std::vector<std::vector<int32_t>> out;
  for (const auto& prompt : prompts) {
    const auto n = static_cast<int64_t>(prompt.size());
    out.emplace_back(prompt.begin() + std::max<int64_t>(0, n - keep), prompt.end());
  }
  return out;
}

// The continuation as continue_streamed computed it before it kept a cache, one prompt at a
// time on the model loaded whole: every step re-runs the whole sequence through the layers,
// leaves at the first confident exit point of its last position and appends that exit's
// greedy token; it ends at `eos` (-1: never) or after max_new_tokens.
Continuation cacheless_continuation(const model::Transformer& transformer,
                                    const std::vector<std::vector<int32_t>>& prompts,
                                    const model::ExitPolicy& policy, int64_t max_new_tokens,
                                    int64_t context, int64_t eos) {
  const std::vector<int32_t>& points = transformer.exit_points();
  Continuation out;
  out.histogram.assign(points.size(), 0);
  for (const auto& kept :
       kept_contexts(transformer.config(), prompts, max_new_tokens, context)) {
    std::vector<int64_t> sequence(kept.begin(), kept.end());
    std::vector<int32_t> generated, exits;
    for (int64_t step = 0; step < max_new_tokens; ++step) {
      const auto hidden = transformer.forward_exits(at::tensor(sequence).unsqueeze(0));
      for (size_t e = 0; e < points.size(); ++e) {
        const at::Tensor logits =
            transformer.exit_logits(hidden[e][0][-1]).to(at::kFloat).unsqueeze(0);
        const float confidence =
            model::Transformer::confidence(logits, policy.metric)[0].item<float>();
        if (e + 1 < points.size() && confidence < policy.threshold) continue;
        generated.push_back(static_cast<int32_t>(logits[0].argmax().item<int64_t>()));
        exits.push_back(points[e]);
        ++out.histogram[e];
        break;
      }
      sequence.push_back(generated.back());
      if (generated.back() == eos) break;
    }
    out.generated.push_back(std::move(generated));
    out.exits.push_back(std::move(exits));
  }
  return out;
}

// The engine's greedy generations of the prompts, in one batch: tokens and exits per prompt.
Continuation engine_continuation(const model::Transformer& transformer,
                                 const std::vector<std::vector<int32_t>>& prompts,
                                 const model::ExitPolicy& policy, int64_t max_new_tokens,
                                 bool stop_at_eos) {
  kv::KvCache cache = engine::make_cache_for(transformer, static_cast<int64_t>(prompts.size()),
                                             transformer.config().max_position_embeddings, 4);
  std::vector<engine::GenerationRequest> requests = requests_of(prompts, max_new_tokens);
  for (auto& request : requests) request.stop_at_eos = stop_at_eos;
  Continuation out;
  out.histogram.assign(transformer.exit_points().size(), 0);
  for (const auto& result : engine::generate_batch(transformer, cache, requests, policy)) {
    std::vector<int32_t> generated, exits;
    for (const auto& token : result.tokens) {
      generated.push_back(token.id);
      exits.push_back(token.exit.exit_layer);
      const auto& points = transformer.exit_points();
      ++out.histogram[std::find(points.begin(), points.end(), token.exit.exit_layer) -
                      points.begin()];
    }
    out.generated.push_back(std::move(generated));
    out.exits.push_back(std::move(exits));
  }
  return out;
}

// A token that ends one of `generations` early (first generated at an index in [1, size - 2])
// while another generation never produces it: as EOS, rows end at different steps. -1: none.
int32_t eos_ending_one_early(const std::vector<std::vector<int32_t>>& generations) {
  for (size_t g = 0; g < generations.size(); ++g) {
    const auto& tokens = generations[g];
    for (size_t i = 1; i + 1 < tokens.size(); ++i) {
      if (std::find(tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(i), tokens[i]) !=
          tokens.begin() + static_cast<std::ptrdiff_t>(i)) {
        continue;
      }
      for (size_t o = 0; o < generations.size(); ++o) {
        const auto& other = generations[o];
        if (o != g && std::find(other.begin(), other.end(), tokens[i]) == other.end()) {
          return tokens[i];
        }
      }
    }
  }
  return -1;
}

void expect_same_continuation(const model::StreamedContinuation& got, const Continuation& want) {
  ASSERT_EQ(got.generated.size(), want.generated.size());
  int64_t tokens = 0;
  for (size_t p = 0; p < want.generated.size(); ++p) {
    EXPECT_EQ(got.generated[p], want.generated[p]) << "prompt " << p;
    EXPECT_EQ(got.exit_layers[p], want.exits[p]) << "prompt " << p;
    tokens += static_cast<int64_t>(want.generated[p].size());
  }
  EXPECT_EQ(got.exit_histogram, want.histogram);
  EXPECT_EQ(got.tokens, tokens);
}

// Rows of 2 to 14 tokens in one right-padded batch, one ending at EOS before the others, with
// contexts whole and cut to their last 6 tokens.
const std::vector<std::vector<int32_t>> kContinuedPrompts = {
    {1, 7},
    {1, 5, 9, 14, 3},
    {1, 33, 21, 9, 48, 11, 5, 26, 17},
    {1, 12, 40, 40, 6, 17, 30, 22, 19, 8, 41, 27, 3, 44}};

// With early exit off, the cached continuation is the cache-less one (plain greedy decoding).
TEST(StreamedContinuation, CachedEqualsTheCachelessAlgorithmWithoutEarlyExit) {
  auto config = testing::tiny_config(4);
  const auto weights = testing::peaked_weights(config);
  const model::Transformer transformer(config, weights);
  const model::ExitPolicy policy{2.0};
  constexpr int64_t kTokens = 8;
  for (const int64_t context : {int64_t{64}, int64_t{6}}) {
    SCOPED_TRACE(context);
    config.eos_token_id = eos_ending_one_early(
        cacheless_continuation(transformer, kContinuedPrompts, policy, kTokens, context, -1)
            .generated);
    ASSERT_GE(config.eos_token_id, 0) << "no token ends one row early";
    const testing::ScratchDir dir("helios_continuation_cached");
    model::save_model(dir.path(), config, weights);
    const Continuation want = cacheless_continuation(transformer, kContinuedPrompts, policy,
                                                     kTokens, context, config.eos_token_id);
    size_t ended = 0, whole = 0;
    for (const auto& generated : want.generated) {
      ended += generated.size() < static_cast<size_t>(kTokens) ? 1 : 0;
      whole += generated.size() == static_cast<size_t>(kTokens) ? 1 : 0;
    }
    EXPECT_GE(ended, 1u);
    EXPECT_GE(whole, 1u);
    const model::StreamedContinuation got = model::continue_streamed(
        dir.path(), kContinuedPrompts, policy, kTokens, context, c10::kFloat, c10::kCPU);
    expect_same_continuation(got, want);
    if (context == 64) {
      for (size_t p = 0; p < kContinuedPrompts.size(); ++p) {
        std::vector<int32_t> greedy = plain_greedy(transformer, kContinuedPrompts[p], kTokens);
        greedy.resize(got.generated[p].size());
        EXPECT_EQ(got.generated[p], greedy) << "prompt " << p;
      }
    }
    // Every layer was read, and no token left early, so the cache holds every layer's keys and
    // values and the contexts' hidden states, within the bound the controller can reserve.
    const auto rows = static_cast<int64_t>(kContinuedPrompts.size());
    const int64_t width = std::min<int64_t>(context, 14);
    const int64_t capacity = width + kTokens - 1;
    EXPECT_EQ(got.cache_bytes,
              4 * rows *
                  (width * config.hidden_size + 2 * config.num_hidden_layers * capacity *
                                                    config.num_key_value_heads *
                                                    config.head_dim()));
    EXPECT_LE(got.cache_bytes,
              model::continuation_cache_bytes(config, rows, kTokens, context, 4));
  }
}

// With early exit on, the continuation decodes as the serving engine does (the keys/values of
// the layers a token skipped projected from its exit state): the same tokens and exits as the
// engine generating the same contexts, and unlike the cache-less algorithm (which recomputed
// every earlier token at full depth) for some threshold.
TEST(StreamedContinuation, EarlyExitDecodesAsTheEngine) {
  auto config = testing::tiny_config(4);
  const auto weights = testing::peaked_weights(config);
  const model::Transformer transformer(config, weights);
  constexpr int64_t kTokens = 8;
  std::set<int32_t> layers_seen;
  bool differs_from_cacheless = false;
  for (const int64_t context : {int64_t{64}, int64_t{6}}) {
    const auto contexts = kept_contexts(config, kContinuedPrompts, kTokens, context);
    for (const double threshold : {0.0, 0.3, 0.5, 0.7}) {
      SCOPED_TRACE(::testing::Message() << "context " << context << " threshold " << threshold);
      const model::ExitPolicy policy{threshold};
      config.eos_token_id = eos_ending_one_early(
          engine_continuation(transformer, contexts, policy, kTokens, false).generated);
      ASSERT_GE(config.eos_token_id, 0) << "no token ends one row early";
      const testing::ScratchDir dir("helios_continuation_engine");
      model::save_model(dir.path(), config, weights);
      const Continuation want = engine_continuation(transformer, contexts, policy, kTokens, true);
      const model::StreamedContinuation got = model::continue_streamed(
          dir.path(), kContinuedPrompts, policy, kTokens, context, c10::kFloat, c10::kCPU);
      expect_same_continuation(got, want);
      for (const auto& exits : got.exit_layers) layers_seen.insert(exits.begin(), exits.end());
      EXPECT_LE(got.cache_bytes,
                model::continuation_cache_bytes(
                    config, static_cast<int64_t>(kContinuedPrompts.size()), kTokens, context, 4));
      const Continuation cacheless = cacheless_continuation(
          transformer, kContinuedPrompts, policy, kTokens, context, config.eos_token_id);
      differs_from_cacheless = differs_from_cacheless || cacheless.generated != want.generated ||
                               cacheless.exits != want.exits;
    }
  }
  EXPECT_GE(layers_seen.size(), 3u) << "the test should exercise mixed exit layers";
  EXPECT_TRUE(differs_from_cacheless) << "the skipped layers' keys/values should matter";
}

}  // namespace
}  // namespace helios
