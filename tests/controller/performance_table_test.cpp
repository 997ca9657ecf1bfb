#include "helios/controller/performance_table.h"

#include <gtest/gtest.h>

#include <cmath>

#include "helios/common/error.h"
#include "helios/model/weights.h"

namespace helios::controller {
namespace {

model::ModelConfig small_config(bool tied) {
  model::ModelConfig c;
  c.hidden_size = 16;
  c.intermediate_size = 40;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.vocab_size = 50;
  c.max_position_embeddings = 64;
  c.tie_word_embeddings = tied;
  c.exit_layers = {1, 2, 3, 4};
  return c;
}

TEST(ModelFootprint, RefusesSizesThatOverflowAByteCount) {
  // Built by hand (no config.json bounds): each product must be checked, not wrapped into a
  // small or negative byte count.
  model::ModelConfig embeddings = small_config(false);
  embeddings.vocab_size = int64_t{1} << 40;
  embeddings.hidden_size = int64_t{1} << 24;  // 2^64 embedding elements
  embeddings.num_attention_heads = 4;
  model::ModelConfig layers = small_config(true);
  layers.num_hidden_layers = int64_t{1} << 40;
  layers.intermediate_size = int64_t{1} << 20;  // 2^40 layers of ~2^26 bytes
  model::ModelConfig context = small_config(true);
  context.max_position_embeddings = int64_t{1} << 58;  // x 64 KV bytes per token, x 4 layers
  for (const model::ModelConfig& config : {embeddings, layers, context}) {
    try {
      ModelFootprint::of(config, sizeof(float));
      ADD_FAILURE() << "no error for vocab " << config.vocab_size << ", layers "
                    << config.num_hidden_layers << ", context " << config.max_position_embeddings;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("overflows"), std::string::npos) << e.what();
    }
  }
  // A large real model still fits, and is counted exactly.
  model::ModelConfig large = small_config(false);
  large.hidden_size = 8192;
  large.intermediate_size = 28672;
  large.num_hidden_layers = 80;
  large.num_attention_heads = 64;
  large.num_key_value_heads = 8;
  large.vocab_size = 128256;
  large.max_position_embeddings = 131072;
  const ModelFootprint f = ModelFootprint::of(large, 2);
  EXPECT_EQ(f.fixed_bytes, (int64_t{2} * 128256 * 8192 + 8192) * 2);
  EXPECT_EQ(f.kv_bytes_per_token_layer, 2 * 8 * 128 * 2);
}

TEST(ModelFootprint, WeightBytesMatchWhatALoadHolds) {
  for (const bool tied : {true, false}) {
    const model::ModelConfig config = small_config(tied);
    const ModelFootprint f = ModelFootprint::of(config, sizeof(float));
    for (int64_t depth = 1; depth <= config.num_hidden_layers; ++depth) {
      model::ModelWeights w = model::init_weights(config, 7);
      w.layers.resize(static_cast<size_t>(depth));
      EXPECT_EQ(f.weight_bytes(depth), w.resident_bytes()) << "tied " << tied << " depth " << depth;
    }
    // 2 (K and V) * 2 kv heads * head_dim 4 * 4 bytes.
    EXPECT_EQ(f.kv_bytes_per_token_layer, 2 * 2 * 4 * 4);
    EXPECT_EQ(f.context_length, 64);
    EXPECT_EQ(f.total_layers, 4);
    // k, v: 8x16 each; q, o: 16x16 each; gate, up, down: 40x16 each.
    EXPECT_DOUBLE_EQ(f.kv_projection_share, 256.0 / (256.0 + 512.0 + 1920.0));
  }
}

ProfileRow exits_row() {
  ProfileRow row;
  row.model = "m";
  row.profiled_layers = 8;
  row.exit_points = {2, 4, 6, 8};
  row.generated_exits = {50, 30, 15, 5};
  row.prompt_tokens = 100;
  row.prompt_nll_sum = {100 * std::log(20.0), 100 * std::log(15.0), 100 * std::log(11.0),
                        100 * std::log(10.0)};
  row.prompt_policy_nll_sum = {100 * std::log(12.0), 100 * std::log(10.3),
                               100 * std::log(10.1), 100 * std::log(10.0)};
  return row;
}

TEST(ProfileRow, CoverageAndLayersRun) {
  const ProfileRow row = exits_row();
  EXPECT_DOUBLE_EQ(coverage(row, 1), 0.0);
  EXPECT_DOUBLE_EQ(coverage(row, 2), 0.5);
  EXPECT_DOUBLE_EQ(coverage(row, 5), 0.8);
  EXPECT_DOUBLE_EQ(coverage(row, 8), 1.0);
  // Loaded to 4 layers: the 20 tokens that would have gone deeper stop at 4.
  EXPECT_DOUBLE_EQ(mean_layers_run(row, 4), (50 * 2 + 30 * 4 + 20 * 4) / 100.0);
  EXPECT_DOUBLE_EQ(mean_layers_run(row, 8), (50 * 2 + 30 * 4 + 15 * 6 + 5 * 8) / 100.0);
  ProfileRow empty = row;
  empty.generated_exits = {0, 0, 0, 0};
  EXPECT_DOUBLE_EQ(coverage(empty, 8), 1.0);
  EXPECT_DOUBLE_EQ(coverage(empty, 6), 0.0);
  EXPECT_DOUBLE_EQ(mean_layers_run(empty, 6), 6.0);
}

TEST(ProfileRow, Perplexities) {
  const ProfileRow row = exits_row();
  EXPECT_NEAR(full_depth_perplexity(row), 10.0, 1e-9);
  EXPECT_NEAR(policy_perplexity(row, 4), 10.3, 1e-9);
  EXPECT_NEAR(policy_perplexity(row, 5), 10.3, 1e-9);  // greedy exit at layer 4
  EXPECT_TRUE(std::isinf(policy_perplexity(row, 1)));
  ProfileRow unscored = row;
  unscored.prompt_tokens = 0;
  EXPECT_TRUE(std::isinf(full_depth_perplexity(unscored)));
}

TEST(PerformanceTable, UpsertFindAndStaleness) {
  PerformanceTable table;
  ProfileRow a = exits_row();
  a.profiled_at_request = 10;
  table.upsert(a);
  ProfileRow b = a;
  b.model = "b";
  table.upsert(b);
  a.requests = 5;
  table.upsert(a);  // replaces
  ASSERT_EQ(table.rows().size(), 2u);
  ASSERT_NE(table.find("m"), nullptr);
  EXPECT_EQ(table.find("m")->requests, 5);
  EXPECT_EQ(table.find("zzz"), nullptr);
  EXPECT_FALSE(table.stale(a, 159, 150));
  EXPECT_TRUE(table.stale(a, 160, 150));
  EXPECT_FALSE(table.stale(a, 100000, 0));  // 0: never re-profile
  table.clear();
  EXPECT_TRUE(table.rows().empty());
}

}  // namespace
}  // namespace helios::controller
