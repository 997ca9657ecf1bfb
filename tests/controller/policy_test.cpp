#include "helios/controller/policy.h"

#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include <fstream>

#include "common/scratch_dir.h"

namespace helios::controller {
namespace {

// Synthetic footprint: 1000 fixed bytes, 1000 per layer, 10 KV bytes per token and layer,
// 100-token context, 8 layers.
ModelFootprint footprint() {
  ModelFootprint f;
  f.fixed_bytes = 1000;
  f.layer_bytes = 1000;
  f.kv_bytes_per_token_layer = 10;
  f.context_length = 100;
  f.total_layers = 8;
  f.kv_projection_share = 0.1;
  return f;
}

// Exits at 2/4/6/8 for 50/30/15/5 % of tokens; full-depth perplexity 10, policy perplexity
// 12, 10.3, 10.1, 10 when loaded to 2, 4, 6, 8 layers.
ProfileRow row(const std::string& name, double tokens_per_second, double tpot_ms) {
  ProfileRow r;
  r.model = name;
  r.footprint = footprint();
  r.profiled_layers = 8;
  r.exit_points = {2, 4, 6, 8};
  r.generated_exits = {50, 30, 15, 5};
  r.prompt_tokens = 100;
  r.prompt_nll_sum = {100 * std::log(20.0), 100 * std::log(15.0), 100 * std::log(11.0),
                      100 * std::log(10.0)};
  r.prompt_policy_nll_sum = {100 * std::log(12.0), 100 * std::log(10.3), 100 * std::log(10.1),
                             100 * std::log(10.0)};
  r.decode_tokens_per_second = tokens_per_second;
  r.tpot_p95_ms = tpot_ms;
  r.ttft_p95_ms = 40;
  r.energy_joules_per_token = 1.0;
  r.peak_concurrency = 4;
  return r;
}

// Every token exits at the last layer: the loaded depth is always the full one.
ProfileRow full_depth_row(const std::string& name, double tokens_per_second, double tpot_ms) {
  ProfileRow r = row(name, tokens_per_second, tpot_ms);
  r.generated_exits = {0, 0, 0, 100};
  return r;
}

SloConfig slo(Objective objective = Objective::kThroughput) {
  SloConfig s;
  s.objective = objective;
  return s;
}

const PolicyLimits kRoomy{1'000'000, 16, 8};

TEST(ChooseDepth, PicksTheQuantileDepthAndGoesDeeperForPerplexity) {
  const ProfileRow r = row("a", 100, 1);
  SloConfig s = slo();
  EXPECT_EQ(choose_depth(r, s, 10.0), 4);  // 80 % exit by layer 4; 10.3 <= 10.5
  s.max_perplexity_increase = 0.02;        // bound 10.2: layer 4's 10.3 is too high
  EXPECT_EQ(choose_depth(r, s, 10.0), 6);
  s.load_quantile = 0.96;  // 95 % by layer 6 is not enough
  EXPECT_EQ(choose_depth(r, s, 10.0), 8);
  s = slo();
  EXPECT_EQ(choose_depth(r, s, 5.0), 8);  // a much better model elsewhere: no depth is within
  s.load_quantile = 0.5;
  EXPECT_EQ(choose_depth(r, s, 12.0), 2);
}

TEST(Evaluate, MemoryFiguresFollowTheBytes) {
  const ProfileRow r = row("a", 100, 1);
  const PolicyLimits tight{20'000, 16, 8};
  const Option full = evaluate(r, 8, slo(), tight, 10.0);
  const Option half = evaluate(r, 4, slo(), tight, 10.0);
  // Depth 8: 9000 weight bytes, 11000 left, 16*8*10 = 1280 per block.
  EXPECT_EQ(full.weight_bytes, 9000);
  EXPECT_EQ(full.kv_blocks, 11000 / 1280);
  EXPECT_EQ(full.kv_sequences, (11000 / 1280) * 16 / 100);
  // Depth 4: 5000 weight bytes, 15000 left, 640 per block: more blocks and more sequences.
  EXPECT_EQ(half.weight_bytes, 5000);
  EXPECT_EQ(half.kv_blocks, 15000 / 640);
  EXPECT_EQ(half.kv_sequences, (15000 / 640) * 16 / 100);
  EXPECT_GT(half.kv_sequences, full.kv_sequences);
  // Throughput follows the sequences held (demand 8 is above both) and the cheaper tokens.
  const double cost_full = 1 + 3.5 + 0.1 * (8 - 3.5);  // 3.5 layers run on average
  const double run4 = (50 * 2 + 50 * 4) / 100.0;
  const double cost_half = 1 + run4 + 0.1 * (4 - run4);
  EXPECT_NEAR(half.cost_ratio, cost_half / cost_full, 1e-12);
  EXPECT_NEAR(half.tokens_per_second,
              100 / half.cost_ratio * static_cast<double>(half.kv_sequences) / full.kv_sequences,
              1e-9);
  EXPECT_NEAR(half.tpot_p95_ms, half.cost_ratio, 1e-12);
  EXPECT_NEAR(half.ttft_p95_ms, 20, 1e-12);
  EXPECT_TRUE(half.feasible) << half.infeasible_reason;

  const Option cramped = evaluate(r, 8, slo(), PolicyLimits{9'500, 16, 8}, 10.0);
  EXPECT_FALSE(cramped.feasible);
  EXPECT_EQ(cramped.kv_sequences, 0);
  EXPECT_EQ(cramped.infeasible_reason.rfind("memory:", 0), 0u) << cramped.infeasible_reason;
  EXPECT_EQ(cramped.to_json()["feasible"], false);
}

TEST(Evaluate, PerplexityAndLatencyConstraints) {
  const ProfileRow r = row("a", 100, 3.1);
  const Option shallow = evaluate(r, 2, slo(), kRoomy, 10.0);  // 12 > 10.5
  EXPECT_FALSE(shallow.feasible);
  EXPECT_EQ(shallow.infeasible_reason.rfind("max_perplexity_increase:", 0), 0u);
  SloConfig s = slo();
  s.p95_tpot_ms = 2.0;
  const Option slow = evaluate(r, 8, s, kRoomy, 10.0);
  EXPECT_FALSE(slow.feasible);
  EXPECT_EQ(slow.infeasible_reason, "p95_tpot_ms: predicted 3.10 > 2.00");
  s.p95_tpot_ms.reset();
  s.p95_ttft_ms = 30.0;
  EXPECT_EQ(evaluate(r, 8, s, kRoomy, 10.0).infeasible_reason,
            "p95_ttft_ms: predicted 40.00 > 30.00");
  EXPECT_TRUE(evaluate(r, 6, s, kRoomy, 10.0).feasible);  // prefill over 6 of 8 layers: 30 ms
}

// A row scored on `prompts` shared prompts of sample `key` with full-depth policy perplexity
// `perplexity`.
ProfileRow scored(const std::string& name, double perplexity, uint64_t key, int64_t prompts) {
  ProfileRow r = row(name, 100, 1);
  r.prompt_policy_nll_sum.back() = 100 * std::log(perplexity);
  r.evidence_key = key;
  r.evidence_prompts = prompts;
  return r;
}

// A candidate is screened out of a serve-mode pass only by a row scored on the same prompts
// whose perplexity bound it exceeds; never by itself, a row of another sample, or a sample
// too small to judge on.
TEST(Outclassed, OnlyByARowOfTheSameSampleBeyondTheBound) {
  SloConfig s = slo();
  s.max_perplexity_increase = 0.10;
  PerformanceTable table;
  table.upsert(scored("best", 10.0, 7, 16));
  EXPECT_FALSE(outclassed(scored("close", 10.9, 7, 16), table, s)) << "within x1.10";
  const std::optional<std::string> why = outclassed(scored("far", 11.2, 7, 16), table, s);
  ASSERT_TRUE(why.has_value());
  EXPECT_EQ(*why, "prompt perplexity 11.200 on the pass's 16 shared prompts > bound 11.000 (best "
                  "scores 10.000 on them)");
  EXPECT_FALSE(outclassed(scored("far", 11.2, 8, 16), table, s)) << "another sample";
  EXPECT_FALSE(outclassed(scored("far", 11.2, 0, 16), table, s)) << "no sample";
  EXPECT_FALSE(outclassed(scored("far", 11.2, 7, kScreenMinPrompts - 1), table, s))
      << "too few prompts";
  EXPECT_FALSE(outclassed(scored("best", 30.0, 7, 16), table, s)) << "its own older row";
  // The best of the sample's rows sets the bound; rows of other samples do not.
  table.upsert(scored("stale", 1.0, 3, 16));
  table.upsert(scored("second", 10.5, 7, 16));
  EXPECT_FALSE(outclassed(scored("close", 10.9, 7, 16), table, s));
}

// "big": fast per token but its large layers leave little KV room, so small batches;
// "small": slower per token but serves many sequences at once.
PerformanceTable trade_off_table() {
  PerformanceTable table;
  ProfileRow big = full_depth_row("big", 1000, 1.0);
  big.energy_joules_per_token = 0.5;
  ProfileRow small = full_depth_row("small", 2000, 3.0);
  small.energy_joules_per_token = 0.8;
  table.upsert(big);
  table.upsert(small);
  return table;
}

TEST(RankOptions, TheObjectiveDecides) {
  const PerformanceTable table = trade_off_table();
  EXPECT_EQ(best_option(table, slo(Objective::kThroughput), kRoomy)->model, "small");
  EXPECT_EQ(best_option(table, slo(Objective::kLatency), kRoomy)->model, "big");
  EXPECT_EQ(best_option(table, slo(Objective::kEnergy), kRoomy)->model, "big");

  SloConfig capped = slo(Objective::kThroughput);
  capped.p95_tpot_ms = 2.0;  // rules out "small"
  const std::vector<Option> ranked = rank_options(table, capped, kRoomy);
  ASSERT_EQ(ranked.size(), 2u);
  EXPECT_EQ(ranked[0].model, "big");
  EXPECT_TRUE(ranked[0].feasible);
  EXPECT_FALSE(ranked[1].feasible);
  EXPECT_EQ(ranked[1].infeasible_reason, "p95_tpot_ms: predicted 3.00 > 2.00");

  capped.p95_tpot_ms = 0.5;  // rules out both
  EXPECT_FALSE(best_option(table, capped, kRoomy).has_value());
}

TEST(RankOptions, PartialLoadOptionsUseTheirChosenDepth) {
  PerformanceTable table;
  table.upsert(row("a", 100, 1));
  const std::vector<Option> ranked = rank_options(table, slo(), kRoomy);
  ASSERT_EQ(ranked.size(), 1u);
  EXPECT_EQ(ranked[0].depth, 4);
  EXPECT_NEAR(best_full_perplexity(table), 10.0, 1e-9);
}

TEST(DecideOnBreach, ReprofilesWhenTheRowIsMissingOrStale) {
  PerformanceTable table = trade_off_table();
  const Decision missing = decide_on_breach(table, "gone", 4, slo(), kRoomy, 10);
  EXPECT_EQ(missing.kind, Decision::Kind::kReprofile);
  const Decision stale = decide_on_breach(table, "big", 4, slo(), kRoomy, 150);
  EXPECT_EQ(stale.kind, Decision::Kind::kReprofile);
  EXPECT_EQ(stale.reason.rfind("rows stale:", 0), 0u) << stale.reason;
}

TEST(DecideOnBreach, ExtendsWhenMoreLayersScoreHigher) {
  PerformanceTable table;
  table.upsert(row("current", 1000, 1));
  table.upsert(full_depth_row("weak", 100, 1));
  const Decision d = decide_on_breach(table, "current", 4, slo(), kRoomy, 10);
  EXPECT_EQ(d.kind, Decision::Kind::kExtend) << d.reason;
  EXPECT_EQ(d.option.model, "current");
  EXPECT_EQ(d.option.depth, 6);  // 5 % greedy exits left at 6 layers, under the 25 % limit
  EXPECT_NE(d.reason.find("switch weak@8"), std::string::npos) << d.reason;

  SloConfig strict = slo();
  strict.breach_max = 2;  // limit 1 %: only the full depth is good enough
  EXPECT_EQ(decide_on_breach(table, "current", 4, strict, kRoomy, 10).option.depth, 8);
}

TEST(DecideOnBreach, SwitchesWhenAnotherModelScoresHigher) {
  PerformanceTable table;
  table.upsert(row("current", 100, 1));
  table.upsert(full_depth_row("strong", 5000, 1));
  const Decision d = decide_on_breach(table, "current", 4, slo(), kRoomy, 10);
  EXPECT_EQ(d.kind, Decision::Kind::kSwitch) << d.reason;
  EXPECT_EQ(d.option.model, "strong");

  // Already at full depth and no other feasible model: nothing to do but re-profile.
  PerformanceTable alone;
  alone.upsert(row("current", 100, 1));
  EXPECT_EQ(decide_on_breach(alone, "current", 8, slo(), kRoomy, 10).kind,
            Decision::Kind::kReprofile);
}

Candidate candidate(const std::string& name, int64_t layer_bytes, int64_t kv_bytes) {
  Candidate c;
  c.name = name;
  c.footprint = footprint();
  c.footprint.layer_bytes = layer_bytes;
  c.footprint.kv_bytes_per_token_layer = kv_bytes;
  return c;
}

TEST(ReprofileSpacing, KeepsProfilingUnderItsShareOfTheTime) {
  // 2.5 s of profiling at a 10% share: 22.5 s of serving first (2.5 / 25 = 10%).
  EXPECT_DOUBLE_EQ(serving_seconds_before_reprofile(2.5, 0.1), 22.5);
  EXPECT_DOUBLE_EQ(serving_seconds_before_reprofile(2.0, 0.5), 2.0);
  EXPECT_DOUBLE_EQ(serving_seconds_before_reprofile(2.5, 1.0), 0.0);  // no cap
  EXPECT_DOUBLE_EQ(serving_seconds_before_reprofile(0.0, 0.1), 0.0);  // nothing profiled yet
}

TEST(Shortlist, DropsWhatDoesNotFitAndOrdersByTheObjective) {
  const PolicyLimits limits{100'000, 16, 64};
  std::vector<Candidate> all = {
      candidate("huge", 20'000, 10),    // 161000 weight bytes: never fits
      candidate("light", 1'000, 100),   // little compute, KV-hungry: 1 sequence
      candidate("roomy", 5'000, 5),     // more compute, small KV: 14 sequences
      candidate("middle", 3'000, 20)};  // 4 sequences
  SloConfig s = slo(Objective::kLatency);
  s.candidates_top_k = 2;
  std::vector<Candidate> latency = shortlist(all, s, limits);
  ASSERT_EQ(latency.size(), 2u);
  EXPECT_EQ(latency[0].name, "light");
  EXPECT_EQ(latency[1].name, "middle");
  s.objective = Objective::kThroughput;
  std::vector<Candidate> throughput = shortlist(all, s, limits);
  ASSERT_EQ(throughput.size(), 2u);
  EXPECT_EQ(throughput[0].name, "roomy");
  EXPECT_EQ(throughput[1].name, "middle");
}

TEST(ScanRepository, ReadsEveryModelFolderAndSkipsBrokenOnes) {
  helios::testing::ScratchDir repo("repo");
  model::ModelConfig config;
  config.hidden_size = 16;
  config.intermediate_size = 32;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 2;
  config.num_key_value_heads = 2;
  config.vocab_size = 260;
  config.max_position_embeddings = 64;
  config.exit_layers = {1, 2};
  config.tokenizer = model::TokenizerKind::kByte;
  for (const char* name : {"zeta", "alpha"}) {
    std::filesystem::create_directories(repo.path() / name);
    config.save(repo.path() / name / "config.json");
  }
  std::filesystem::create_directories(repo.path() / "broken");
  std::ofstream(repo.path() / "broken" / "config.json") << "{ not json";
  std::filesystem::create_directories(repo.path() / "notes");  // no config.json
  const std::vector<Candidate> found = scan_repository(repo.path(), 4);
  ASSERT_EQ(found.size(), 2u);
  EXPECT_EQ(found[0].name, "alpha");
  EXPECT_EQ(found[1].name, "zeta");
  EXPECT_EQ(found[0].footprint.total_layers, 2);
  EXPECT_EQ(found[0].config.hidden_size, 16);
}

}  // namespace
}  // namespace helios::controller
