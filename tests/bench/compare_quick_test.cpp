// bench/compare.sh --quick end to end on the micro zoo: every daemon starts and stops cleanly,
// every request of the drifting workload is served under every policy, and the result JSON
// holds complete, self-consistent figures for helios and each static baseline, with the plots.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "common/run_command.h"
#include "common/scratch_dir.h"
#include "helios/common/files.h"

namespace helios {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

double number(const json& j, const char* pointer) {
  const json& v = j.at(json::json_pointer(pointer));
  EXPECT_TRUE(v.is_number()) << pointer << " is " << v.dump();
  return v.is_number() ? v.get<double>() : 0.0;
}

void expect_percentiles(const json& run, const char* name) {
  SCOPED_TRACE(name);
  const json& p = run.at(name);
  ASSERT_TRUE(p.at("p50").is_number() && p.at("p95").is_number()) << p.dump();
  EXPECT_GT(p["p50"].get<double>(), 0.0);
  EXPECT_LE(p["p50"].get<double>(), p["p95"].get<double>());
}

TEST(CompareQuick, WritesACompleteSaneResultAndThePlots) {
  testing::ScratchDir dir("compare");
  const fs::path out = dir.path() / "out";
  const fs::path build = fs::path(HELIOS_BINARY).parent_path();
  const auto result = testing::run_command("HELIOS_BUILD_DIR='" + build.string() + "' bash '" +
                                           HELIOS_SOURCE_DIR "/bench/compare.sh' --quick --out '" +
                                           out.string() + "'");
  ASSERT_EQ(result.exit_code, 0) << result.output;

  const json r = json::parse(read_file(out / "result.json"));
  const size_t requests = r.at("workload").at("requests").get<size_t>();
  ASSERT_GT(requests, 50u);
  std::set<std::string> phases;
  for (const json& p : r["workload"]["phases"]) phases.insert(p.at("domain").get<std::string>());
  EXPECT_EQ(phases, (std::set<std::string>{"prose", "code", "mix"}));

  // helios and one static run per micro-zoo model.
  std::set<std::string> labels;
  for (const json& run : r.at("runs")) {
    const std::string label = run.at("label");
    SCOPED_TRACE(label);
    labels.insert(label);
    EXPECT_EQ(run.at("requests").get<size_t>(), requests);
    EXPECT_EQ(run.at("ok").get<size_t>(), requests) << run["failures"].dump();
    EXPECT_GT(number(run, "/throughput_tokens_per_s"), 0.0);
    EXPECT_GE(number(run, "/largest_batch"), 1.0);
    EXPECT_GE(number(run, "/kv_capacity_sequences/max"), number(run, "/kv_capacity_sequences/mean"));
    EXPECT_GE(number(run, "/mean_batch"), 1.0);
    expect_percentiles(run, "ttft_ms");
    expect_percentiles(run, "tpot_ms");
    expect_percentiles(run, "e2e_ms");
    // Every request's prompt was scored; a byte-level model beats the uniform 256.
    const double ppl = number(run, "/prompt_perplexity");
    EXPECT_GT(ppl, 1.0);
    EXPECT_LT(ppl, 256.0);
    EXPECT_EQ(run.at("energy").value("source", ""), "cpu_estimate");
    EXPECT_GT(number(run, "/energy/joules_per_token"), 0.0);
    // Each request generates its max_tokens or stops early; the counter saw at least those.
    EXPECT_GE(number(run, "/energy/generated_tokens"), number(run, "/output_tokens"));
    // A static run serves its one model throughout; helios follows the drift across models.
    if (label == "helios") {
      EXPECT_GT(run.at("models_served").size(), 1u);
    } else {
      EXPECT_EQ(run.at("models_served").size(), 1u);
      // The static policy has no controller, so no switch counter at all.
      EXPECT_TRUE(run.at("model_switches").is_null()) << run["model_switches"];
    }
  }
  EXPECT_EQ(labels, (std::set<std::string>{"helios", "static-code-micro", "static-mix-micro",
                                           "static-prose-micro"}));
  ASSERT_EQ(r.at("comparisons").size(), 3u);
  for (const json& c : r["comparisons"]) {
    for (const char* key : {"throughput", "largest_batch", "e2e_p95_lower",
                            "energy_per_token_lower", "perplexity_increase"}) {
      EXPECT_TRUE(c.at(key).is_number()) << key << " vs " << c["baseline"];
    }
  }
  // The best static baseline is the lowest-perplexity static run, and each target is judged.
  const json& best = r.at("best_static_baseline");
  double lowest = 1e300;
  for (const json& run : r["runs"]) {
    if (run["label"] != "helios") lowest = std::min(lowest, run["prompt_perplexity"].get<double>());
  }
  for (const json& run : r["runs"]) {
    if (run["label"] == best["label"]) EXPECT_EQ(run["prompt_perplexity"].get<double>(), lowest);
  }
  for (const char* key : {"throughput", "sequences_held_at_once", "p95_latency_lower",
                          "energy_per_token_lower", "perplexity_increase"}) {
    EXPECT_TRUE(best.at("targets").at(key).at("met").is_boolean()) << key;
  }
  for (const char* png : {"throughput.png", "batch.png", "kv_capacity.png", "latency.png",
                          "energy.png", "energy_per_token.png", "perplexity.png", "layers.png"}) {
    const fs::path path = out / "plots" / png;
    ASSERT_TRUE(fs::exists(path)) << png;
    EXPECT_GT(fs::file_size(path), 5000u) << png;
    EXPECT_EQ(read_file(path).substr(1, 3), "PNG") << png;
  }
  // The trace is a file that replays exactly: it lists every request once.
  std::ifstream trace(out / "workload.jsonl");
  size_t lines = 0;
  for (std::string line; std::getline(trace, line);) ++lines;
  EXPECT_EQ(lines, requests + 1);
}

}  // namespace
}  // namespace helios
