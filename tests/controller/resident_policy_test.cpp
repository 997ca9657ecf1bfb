#include "helios/controller/resident_policy.h"
#include "helios/controller/prediction.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

#include "controller/synthetic_rows.h"

namespace helios::controller {
namespace {

using synthetic::prompt;

constexpr int64_t kMiB = 1 << 20;

// Prose and code prompts of 20 tokens, 16 of them confident at exit 2. The prose expert "p"
// and the code expert "c" score their own domain at NLL 2.1 (exit 2) / 2.0 (exit 4) and the
// other at 4.1 / 4.0; the generalist "m" scores both at 2.4 / 2.3.
model::ExitScores good() { return prompt(20, 16, 2.1, 2.0); }
model::ExitScores poor() { return prompt(20, 16, 4.1, 4.0); }
model::ExitScores middling() { return prompt(20, 16, 2.4, 2.3); }

// A 4-layer row scored on `prompts` (sample key 7) with a measured decode figure; `layer_mib`
// of weights and `kv_kib` of keys and values per token and layer, 256 positions of context.
ProfileRow row(const std::string& model, std::vector<model::ExitScores> prompts,
               int64_t layer_mib = 1, int64_t kv_kib = 1) {
  ProfileRow r = synthetic::row(model, std::move(prompts), 7);
  r.footprint.fixed_bytes = kMiB;
  r.footprint.layer_bytes = layer_mib * kMiB;
  r.footprint.kv_bytes_per_token_layer = kv_kib * 1024;
  r.footprint.context_length = 256;
  r.generated_exits = {80, 20};  // 80% of generated tokens leave at exit 2
  r.decode_tokens_per_second = 1000;
  r.peak_concurrency = 64;
  return r;
}

// `prose` prose prompts followed by `code` code prompts, as each model scores them.
std::vector<model::ExitScores> mix(int prose, int code, model::ExitScores on_prose,
                                   model::ExitScores on_code) {
  std::vector<model::ExitScores> prompts(static_cast<size_t>(prose), on_prose);
  prompts.insert(prompts.end(), static_cast<size_t>(code), on_code);
  return prompts;
}

// The two experts and the generalist (twice the weights and KV per layer) on a mix.
PerformanceTable table(int prose, int code) {
  PerformanceTable t;
  t.upsert(row("p", mix(prose, code, good(), poor())));
  t.upsert(row("c", mix(prose, code, poor(), good())));
  t.upsert(row("m", mix(prose, code, middling(), middling()), 2, 2));
  return t;
}

SloConfig slo(int64_t max_models = 2) {
  SloConfig s;
  s.objective = Objective::kThroughput;
  s.resident_max_models = max_models;
  return s;
}

PolicyLimits limits(int64_t budget_mib = 12) {
  return PolicyLimits{.memory_budget_bytes = budget_mib * kMiB, .kv_block_size = 16, .max_running = 64};
}

// Engine step seconds as measured (the generalist's; the experts' are carried from it when it is
// the reference).
std::map<std::string, StepModel> steps() {
  return {{"p", {0.002, 0.0005}}, {"c", {0.002, 0.0005}}, {"m", {0.004, 0.001}}};
}

SwitchCost no_cost() { return SwitchCost{.recompute_tokens = 0, .seconds = 0, .horizon_seconds = 60}; }

TEST(ResidentPolicy, TheSimulatedRouterSendsEachPromptToItsLowestFirstExitLoss) {
  const PerformanceTable t = table(3, 2);
  const std::vector<size_t> routes = simulate_routes({t.find("m"), t.find("p"), t.find("c")});
  EXPECT_EQ(routes, (std::vector<size_t>{1, 1, 1, 2, 2}));
  // Without the experts the generalist takes everything.
  EXPECT_EQ(simulate_routes({t.find("m")}), (std::vector<size_t>(5, 0)));
}

TEST(ResidentPolicy, TwoExpertsAtPartialDepthBeatTheGeneralistOnMixedTraffic) {
  // 11 MiB: the experts fit at 2 layers each but not both at full depth, so the bound is the
  // generalist's (the best full-depth perplexity within the budget).
  const PerformanceTable t = table(8, 8);
  const SetChoice choice = choose_resident_set(t, "m", slo(), limits(11), steps(), no_cost());
  ASSERT_TRUE(choice.set.has_value()) << choice.reason;
  EXPECT_NEAR(choice.reference_perplexity, std::exp(2.38), 1e-9);
  const SetOption& set = *choice.set;
  EXPECT_EQ(set.name(), "p@2+c@2");
  ASSERT_EQ(set.members.size(), 2u);
  for (const SetMember& m : set.members) {
    SCOPED_TRACE(m.model);
    EXPECT_DOUBLE_EQ(m.share, 0.5);
    EXPECT_EQ(m.prompts, 8);
    EXPECT_NEAR(m.perplexity, std::exp(2.1), 1e-9);
    // 3 MiB of weights each; 0.5 MiB per full-context sequence at 2 layers: one sequence each,
    // then the 4 MiB left split evenly, 16 blocks a sequence.
    EXPECT_EQ(m.weight_bytes, 3 * kMiB);
    EXPECT_EQ(m.kv_blocks, 80);
    EXPECT_EQ(m.kv_sequences, 5);
    EXPECT_DOUBLE_EQ(m.batch, 5.0);
  }
  EXPECT_NEAR(set.perplexity, std::exp(2.1), 1e-9);
  EXPECT_NEAR(set.perplexity_bound, 1.05 * std::exp(2.38), 1e-9);
  EXPECT_TRUE(set.feasible) << set.infeasible_reason;
  // The single generalist at its own partial load: 2 layers, 5 MiB, 6 sequences.
  ASSERT_EQ(choice.single.members.size(), 1u);
  EXPECT_EQ(choice.single.name(), "m@2");
  EXPECT_TRUE(choice.single.feasible) << choice.single.infeasible_reason;
  EXPECT_EQ(choice.single.members[0].kv_sequences, 6);
  EXPECT_NEAR(choice.single.perplexity, std::exp(2.4), 1e-9);
  // Per token: (fixed + per sequence x batch) x cost ratio / batch, the experts' steps carried
  // from the generalist's measured ones by their token work.
  const double ratio = 3.0 / 3.56;
  const StepModel expert = predict_step_model(steps().at("m"), *t.find("m"), *t.find("p"));
  EXPECT_LT(expert.seconds(5), 0.01);
  EXPECT_NEAR(set.tokens_per_second, 5.0 / (expert.seconds(5) * ratio), 1e-6);
  EXPECT_NEAR(choice.single.tokens_per_second, 6.0 / (0.010 * ratio), 1e-6);
  EXPECT_TRUE(choice.gate.pass) << choice.gate.reason;
  EXPECT_NE(choice.gate.reason.find("the gain clears its cost"), std::string::npos)
      << choice.gate.reason;
  EXPECT_GT(choice.gate.gain.low, 0.3);
  EXPECT_EQ(choice.gate.prompts, 16);
  ASSERT_TRUE(choice.gate.perplexity_ratio.has_value());
  EXPECT_LT(choice.gate.perplexity_ratio->high, 1.0);
  // The decision log's figures carry the set, the single model and the gate.
  const nlohmann::json j = choice.to_json();
  EXPECT_EQ(j["set"]["set"], "p@2+c@2");
  EXPECT_EQ(j["single"]["set"], "m@2");
  EXPECT_TRUE(j["gate"]["pass"].get<bool>());
  EXPECT_EQ(j["considered"].size(), 3u);
}

// A breach extends a chosen set's truncated members to full depth: the extension is evaluated
// on the choice's routes with its own figures, and refused when it does not fit the budget.
TEST(ResidentPolicy, AnExtensionToFullDepthIsEvaluatedOnTheChoicesRoutes) {
  const PerformanceTable t = table(8, 8);
  const SetChoice choice = choose_resident_set(t, "m", slo(), limits(11), steps(), no_cost());
  ASSERT_TRUE(choice.set.has_value()) << choice.reason;
  const SetOption& set = *choice.set;
  ASSERT_EQ(set.name(), "p@2+c@2");
  EXPECT_EQ(set.step_reference, "m");

  const std::optional<SetOption> tight = evaluate_set_at(set, {4, 4}, t, limits(11), steps());
  ASSERT_TRUE(tight.has_value());
  EXPECT_FALSE(tight->feasible);
  EXPECT_NE(tight->infeasible_reason.find("memory.budget_mib"), std::string::npos)
      << tight->infeasible_reason;

  const std::optional<SetOption> full = evaluate_set_at(set, {4, 4}, t, limits(12), steps());
  ASSERT_TRUE(full.has_value());
  EXPECT_TRUE(full->feasible) << full->infeasible_reason;
  EXPECT_EQ(full->name(), "p@4+c@4");
  EXPECT_EQ(full->routes, set.routes);
  EXPECT_DOUBLE_EQ(full->perplexity_bound, set.perplexity_bound);
  EXPECT_NEAR(full->perplexity, std::exp(2.08), 1e-9);
  for (const SetMember& m : full->members) {
    SCOPED_TRACE(m.model);
    EXPECT_EQ(m.depth, 4);
    EXPECT_EQ(m.weight_bytes, 5 * kMiB);
    EXPECT_DOUBLE_EQ(m.cost_ratio, 1.0);
  }
  EXPECT_LT(full->tokens_per_second, set.tokens_per_second) << "more layers, smaller pools";

  PerformanceTable without_c;
  without_c.upsert(*t.find("p"));
  without_c.upsert(*t.find("m"));
  EXPECT_FALSE(evaluate_set_at(set, {4, 4}, without_c, limits(12), steps()).has_value())
      << "a member's row is gone";
}

// The fastest depths may fit the bound on the sample's average yet not with confidence (the
// experts' exit 2 is good on some prompts and poor on others): the gate then takes the fastest
// combination that does, one member deeper, rather than no set.
TEST(ResidentPolicy, AnUncertainFastestOptionGivesWayToADeeperOne) {
  // Exit 2 of each expert on its own domain: NLL 1.8 and 2.8 on alternate prompts (mean 2.3),
  // 2.0 at full depth, no position confident early; the generalist 2.4 / 2.3 everywhere, so
  // the bound is 1.05 x e^2.3 and both experts at 2 layers sit just inside it.
  std::vector<model::ExitScores> on_p, on_c, on_m;
  for (int i = 0; i < 16; ++i) {
    const bool prose = i < 8;
    const model::ExitScores own = synthetic::prompt(20, 0, i % 2 ? 2.8 : 1.8, 2.0);
    const model::ExitScores other = synthetic::prompt(20, 0, 4.1, 4.0);
    on_p.push_back(prose ? own : other);
    on_c.push_back(prose ? other : own);
    on_m.push_back(synthetic::prompt(20, 0, 2.4, 2.3));
  }
  PerformanceTable t;
  t.upsert(row("p", on_p));
  t.upsert(row("c", on_c));
  t.upsert(row("m", on_m, 2, 2));
  const std::vector<SetOption> options =
      evaluate_set_options({t.find("p"), t.find("c")}, t, slo(), limits(11), steps(), "m");
  ASSERT_GE(options.size(), 2u);
  EXPECT_EQ(options.front().name(), "p@2+c@2") << "the fastest, within the bound on average";
  EXPECT_NEAR(options.front().perplexity, std::exp(2.3), 1e-9);
  for (size_t i = 1; i < options.size(); ++i) {
    EXPECT_LE(options[i].tokens_per_second, options[i - 1].tokens_per_second);
  }

  const SetChoice choice = choose_resident_set(t, "m", slo(), limits(11), steps(), no_cost());
  ASSERT_TRUE(choice.set.has_value()) << choice.reason;
  const std::string name = choice.set->name();
  EXPECT_TRUE(name == "p@2+c@4" || name == "p@4+c@2") << name;
  EXPECT_NE(choice.gate.reason.find("faster option(s) held"), std::string::npos)
      << choice.gate.reason;
  ASSERT_TRUE(choice.gate.perplexity.has_value());
  EXPECT_LT(choice.gate.perplexity->high, 1.05 * std::exp(2.3));
}

TEST(ResidentPolicy, TheBestSetWithinTheBudgetSetsTheAccuracyBound) {
  // 12 MiB hold both experts at full depth: their routed perplexity (e^2.08) becomes the
  // reference, which the generalist at any depth breaks; the set at 2 layers each is within
  // 5% of it, so it is chosen whatever the throughput.
  const PerformanceTable t = table(8, 8);
  const SetChoice choice = choose_resident_set(t, "m", slo(), limits(12), steps(), no_cost());
  EXPECT_NEAR(choice.reference_perplexity, std::exp(2.08), 1e-9);
  EXPECT_FALSE(choice.single.feasible);
  EXPECT_NE(choice.single.infeasible_reason.find("max_perplexity_increase"), std::string::npos)
      << choice.single.infeasible_reason;
  ASSERT_TRUE(choice.set.has_value()) << choice.reason;
  EXPECT_EQ(choice.set->name(), "p@2+c@2");
  EXPECT_NEAR(choice.set->perplexity_bound, 1.05 * std::exp(2.08), 1e-9);
  EXPECT_TRUE(choice.gate.pass);
  EXPECT_NE(choice.gate.reason.find("the single model breaks the SLO"), std::string::npos)
      << choice.gate.reason;
}

TEST(ResidentPolicy, TheReferencesRateStandsInForMissingStepModels) {
  // No step model was fitted (no pure decode step) and the experts served nothing (screened):
  // the generalist's measured 1000 tokens/s, a step time proportional to the batch, carried to
  // the experts by their token work.
  PerformanceTable t = table(8, 8);
  for (const char* expert : {"p", "c"}) {
    ProfileRow r = *t.find(expert);
    r.decode_tokens_per_second = 0;
    t.upsert(std::move(r));
  }
  const SetChoice choice = choose_resident_set(t, "m", slo(), limits(11), {}, no_cost());
  ASSERT_TRUE(choice.set.has_value()) << choice.reason;
  const double ratio = 3.0 / 3.56;  // 2 of 4 layers, for every row
  const double work = token_work_bytes(*t.find("p"), 4) / token_work_bytes(*t.find("m"), 4);
  EXPECT_NEAR(choice.single.tokens_per_second, 1000.0 / ratio, 1e-6);
  EXPECT_NEAR(choice.set->tokens_per_second, 1000.0 / (ratio * work), 1e-6);
  EXPECT_TRUE(choice.gate.pass) << choice.gate.reason;
}

TEST(ResidentPolicy, TheSetsAccuracyBuysItsMembersTruncation) {
  // Experts 10% worse at exit 2 than at full depth on their own prompts (beyond the 5% a
  // single model may lose), yet the set at 2 layers each stays within the bound the best
  // single model sets: the faster depths win.
  const model::ExitScores sharp = prompt(20, 16, 2.3, 1.8);
  PerformanceTable t;
  t.upsert(row("p", mix(8, 8, sharp, poor())));
  t.upsert(row("c", mix(8, 8, poor(), sharp)));
  t.upsert(row("m", mix(8, 8, middling(), middling()), 2, 2));
  const SetOption set = evaluate_set({t.find("p"), t.find("c")}, t, slo(), limits(), steps(), "m");
  EXPECT_TRUE(set.feasible) << set.infeasible_reason;
  EXPECT_EQ(set.name(), "p@2+c@2");
  EXPECT_NEAR(set.perplexity, std::exp(2.3), 1e-9);
  EXPECT_LE(set.perplexity, set.perplexity_bound);
  // Against a better generalist (full-depth perplexity e^2.28 = 9.78) with no increase
  // allowed, both at 2 layers (9.97) break the bound; one member truncated does not (e^2.25).
  PerformanceTable better;
  better.upsert(*t.find("p"));
  better.upsert(*t.find("c"));
  better.upsert(row("m", mix(8, 8, prompt(20, 16, 2.3, 2.2), prompt(20, 16, 2.3, 2.2)), 2, 2));
  SloConfig strict = slo();
  strict.max_perplexity_increase = 0.0;
  const SetOption one_cut =
      evaluate_set({better.find("p"), better.find("c")}, better, strict, limits(), steps(), "m");
  EXPECT_TRUE(one_cut.feasible) << one_cut.infeasible_reason;
  EXPECT_EQ(one_cut.name(), "p@4+c@2");
  EXPECT_NEAR(one_cut.perplexity, std::exp(2.25), 1e-9);
}

TEST(ResidentPolicy, AMemberWithTooLittleTrafficLeaves) {
  // One code prompt in sixteen: the code expert would serve 6% of the tokens.
  const SetChoice choice = choose_resident_set(table(15, 1), "m", slo(), limits(), steps(), no_cost());
  EXPECT_FALSE(choice.set.has_value());
  EXPECT_NE(choice.reason.find("resident_min_share"), std::string::npos) << choice.reason;
  SloConfig lenient = slo();
  lenient.resident_min_share = 0.05;
  EXPECT_TRUE(choose_resident_set(table(15, 1), "m", lenient, limits(), steps(), no_cost()).set);
}

TEST(ResidentPolicy, AMemberThatAddsNoAccuracyLeaves) {
  PerformanceTable t;
  t.upsert(row("p", mix(8, 8, good(), poor())));
  t.upsert(row("twin", mix(8, 8, good(), poor())));
  SloConfig s = slo();
  s.resident_min_share = 0;  // the twin gets no prompt (ties go to the first row)
  const SetOption set = evaluate_set({t.find("p"), t.find("twin")}, t, s, limits(), steps());
  EXPECT_FALSE(set.feasible);
  EXPECT_NE(set.infeasible_reason.find("resident_min_advantage: without"), std::string::npos)
      << set.infeasible_reason;
}

TEST(ResidentPolicy, ASetThatDoesNotFitTheBudgetIsNotChosen) {
  // 6 MiB of weights and one 0.5 MiB sequence each do not fit 6 MiB; the generalist at 2
  // layers (5 MiB and one 1 MiB sequence) does.
  const PerformanceTable t = table(8, 8);
  const SetOption set = evaluate_set({t.find("p"), t.find("c")}, t, slo(), limits(6), steps());
  EXPECT_FALSE(set.feasible);
  EXPECT_NE(set.infeasible_reason.find("memory.budget_mib"), std::string::npos)
      << set.infeasible_reason;
  const SetChoice choice = choose_resident_set(t, "m", slo(), limits(6), steps(), no_cost());
  EXPECT_FALSE(choice.set.has_value());
  EXPECT_TRUE(choice.single.feasible) << choice.single.infeasible_reason;
  EXPECT_NE(choice.reason.find("memory.budget_mib"), std::string::npos) << choice.reason;
}

TEST(ResidentPolicy, TheGateHoldsASetThatIsNotFaster) {
  // Experts whose layers weigh 3 MiB against the generalist's 2: each of their tokens streams
  // more weights, so the set's accuracy is better but the throughput objective keeps the
  // single model.
  PerformanceTable t;
  t.upsert(row("p", mix(8, 8, good(), poor()), 3));
  t.upsert(row("c", mix(8, 8, poor(), good()), 3));
  t.upsert(row("m", mix(8, 8, middling(), middling()), 2, 2));
  const SetChoice choice = choose_resident_set(t, "m", slo(), limits(24), steps(), no_cost());
  ASSERT_TRUE(choice.set.has_value()) << choice.reason;
  EXPECT_FALSE(choice.gate.pass);
  EXPECT_NE(choice.gate.reason.find("held"), std::string::npos) << choice.gate.reason;
}

TEST(ResidentPolicy, SetsAreOffWithOneModelOrALatencyBound) {
  const SetChoice one = choose_resident_set(table(8, 8), "m", slo(1), limits(), steps(), no_cost());
  EXPECT_FALSE(one.set.has_value());
  EXPECT_NE(one.reason.find("resident_max_models"), std::string::npos) << one.reason;
  SloConfig bounded = slo();
  bounded.p95_tpot_ms = 20;
  const SetChoice latency = choose_resident_set(table(8, 8), "m", bounded, limits(), steps(), no_cost());
  EXPECT_FALSE(latency.set.has_value());
  EXPECT_NE(latency.reason.find("latency bounds"), std::string::npos) << latency.reason;
}

}  // namespace
}  // namespace helios::controller
