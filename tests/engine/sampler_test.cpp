#include "helios/engine/sampler.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "helios/common/error.h"

namespace helios::engine {
namespace {

at::Tensor logits_of(const std::vector<float>& values) {
  return at::tensor(at::ArrayRef<float>(values), at::kFloat);
}

SamplingParams params_of(float temperature, float top_p = 1.0f, int32_t top_k = 0,
                         uint64_t seed = 0) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_p = top_p;
  p.top_k = top_k;
  p.seed = seed;
  return p;
}

std::vector<int32_t> draw(const SamplingParams& params, const at::Tensor& logits, int n) {
  Sampler sampler(params);
  std::vector<int32_t> out;
  out.reserve(n);
  for (int i = 0; i < n; ++i) out.push_back(sampler.sample(logits));
  return out;
}

std::vector<double> frequencies(const std::vector<int32_t>& tokens, size_t vocab) {
  std::vector<double> freq(vocab, 0.0);
  for (int32_t t : tokens) freq.at(static_cast<size_t>(t)) += 1.0;
  for (double& f : freq) f /= static_cast<double>(tokens.size());
  return freq;
}

// softmax(logits / T) restricted to `keep` (all tokens when empty), renormalized.
std::vector<double> expected_probs(const std::vector<float>& logits, double temperature,
                                   const std::vector<int32_t>& keep = {}) {
  std::vector<double> p(logits.size(), 0.0);
  double total = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) {
    bool kept = keep.empty();
    for (int32_t k : keep) kept = kept || static_cast<size_t>(k) == i;
    if (!kept) continue;
    p[i] = std::exp(logits[i] / temperature);
    total += p[i];
  }
  for (double& v : p) v /= total;
  return p;
}

// A brute-force reference for the cut distribution: rank every token (logit desc, id asc),
// keep the top k, then the shortest prefix reaching top_p of the kept mass, renormalize.
std::vector<double> reference_probs(const std::vector<float>& logits, float temperature,
                                    int32_t top_k, float top_p) {
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  size_t kept = order.size();
  if (top_k > 0) kept = std::min(kept, static_cast<size_t>(top_k));
  const double max_logit = logits[order[0]];
  std::vector<double> w(logits.size(), 0.0);
  double total = 0.0;
  for (size_t r = 0; r < kept; ++r)
    total += w[order[r]] = std::exp((logits[order[r]] - max_logit) / temperature);
  double mass = 0.0;
  size_t nucleus = 0;
  while (nucleus < kept && mass < top_p * total) mass += w[order[nucleus++]];
  std::vector<double> p(logits.size(), 0.0);
  for (size_t r = 0; r < nucleus; ++r) p[order[r]] = w[order[r]] / mass;
  return p;
}

// Logits from a fixed generator: normal values, optionally rounded to create many ties; scale
// 0 makes every logit equal.
std::vector<float> random_logits(size_t vocab, float scale, bool ties, uint32_t seed) {
  std::vector<float> logits(vocab, 0.5f);
  if (scale == 0.0f) return logits;
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  for (float& v : logits) v = ties ? std::round(normal(gen)) : normal(gen);
  return logits;
}

// Expects validate() to throw kInvalidArgument with a message that names `field`.
void expect_invalid(const SamplingParams& params, const std::string& field) {
  try {
    params.validate();
    FAIL() << "expected validate() to reject " << field;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
  }
}

const std::vector<float> kLogits = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 0.0f};

TEST(SamplingParamsTest, DefaultsAreValidAndGreedy) {
  SamplingParams p;
  EXPECT_NO_THROW(p.validate());
  EXPECT_TRUE(p.greedy());
}

TEST(SamplingParamsTest, ValidateNamesTheField) {
  expect_invalid(params_of(-1.0f), "temperature");
  expect_invalid(params_of(NAN), "temperature");
  expect_invalid(params_of(INFINITY), "temperature");
  expect_invalid(params_of(1.0f, 0.0f), "top_p");
  expect_invalid(params_of(1.0f, 1.5f), "top_p");
  expect_invalid(params_of(1.0f, NAN), "top_p");
  expect_invalid(params_of(1.0f, 1.0f, -3), "top_k");
  EXPECT_NO_THROW(params_of(0.7f, 1.0f, 40).validate());
}

