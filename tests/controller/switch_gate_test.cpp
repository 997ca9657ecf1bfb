#include "helios/controller/switch_gate.h"

#include "controller/synthetic_rows.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

namespace helios::controller {
namespace {

using synthetic::prompt;
using synthetic::row;

Option option(const std::string& model, double tokens_per_second, double perplexity,
              double bound = 100.0, bool feasible = true) {
  Option o;
  o.model = model;
  o.depth = 4;
  o.tokens_per_second = tokens_per_second;
  o.perplexity = perplexity;
  o.perplexity_bound = bound;
  o.feasible = feasible;
  o.infeasible_reason = feasible ? "" : "max_perplexity_increase: predicted 9 > bound 8";
  o.score = tokens_per_second;
  return o;
}

SloConfig slo(double margin = 0.05) {
  SloConfig s;
  s.objective = Objective::kThroughput;
  s.switch_margin = margin;
  return s;
}

SwitchCost no_cost() { return SwitchCost{.recompute_tokens = 0, .seconds = 0, .horizon_seconds = 60}; }

// Sixteen prompts of even difficulty: every bootstrap replicate sees the same figures.
std::vector<model::ExitScores> even_prompts(double nll4, int64_t early = 10) {
  return std::vector<model::ExitScores>(16, prompt(20, early, nll4 + 0.5, nll4));
}

TEST(SwitchGate, UnpairedRowsUseThePointGainAgainstTheMargin) {
  const ProfileRow a = row("a", {}, 0), b = row("b", {}, 0);
  const GateResult clear = gate_switch(a, option("a", 100, 5), b, option("b", 120, 5), slo(), no_cost());
  EXPECT_TRUE(clear.pass) << clear.reason;
  EXPECT_EQ(clear.prompts, 0);
  EXPECT_DOUBLE_EQ(clear.gain.point, 0.2);
  EXPECT_DOUBLE_EQ(clear.gain.low, 0.2);
  EXPECT_FALSE(clear.perplexity_ratio.has_value());

  const GateResult marginal = gate_switch(a, option("a", 100, 5), b, option("b", 103, 5), slo(), no_cost());
  EXPECT_FALSE(marginal.pass) << marginal.reason;
  EXPECT_NE(marginal.reason.find("held"), std::string::npos) << marginal.reason;
}

TEST(SwitchGate, TheRecomputeCostRaisesTheGainNeeded) {
  const ProfileRow a = row("a", {}, 0), b = row("b", {}, 0);
  // 20% better, but recomputing the batch takes 12 s of a 60 s horizon: 5% + 20% needed.
  const SwitchCost cost{.recompute_tokens = 1200, .seconds = 12, .horizon_seconds = 60};
  const GateResult g = gate_switch(a, option("a", 100, 5), b, option("b", 120, 5), slo(), cost);
  EXPECT_FALSE(g.pass) << g.reason;
  EXPECT_NEAR(g.required_gain, 0.25, 1e-12);
  // The same switch with a horizon long enough to earn the recompute back passes.
  const GateResult later = gate_switch(a, option("a", 100, 5), b, option("b", 120, 5), slo(),
                                       SwitchCost{.recompute_tokens = 1200, .seconds = 12,
                                                  .horizon_seconds = 600});
  EXPECT_TRUE(later.pass) << later.reason;
  // Nothing re-profiles periodically: the horizon is unbounded, the cost share nil.
  const GateResult never = gate_switch(
      a, option("a", 100, 5), b, option("b", 120, 5), slo(),
      SwitchCost{.recompute_tokens = 1200, .seconds = 12,
                 .horizon_seconds = std::numeric_limits<double>::infinity()});
  EXPECT_TRUE(never.pass) << never.reason;
  EXPECT_TRUE(never.to_json()["horizon_seconds"].is_null());
}

TEST(SwitchGate, AServedOptionThatBreaksTheSloIsLeftWhateverTheGain) {
  const ProfileRow a = row("a", {}, 0), b = row("b", {}, 0);
  const GateResult g = gate_switch(a, option("a", 200, 9, 8, /*feasible=*/false), b,
                                   option("b", 100, 5, 8), slo(), no_cost());
  EXPECT_TRUE(g.pass) << g.reason;
  EXPECT_LT(g.gain.point, 0);
  EXPECT_NE(g.reason.find("breaks the SLO"), std::string::npos) << g.reason;
}

TEST(SwitchGate, PairedEvidenceOfEvenPromptsGivesATightInterval) {
  const ProfileRow a = row("a", even_prompts(std::log(6.0)), 7);
  const ProfileRow b = row("b", even_prompts(std::log(5.0)), 7);
  ASSERT_TRUE(paired(a, b));
  const GateResult g = gate_switch(a, option("a", 100, 6), b, option("b", 120, 5), slo(), no_cost());
  EXPECT_TRUE(g.pass) << g.reason;
  EXPECT_EQ(g.prompts, 16);
  ASSERT_TRUE(g.perplexity_ratio.has_value());
  EXPECT_NEAR(g.perplexity_ratio->point, g.perplexity_ratio->low, 1e-9);
  EXPECT_NEAR(g.perplexity_ratio->point, g.perplexity_ratio->high, 1e-9);
  EXPECT_NEAR(g.gain.low, 0.2, 1e-9);
  EXPECT_NEAR(g.gain.high, 0.2, 1e-9);
}

TEST(SwitchGate, RowsOfDifferentSamplesDoNotPair) {
  const ProfileRow a = row("a", even_prompts(1.0), 7);
  EXPECT_FALSE(paired(a, row("b", even_prompts(1.0), 8)));
  EXPECT_FALSE(paired(a, row("b", std::vector<model::ExitScores>(15, prompt(20, 10, 1.5, 1.0)), 7)));
  EXPECT_FALSE(paired(row("a", even_prompts(1.0), 0), row("b", even_prompts(1.0), 0)));
}

TEST(SwitchGate, AGainThatDependsOnAFewPromptsIsHeld) {
  // The target leaves early (cheaply) on two prompts of sixteen and runs every layer on the
  // rest: its point gain clears the margin, the lower end of its interval does not.
  std::vector<model::ExitScores> to_prompts = even_prompts(std::log(5.0), /*early=*/0);
  to_prompts[3] = prompt(20, 20, std::log(5.0) + 0.5, std::log(5.0));
  to_prompts[11] = prompt(20, 20, std::log(5.0) + 0.5, std::log(5.0));
  const ProfileRow a = row("a", even_prompts(std::log(5.0), 0), 7);
  const ProfileRow b = row("b", to_prompts, 7);
  const GateResult g = gate_switch(a, option("a", 100, 5), b, option("b", 108, 5), slo(), no_cost());
  EXPECT_GT(g.gain.high, g.gain.point);
  EXPECT_LT(g.gain.low, g.gain.point);
  EXPECT_LT(g.gain.low, g.required_gain);
  EXPECT_FALSE(g.pass) << g.reason;
  // With a clearly larger point gain the same spread clears it.
  const GateResult big = gate_switch(a, option("a", 100, 5), b, option("b", 160, 5), slo(), no_cost());
  EXPECT_TRUE(big.pass) << big.reason;
}

TEST(SwitchGate, APerplexityThatMayExceedItsBoundIsHeld) {
  // Point perplexity (about 5.0) under the bound of 5.3 only while the one hard prompt of
  // sixteen is drawn at most once or twice.
  std::vector<model::ExitScores> to_prompts = even_prompts(std::log(3.6));
  to_prompts[9] = prompt(20, 10, std::log(14.0) + 0.2, std::log(14.0));
  const ProfileRow a = row("a", even_prompts(std::log(5.0)), 7);
  const ProfileRow b = row("b", to_prompts, 7);
  const double point = weighted_policy_perplexity(b, 4, std::vector<int>(16, 1));
  ASSERT_LT(point, 5.3);
  const GateResult g = gate_switch(a, option("a", 100, 5, 5.3), b, option("b", 200, point, 5.3),
                                   slo(), no_cost());
  ASSERT_TRUE(g.perplexity.has_value());
  EXPECT_GT(g.perplexity->high, 5.3);
  EXPECT_FALSE(g.pass) << g.reason;
  EXPECT_NE(g.reason.find("may exceed its bound"), std::string::npos) << g.reason;
}

TEST(SwitchGate, WeightedPerplexityOfEveryPromptOnceIsTheRowsPerplexity) {
  std::vector<model::ExitScores> prompts;
  for (int i = 0; i < 5; ++i) prompts.push_back(prompt(10 + i, i, 1.0 + 0.1 * i, 0.8 + 0.05 * i));
  const ProfileRow r = row("a", prompts, 3);
  EXPECT_NEAR(weighted_policy_perplexity(r, 4, std::vector<int>(5, 1)), policy_perplexity(r, 4), 1e-9);
  EXPECT_NEAR(weighted_policy_perplexity(r, 2, std::vector<int>(5, 1)), policy_perplexity(r, 2), 1e-9);
  EXPECT_TRUE(std::isinf(weighted_policy_perplexity(r, 1, std::vector<int>(5, 1))));
  // A prompt drawn twice counts twice.
  const std::vector<int> twice = {2, 0, 0, 0, 0};
  EXPECT_NEAR(weighted_policy_perplexity(r, 4, twice), std::exp(prompts[0].policy_nll_sum[1] / 10), 1e-9);
}

TEST(SwitchGate, TheSameRowsGiveTheSameDecision) {
  std::vector<model::ExitScores> varied;
  for (int i = 0; i < 16; ++i) varied.push_back(prompt(20, i % 7, 1.2 + 0.03 * i, 1.0 + 0.02 * i));
  const ProfileRow a = row("a", even_prompts(1.1), 5), b = row("b", varied, 5);
  const GateResult first = gate_switch(a, option("a", 100, 3), b, option("b", 115, 3), slo(), no_cost());
  const GateResult again = gate_switch(a, option("a", 100, 3), b, option("b", 115, 3), slo(), no_cost());
  EXPECT_EQ(first.pass, again.pass);
  EXPECT_EQ(first.gain.low, again.gain.low);
  EXPECT_EQ(first.to_json(), again.to_json());
}

}  // namespace
}  // namespace helios::controller
