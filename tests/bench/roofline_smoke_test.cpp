// helios_roofline end to end on a micro-zoo model: every decode configuration and prefill is
// reported, with bytes per step matching an independent count from config.json, and bad
// arguments exit 2 naming the flag.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "common/run_command.h"
#include "common/scratch_dir.h"
#include "helios/common/files.h"

namespace helios {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

const fs::path kModel = fs::path(HELIOS_MICRO_ZOO_DIR) / "prose-micro";

std::string roofline(const std::string& args) {
  return std::string("'") + HELIOS_ROOFLINE_BINARY + "' " + args;
}

TEST(RooflineSmoke, ReportsEveryConfigurationWithConsistentBytes) {
  testing::ScratchDir dir("roofline");
  const fs::path out = dir.path() / "out.json";
  const auto result = testing::run_command(
      roofline("--models '" + kModel.string() +
               "' --batches 1,4 --steps 4 --context 32 --prefill-tokens 64 --depths full,0.5 "
               "--json '" +
               out.string() + "'"));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("GB/s"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("TFLOP/s"), std::string::npos) << result.output;

  const json r = json::parse(read_file(out));
  const json c = json::parse(read_file(kModel / "config.json"));
  const int64_t hidden = c.at("hidden_size"), inter = c.at("intermediate_size");
  const int64_t layers = c.at("num_hidden_layers"), heads = c.at("num_attention_heads");
  const int64_t kv_heads = c.at("num_key_value_heads"), vocab = c.at("vocab_size");
  const int64_t head_dim = hidden / heads;
  const int64_t elt = 4;  // float32 on cpu
  const int64_t context = 32;
  const int64_t layer_bytes = elt * (2 * hidden + 2 * hidden * heads * head_dim +
                                     2 * hidden * kv_heads * head_dim + 3 * hidden * inter);
  const int64_t head_bytes = elt * (hidden + vocab * hidden);

  EXPECT_EQ(r.at("device").get<std::string>(), "cpu");
  EXPECT_EQ(r.at("dtype").get<std::string>(), "float32");
  EXPECT_EQ(r.at("peak").at("source").get<std::string>(), "measured");
  const double peak = r.at("peak").at("gbps").get<double>();
  EXPECT_GT(peak, 0.0);

  // full = all layers, 0.5 = half of them; batches 1 and 4 at each.
  const std::set<std::pair<int64_t, int64_t>> expected{
      {layers, 1}, {layers, 4}, {layers / 2, 1}, {layers / 2, 4}};
  std::set<std::pair<int64_t, int64_t>> seen;
  for (const json& row : r.at("decode")) {
    const int64_t depth = row.at("layers_loaded"), batch = row.at("batch");
    SCOPED_TRACE(row.dump());
    seen.insert({depth, batch});
    EXPECT_EQ(row.at("layers_total").get<int64_t>(), layers);
    EXPECT_EQ(row.at("step_ms").size(), 4u);
    EXPECT_GT(row.at("step_ms_median").get<double>(), 0.0);
    EXPECT_GT(row.at("tokens_per_second").get<double>(), 0.0);
    // Each row reads its context plus the new token's keys/values at every loaded layer.
    const int64_t kv_position = 2 * depth * kv_heads * head_dim * elt;
    const int64_t weights = depth * layer_bytes + head_bytes;
    const int64_t expected_bytes =
        weights + batch * hidden * elt + batch * (context + 1) * kv_position + batch * kv_position;
    EXPECT_EQ(row.at("bytes").at("layer_weights").get<int64_t>(), depth * layer_bytes);
    EXPECT_EQ(row.at("bytes").at("kv_read").get<int64_t>(), batch * (context + 1) * kv_position);
    EXPECT_EQ(row.at("bytes_per_step").get<int64_t>(), expected_bytes);
    const double fraction = row.at("fraction_of_peak").get<double>();
    EXPECT_GT(fraction, 0.0);
    // Past the memory roof only when the step's bytes stay in cache (the micro models do on
    // the CPU's fused step: about 3.5x here), and never by more than cache bandwidth allows.
    EXPECT_LT(fraction, row.at("fits_in_cache").get<bool>() ? 50.0 : 1.5);
    EXPECT_NEAR(row.at("achieved_gbps").get<double>() / peak, fraction, 1e-9);
  }
  EXPECT_EQ(seen, expected);

  std::set<int64_t> prefill_depths;
  for (const json& row : r.at("prefill")) {
    SCOPED_TRACE(row.dump());
    prefill_depths.insert(row.at("layers_loaded").get<int64_t>());
    EXPECT_EQ(row.at("tokens").get<int64_t>(), 64);
    EXPECT_GT(row.at("tflops").get<double>(), 0.0);
    EXPECT_GT(row.at("flops").get<double>(), 0.0);
  }
  EXPECT_EQ(prefill_depths, (std::set<int64_t>{layers, layers / 2}));
}

TEST(RooflineSmoke, UnknownModelExitsTwoNamingTheFlag) {
  const auto result = testing::run_command(roofline("--models no-such-model --peak-gbps 10"));
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("--models"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("no-such-model"), std::string::npos) << result.output;
}

TEST(RooflineSmoke, NonPositiveBatchExitsTwo) {
  const auto result =
      testing::run_command(roofline("--models llama-3.2-1b --batches 1,0 --peak-gbps 10"));
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("--batches"), std::string::npos) << result.output;
}

}  // namespace
}  // namespace helios
