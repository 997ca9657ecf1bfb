#include "helios/controller/prediction.h"

#include <gtest/gtest.h>

#include <cmath>

namespace helios::controller {
namespace {

// 1000 fixed bytes, `layer_bytes` per layer, 10 KV bytes per token and layer, 100-token
// context, 8 layers.
ModelFootprint footprint(int64_t layer_bytes = 1000) {
  ModelFootprint f;
  f.fixed_bytes = 1000;
  f.layer_bytes = layer_bytes;
  f.kv_bytes_per_token_layer = 10;
  f.context_length = 100;
  f.total_layers = 8;
  f.kv_projection_share = 0.1;
  return f;
}

// The served model's live row at `depth`, every generated token leaving at the depth.
ProfileRow served_row(int64_t depth) {
  ProfileRow r;
  r.model = "served";
  r.footprint = footprint();
  r.profiled_layers = depth;
  r.exit_points = {static_cast<int32_t>(depth)};
  r.generated_exits = {100};
  r.requests = 5;
  r.decode_tokens_per_second = 400;
  r.mean_batch = 3;
  r.peak_concurrency = 4;
  r.tpot_p95_ms = 10;
  r.tpot_mean_ms = 8;
  r.ttft_p95_ms = 40;
  r.energy_joules_per_token = 2;
  r.profiled_at_request = 77;
  return r;
}

Candidate candidate(const std::string& name, int64_t layer_bytes) {
  Candidate c;
  c.name = name;
  c.path = "/models/" + name;
  c.config.num_hidden_layers = 8;
  c.footprint = footprint(layer_bytes);
  return c;
}

// Sample scores at exit points 4 and 8: every position confident at 4 or never.
model::ExitScores scores(int64_t early, int64_t late) {
  model::ExitScores s;
  s.tokens = early + late;
  s.nll_sum = {static_cast<double>(s.tokens) * std::log(12.0),
               static_cast<double>(s.tokens) * std::log(10.0)};
  s.policy_nll_sum = {s.nll_sum[0], static_cast<double>(s.tokens) * std::log(10.5)};
  s.exit_histogram = {early, late};
  return s;
}

const PolicyLimits kRoomy{1'000'000, 16, 8};

TEST(TokenWork, FixedBytesPlusTheLayersRunAndTheKvOfThoseSkipped) {
  ProfileRow r = served_row(8);
  r.exit_points = {4, 8};
  r.generated_exits = {50, 50};
  // At 8 layers: 6 layers run on average, 2 skipped at 10 % -> 6.2 layers of 1000 bytes.
  EXPECT_NEAR(token_work_bytes(r, 8), 1000 + 1000 * 6.2, 1e-9);
  // At 4 layers every token runs 4.
  EXPECT_NEAR(token_work_bytes(r, 4), 1000 + 1000 * 4.0, 1e-9);
}

TEST(PredictRow, TheServedModelAtItsOwnDepthIsPredictedAsMeasured) {
  const ProfileRow served = served_row(8);
  const ProfileRow p = predict_row(served, candidate("served", 1000), scores(0, 50), {4, 8}, {}, kRoomy);
  EXPECT_EQ(p.model, "served");
  EXPECT_EQ(p.profiled_layers, 8);
  EXPECT_EQ(p.exit_points, (std::vector<int32_t>{4, 8}));
  EXPECT_NEAR(p.decode_tokens_per_second, 400, 1e-9);
  EXPECT_NEAR(p.tpot_p95_ms, 10, 1e-9);
  EXPECT_NEAR(p.tpot_mean_ms, 8, 1e-9);
  EXPECT_NEAR(p.ttft_p95_ms, 40, 1e-9);
  EXPECT_NEAR(p.energy_joules_per_token, 2, 1e-9);
  // Quality from the sample; the traffic figures are the served row's.
  EXPECT_EQ(p.prompt_tokens, 50);
  EXPECT_EQ(p.generated_exits, (std::vector<int64_t>{0, 50}));
  EXPECT_NEAR(full_depth_perplexity(p), 10.0, 1e-9);
  EXPECT_EQ(p.requests, 5);
  EXPECT_DOUBLE_EQ(p.mean_batch, 3);
  EXPECT_DOUBLE_EQ(p.peak_concurrency, 4);
  EXPECT_EQ(p.profiled_at_request, 77);
}

TEST(PredictRow, HeavierAndShallowerExitingModelsScaleByTokenWork) {
  const ProfileRow served = served_row(8);  // 9000 bytes per token
  // Twice the layer bytes, every token to the last layer: 1000 + 2000 * 8 = 17000.
  const ProfileRow heavy = predict_row(served, candidate("heavy", 2000), scores(0, 50), {4, 8}, {}, kRoomy);
  EXPECT_NEAR(heavy.decode_tokens_per_second, 400 * 9000.0 / 17000.0, 1e-6);
  EXPECT_NEAR(heavy.tpot_p95_ms, 10 * 17000.0 / 9000.0, 1e-9);
  EXPECT_NEAR(heavy.energy_joules_per_token, 2 * 17000.0 / 9000.0, 1e-9);
  EXPECT_NEAR(heavy.ttft_p95_ms, 40 * 17000.0 / 9000.0, 1e-9);  // weights 1000 + 8 x 2000
  // Same size, half the positions confident at layer 4: 1000 + 1000 * (6 + 0.1 * 2) = 7200 bytes.
  const ProfileRow early = predict_row(served, candidate("early", 1000), scores(25, 25), {4, 8}, {}, kRoomy);
  EXPECT_NEAR(early.decode_tokens_per_second, 400 * 9000.0 / 7200.0, 1e-6);
  EXPECT_NEAR(early.ttft_p95_ms, 40, 1e-9);  // prefill runs every layer either way
}

TEST(PredictRow, AServedTruncatedLoadIsCarriedToTheCandidatesFullDepth) {
  const ProfileRow served = served_row(4);  // 1000 + 4 x 1000 = 5000 bytes per token
  const ProfileRow full = predict_row(served, candidate("served", 1000), scores(0, 50), {4, 8}, {}, kRoomy);
  EXPECT_NEAR(full.decode_tokens_per_second, 400 * 5000.0 / 9000.0, 1e-6);
  EXPECT_NEAR(full.ttft_p95_ms, 40 * 9000.0 / 5000.0, 1e-9);
}

TEST(PredictRow, ThroughputFollowsTheSequencesEachPoolHolds) {
  // In 20000 bytes the served model at 2 layers (3000 bytes of weights, 20 KV bytes a token)
  // holds more full-context sequences than the candidate at 8 (9000 bytes, 80 a token).
  const PolicyLimits tight{20000, 16, 8};
  const ProfileRow served = served_row(2);
  const ProfileRow p = predict_row(served, candidate("same", 1000), scores(0, 50), {4, 8}, {}, tight);
  const engine::KvCapacity here = engine::kv_capacity(p.footprint, 8, 20000, 16);
  const engine::KvCapacity there = engine::kv_capacity(served.footprint, 2, 20000, 16);
  ASSERT_LT(here.kv_sequences, there.kv_sequences);
  const double work = 9000.0 / 3000.0;
  const double capacity = static_cast<double>(std::max<int64_t>(1, std::min<int64_t>(here.kv_sequences, 8))) /
                          static_cast<double>(std::min<int64_t>(there.kv_sequences, 8));
  EXPECT_NEAR(p.decode_tokens_per_second, 400 / work * capacity, 1e-6);
}

TEST(PredictRow, GeneratedExitsComeFromTheContinuationsWhenThereAreAny) {
  const ProfileRow served = served_row(8);
  const ProfileRow p = predict_row(served, candidate("c", 1000), scores(0, 50), {4, 8}, {30, 10}, kRoomy);
  EXPECT_EQ(p.generated_exits, (std::vector<int64_t>{30, 10}));
  EXPECT_NEAR(coverage(p, 4), 0.75, 1e-12);
  // None generated (or a mismatched histogram): the sample's positions stand in.
  EXPECT_EQ(predict_row(served, candidate("c", 1000), scores(5, 45), {4, 8}, {0, 0}, kRoomy).generated_exits,
            (std::vector<int64_t>{5, 45}));
  EXPECT_EQ(predict_row(served, candidate("c", 1000), scores(5, 45), {4, 8}, {1, 2, 3}, kRoomy).generated_exits,
            (std::vector<int64_t>{5, 45}));
}

TEST(PredictStepModel, ScalesBothPartsByTokenWork) {
  const ProfileRow served = served_row(8);
  const ProfileRow heavy = predict_row(served, candidate("heavy", 2000), scores(0, 50), {4, 8}, {}, kRoomy);
  const StepModel m = predict_step_model(StepModel{0.002, 0.001}, served, heavy);
  EXPECT_NEAR(m.fixed_seconds, 0.002 * 17000.0 / 9000.0, 1e-12);
  EXPECT_NEAR(m.per_sequence_seconds, 0.001 * 17000.0 / 9000.0, 1e-12);
}

}  // namespace
}  // namespace helios::controller