TEST(SamplingParamsTest, ValidateMessageShowsTheValue) {
  try {
    params_of(-1.0f).validate();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("temperature must be >= 0"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("-1"), std::string::npos) << e.what();
  }
}

TEST(SamplerTest, ConstructorRejectsInvalidParams) {
  EXPECT_THROW(Sampler(params_of(1.0f, 2.0f)), Error);
}

TEST(SamplerTest, GreedyIsArgmax) {
  Sampler sampler(params_of(0.0f));
  EXPECT_EQ(sampler.sample(logits_of(kLogits)), 4);
  EXPECT_EQ(sampler.sample(logits_of({-5.0f, -1.0f, -3.0f})), 1);
}

TEST(SamplerTest, GreedyTieGoesToLowestId) {
  Sampler sampler(params_of(0.0f));
  EXPECT_EQ(sampler.sample(logits_of({0.0f, 7.0f, 1.0f, 7.0f, 7.0f})), 1);
}

TEST(SamplerTest, GreedyIgnoresMaskedTokens) {
  Sampler sampler(params_of(0.0f));
  EXPECT_EQ(sampler.sample(logits_of({-INFINITY, -2.0f, -INFINITY})), 1);
}

TEST(SamplerTest, AcceptsNonContiguousAndOtherDtypes) {
  Sampler sampler(params_of(0.0f));
  const at::Tensor strided = logits_of({0.0f, 9.0f, 5.0f, 1.0f, 2.0f, 8.0f}).slice(0, 0, 6, 2);
  EXPECT_EQ(sampler.sample(strided), 1);  // [0, 5, 2]
  EXPECT_EQ(sampler.sample(logits_of(kLogits).to(at::kDouble)), 4);
}

TEST(SamplerTest, RejectsBadLogits) {
  Sampler sampler(params_of(1.0f));
  EXPECT_THROW(sampler.sample(at::zeros({2, 3})), Error);
  EXPECT_THROW(sampler.sample(at::zeros({0})), Error);
  EXPECT_THROW(sampler.sample(logits_of({0.0f, NAN})), Error);
  EXPECT_THROW(sampler.sample(logits_of({0.0f, INFINITY})), Error);
  EXPECT_THROW(sampler.sample(logits_of({-INFINITY, -INFINITY})), Error);
}

TEST(SamplerTest, SameSeedReproduces) {
  const at::Tensor logits = at::zeros({1000});
  const auto a = draw(params_of(1.0f, 1.0f, 0, 42), logits, 64);
  const auto b = draw(params_of(1.0f, 1.0f, 0, 42), logits, 64);
  EXPECT_EQ(a, b);
  const auto c = draw(params_of(0.8f, 0.9f, 50, 42), logits, 64);
  const auto d = draw(params_of(0.8f, 0.9f, 50, 42), logits, 64);
  EXPECT_EQ(c, d);
}

TEST(SamplerTest, DifferentSeedsDiffer) {
  const at::Tensor logits = at::zeros({1000});
  EXPECT_NE(draw(params_of(1.0f, 1.0f, 0, 1), logits, 64),
            draw(params_of(1.0f, 1.0f, 0, 2), logits, 64));
}

TEST(SamplerTest, ReproducesAcrossAChangingLogitsSequence) {
  // A decode loop feeds a different row each step; the draws depend only on seed and rows.
  auto run = [](uint64_t seed) {
    Sampler sampler(params_of(0.9f, 0.95f, 0, seed));
    std::vector<int32_t> out;
    for (int step = 0; step < 32; ++step) {
      out.push_back(sampler.sample(at::sin(at::arange(500, at::kFloat) * (step + 1)) * 3.0));
    }
    return out;
  };
  EXPECT_EQ(run(7), run(7));
}

TEST(SamplerTest, TopKOneIsGreedyAtAnyTemperature) {
  const at::Tensor logits = logits_of({0.0f, 7.0f, 1.0f, 7.0f, 6.9f});
  for (float t : {0.1f, 1.0f, 10.0f, 1000.0f}) {
    for (int32_t token : draw(params_of(t, 1.0f, 1, 3), logits, 200)) {
      ASSERT_EQ(token, 1) << "temperature " << t;
    }
  }
}

