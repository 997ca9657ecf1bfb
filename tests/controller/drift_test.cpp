#include "helios/controller/drift.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <deque>

namespace helios::controller {
namespace {

// A row at one exit point (layer 4) whose prompts have these per-token NLLs (20 tokens each);
// `per_prompt` false leaves only the sums (a row from live requests).
ProfileRow row(const std::vector<double>& nll_per_token, bool per_prompt = true) {
  ProfileRow r;
  r.model = "served";
  r.profiled_layers = 4;
  r.exit_points = {4};
  double sum = 0;
  for (const double x : nll_per_token) {
    model::ExitScores s;
    s.tokens = 20;
    s.nll_sum = {20 * x};
    s.policy_nll_sum = {20 * x};
    s.exit_histogram = {0};
    sum += 20 * x;
    if (per_prompt) r.prompt_evidence.push_back(s);
  }
  r.prompt_nll_sum = {sum};
  r.prompt_policy_nll_sum = {sum};
  r.prompt_tokens = 20 * static_cast<int64_t>(nll_per_token.size());
  return r;
}

std::deque<std::pair<double, int64_t>> window(const std::vector<double>& nll_per_token) {
  std::deque<std::pair<double, int64_t>> w;
  for (const double x : nll_per_token) w.emplace_back(20 * x, 20);
  return w;
}

// Per-prompt NLLs spread around log(center) by +-0.15 nats.
std::vector<double> around(double center, int n) {
  std::vector<double> xs;
  for (int i = 0; i < n; ++i) xs.push_back(std::log(center) + 0.15 * ((i % 3) - 1));
  return xs;
}

TEST(PerplexityDrift, ADoubledPerplexityDriftsWithOrWithoutPerPromptEvidence) {
  for (const bool per_prompt : {true, false}) {
    SCOPED_TRACE(per_prompt);
    const DriftCheck c = perplexity_drift(window(around(12, 8)), row(around(5, 16), per_prompt), 4, 6);
    EXPECT_TRUE(c.drifted);
    EXPECT_NEAR(c.expected, 5 * std::exp(0.0), 0.3);
    EXPECT_NE(c.reason.find("profiled"), std::string::npos) << c.reason;
  }
}

TEST(PerplexityDrift, NothingDriftsWithinTheBound) {
  const DriftCheck c = perplexity_drift(window(around(12, 8)), row(around(5, 16)), 4, 20);
  EXPECT_FALSE(c.drifted);
  EXPECT_GT(c.live, 10);
}

// The return to an easier domain on a row refreshed on a harder one: 15.9 live against 9.3
// profiled never doubles, yet the same per-prompt spread says it moved.
TEST(PerplexityDrift, AModerateButCertainRiseDriftsOnlyWithPerPromptEvidence) {
  const auto live = window(around(15.9, 8));
  const DriftCheck paired = perplexity_drift(live, row(around(9.3, 16)), 4, 9.8);
  EXPECT_TRUE(paired.drifted) << paired.t;
  EXPECT_GE(paired.t, kDriftTStatistic);
  EXPECT_NE(paired.reason.find("Welch t"), std::string::npos) << paired.reason;
  const DriftCheck sums_only = perplexity_drift(live, row(around(9.3, 16), false), 4, 9.8);
  EXPECT_FALSE(sums_only.drifted);
}

TEST(PerplexityDrift, ASmallOrUncertainRiseDoesNotDrift) {
  // x1.1: certain but below kDriftMinRatio.
  EXPECT_FALSE(perplexity_drift(window(around(10.2, 8)), row(around(9.3, 16)), 4, 9.8).drifted);
  // x1.5 on average, but the live prompts are all over the place.
  std::vector<double> wild;
  for (int i = 0; i < 8; ++i) wild.push_back(std::log(14.0) + (i % 2 == 0 ? 1.5 : -1.5));
  const DriftCheck c = perplexity_drift(window(wild), row(around(9.3, 16)), 4, 9.8);
  EXPECT_FALSE(c.drifted) << c.t;
  EXPECT_LT(c.t, kDriftTStatistic);
  // Too few prompts on either side for a comparison.
  EXPECT_FALSE(perplexity_drift(window(around(15.9, 3)), row(around(9.3, 16)), 4, 9.8).drifted);
  EXPECT_FALSE(perplexity_drift(window(around(15.9, 8)), row(around(9.3, 3)), 4, 9.8).drifted);
}

// Drift passes that keep the served model widen the perplexity window (x2 each, at most
// x2^kMaxDriftBackoff); a pass that moves the model resets it; other passes that keep it leave
// it as it is.
TEST(DriftBackoff, GrowsOnFalseAlarmsAndResetsOnAMove) {
  int backoff = 0;
  for (int pass = 1; pass <= kMaxDriftBackoff + 2; ++pass) {
    backoff = next_drift_backoff(backoff, /*drift_pass=*/true, /*moved=*/false);
    EXPECT_EQ(backoff, std::min(pass, kMaxDriftBackoff));
  }
  EXPECT_EQ(next_drift_backoff(backoff, /*drift_pass=*/false, /*moved=*/false), backoff);
  EXPECT_EQ(next_drift_backoff(backoff, /*drift_pass=*/false, /*moved=*/true), 0);
  EXPECT_EQ(next_drift_backoff(backoff, /*drift_pass=*/true, /*moved=*/true), 0);
}

TEST(ResidentShareDrift, AMemberTheTrafficLeftEndsTheSetOnceAWindowIsFull) {
  const std::vector<std::string> names{"prose", "code"};
  // Not a full window yet.
  EXPECT_FALSE(resident_share_drift({20, 0}, names, 32, 0.1));
  // A full window, both members used.
  EXPECT_FALSE(resident_share_drift({20, 12}, names, 32, 0.1));
  // The code traffic is gone: 2 of 32 is 6%.
  const std::optional<std::string> left = resident_share_drift({30, 2}, names, 32, 0.1);
  ASSERT_TRUE(left.has_value());
  EXPECT_NE(left->find("resident member code"), std::string::npos) << *left;
  EXPECT_NE(left->find("prose 94%, code 6%"), std::string::npos) << *left;
  EXPECT_FALSE(resident_share_drift({30, 2}, names, 32, 0.0));
}

}  // namespace
}  // namespace helios::controller