TEST(SamplerTest, TinyTopPIsGreedy) {
  const at::Tensor logits = logits_of(kLogits);
  for (float t : {0.5f, 1.0f, 100.0f}) {
    for (int32_t token : draw(params_of(t, 1e-6f, 0, 5), logits, 200)) {
      ASSERT_EQ(token, 4) << "temperature " << t;
    }
  }
}

TEST(SamplerTest, TopKNeverSamplesOutsideTheTopK) {
  // 200 tokens with distinct logits; the top 10 are ids 190..199. A high temperature makes the
  // untruncated distribution nearly uniform, so a leak past the cut would show quickly.
  const at::Tensor logits = at::arange(200, at::kFloat) * 0.01;
  const auto tokens = draw(params_of(5.0f, 1.0f, 10, 11), logits, 5000);
  std::vector<int> seen(200, 0);
  for (int32_t t : tokens) {
    ASSERT_GE(t, 190);
    ++seen[static_cast<size_t>(t)];
  }
  for (int id = 190; id < 200; ++id) EXPECT_GT(seen[static_cast<size_t>(id)], 0) << id;
}

TEST(SamplerTest, FrequenciesMatchSoftmax) {
  constexpr int kDraws = 20000;
  for (float t : {1.0f, 0.7f, 2.0f}) {
    const auto freq =
        frequencies(draw(params_of(t, 1.0f, 0, 123), logits_of(kLogits), kDraws), kLogits.size());
    const auto want = expected_probs(kLogits, t);
    for (size_t i = 0; i < kLogits.size(); ++i) {
      EXPECT_NEAR(freq[i], want[i], 0.02) << "token " << i << " temperature " << t;
    }
  }
}

TEST(SamplerTest, TopKFrequenciesMatchRenormalizedSoftmax) {
  // top_k = 3 keeps ids 4, 1, 0 (logits 3, 2, 1).
  const auto freq =
      frequencies(draw(params_of(1.0f, 1.0f, 3, 9), logits_of(kLogits), 20000), kLogits.size());
  const auto want = expected_probs(kLogits, 1.0, {4, 1, 0});
  for (size_t i = 0; i < kLogits.size(); ++i) EXPECT_NEAR(freq[i], want[i], 0.02) << i;
}

TEST(SamplerTest, TopPKeepsTheSmallestNucleus) {
  // softmax(kLogits): id 4 ~0.61, id 1 ~0.22, id 0 ~0.08, ... top_p = 0.8 needs {4, 1}
  // (mass ~0.83), so the draw is over those two, renormalized.
  const auto freq =
      frequencies(draw(params_of(1.0f, 0.8f, 0, 17), logits_of(kLogits), 20000), kLogits.size());
  const auto want = expected_probs(kLogits, 1.0, {4, 1});
  for (size_t i = 0; i < kLogits.size(); ++i) EXPECT_NEAR(freq[i], want[i], 0.02) << i;
}

TEST(SamplerTest, TopPAppliesAfterTopK) {
  // After top_k = 2 the kept distribution is {4: ~0.73, 1: ~0.27}; top_p = 0.7 of that mass is
  // reached by id 4 alone.
  for (int32_t token : draw(params_of(1.0f, 0.7f, 2, 21), logits_of(kLogits), 500)) {
    ASSERT_EQ(token, 4);
  }
}

TEST(SamplerTest, LowerTemperatureSharpens) {
  const at::Tensor logits = logits_of(kLogits);
  const auto freq_cold = frequencies(draw(params_of(0.3f, 1.0f, 0, 4), logits, 5000), 6);
  const auto freq_warm = frequencies(draw(params_of(1.0f, 1.0f, 0, 4), logits, 5000), 6);
  const auto freq_hot = frequencies(draw(params_of(5.0f, 1.0f, 0, 4), logits, 5000), 6);
  EXPECT_GT(freq_cold[4], freq_warm[4]);
  EXPECT_GT(freq_warm[4], freq_hot[4]);
  EXPECT_GT(freq_cold[4], 0.95);
}

TEST(SamplerTest, NeverSamplesMaskedTokens) {
  const at::Tensor logits = logits_of({0.0f, -INFINITY, 0.0f, -INFINITY});
  for (int32_t token : draw(params_of(1.0f, 1.0f, 0, 8), logits, 2000)) {
    ASSERT_TRUE(token == 0 || token == 2) << token;
  }
  for (int32_t token : draw(params_of(1.0f, 1.0f, 3, 8), logits, 2000)) {
    ASSERT_TRUE(token == 0 || token == 2) << token;
  }
}

struct PathCase {
  const char* name;
  size_t vocab;
  float temperature;
  int32_t top_k;
  float top_p;
  float scale;  // logit standard deviation
  bool ties;    // round logits to integers, so cuts fall inside runs of equal logits
};

// The sampler picks among several strategies by k and vocabulary size (heap or nth_element
// top-k; sorted candidates or a dense array; sort or bucketed quickselect for the nucleus).
// Each must give the reference distribution: nothing outside it, frequencies close to it.
TEST(SamplerTest, EveryStrategyMatchesTheReference) {
  const PathCase cases[] = {
      {"heap top-k, sorted draw", 2000, 1.0f, 10, 1.0f, 3.0f, false},
      {"heap top-k + small nucleus", 2000, 1.0f, 10, 0.83f, 3.0f, false},
      {"heap top-k + quickselect nucleus", 2000, 1.0f, 100, 0.537f, 1.0f, true},
      {"heap top-k, dense draw", 2000, 2.0f, 400, 1.0f, 3.0f, false},
      {"nth_element top-k, dense draw", 2000, 1.0f, 1100, 1.0f, 3.0f, false},
      {"nth_element top-k + dense nucleus", 2000, 2.0f, 1100, 0.61f, 3.0f, false},
      {"dense nucleus", 2000, 1.0f, 0, 0.71f, 3.0f, false},
      {"dense nucleus, wide and flat", 2000, 8.0f, 0, 0.9f, 3.0f, false},
      {"dense nucleus over ties", 2000, 1.0f, 0, 0.437f, 1.0f, true},
      {"dense nucleus, all tied", 2000, 1.0f, 0, 0.3013f, 0.0f, true},
  };
  constexpr int kDraws = 10000;
  uint32_t seed = 1;
  for (const PathCase& pc : cases) {
    SCOPED_TRACE(pc.name);
    std::vector<float> values = random_logits(pc.vocab, pc.scale, pc.ties, seed++);
    const auto want = reference_probs(values, pc.temperature, pc.top_k, pc.top_p);
    const auto freq = frequencies(
        draw(params_of(pc.temperature, pc.top_p, pc.top_k, seed), logits_of(values), kDraws),
        pc.vocab);
    double distance = 0.0;  // total variation
    for (size_t i = 0; i < pc.vocab; ++i) {
      if (want[i] == 0.0) ASSERT_EQ(freq[i], 0.0) << "token " << i << " is outside the cut";
      // Expected 20+ times: never drawing it means the cut dropped it (P(miss) ~ e^-20).
      if (want[i] * kDraws >= 20.0) ASSERT_GT(freq[i], 0.0) << "token " << i << " was cut";
      distance += 0.5 * std::abs(freq[i] - want[i]);
    }
    // Sampling noise alone puts the distance near 0.4 * sqrt(support / draws); a wrong cut or
    // weighting moves far more mass than the margin above that.
    size_t support = 0;
    for (double p : want) support += p > 0.0;
    EXPECT_LT(distance, 0.02 + 0.6 * std::sqrt(static_cast<double>(support) / kDraws))
        << "support " << support;
  }
}

TEST(SamplerTest, LargeVocabNucleusStaysInRange) {
  // 128k vocab, peaked: the nucleus search must widen past its first sort width.
  const int64_t vocab = 128000;
  const at::Tensor logits = at::randn({vocab}, at::TensorOptions().dtype(at::kFloat)) * 2.0;
  Sampler sampler(params_of(1.0f, 0.95f, 0, 99));
  for (int i = 0; i < 20; ++i) {
    const int32_t token = sampler.sample(logits);
    ASSERT_GE(token, 0);
    ASSERT_LT(token, vocab);
  }
}

}  // namespace
}  // namespace helios::engine
