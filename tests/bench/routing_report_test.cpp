// `helios_compare routing` on synthetic runs: the per-request oracle, the routing accuracy, and
// the perplexity of the requests a resident set served start to finish, apart from those a
// profiling pass's candidates served before it.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "common/run_command.h"
#include "common/scratch_dir.h"
#include "helios/common/files.h"

namespace helios {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

json request(int64_t index, double sent, double done, const std::string& model, double ppl) {
  return {{"index", index},         {"phase", "0-mix"},     {"ok", true},
          {"sent_s", sent},         {"done_s", done},       {"output_tokens", 10},
          {"ttft_ms", 50.0},        {"model", model},       {"prompt_perplexity", ppl},
          {"prompt_scored_tokens", 10}};
}

// A static run of `model`: request i at perplexity ppls[i].
json static_run(const std::string& model, const std::vector<double>& ppls) {
  json requests = json::array();
  for (size_t i = 0; i < ppls.size(); ++i) {
    requests.push_back(request(static_cast<int64_t>(i), 0.1 * i, 0.1 * i + 1, model, ppls[i]));
  }
  return {{"label", "static-" + model},
          {"requests", requests},
          {"status_samples", json::array({{{"t", 0.0}, {"model", model}, {"total_layers", 4}}})},
          {"counter_samples", json::array()}};
}

TEST(RoutingReport, TheSetIsJudgedOnTheRequestsItServedApartFromThePass) {
  testing::ScratchDir dir("routing");
  const auto write = [&](const std::string& name, const json& j) {
    std::ofstream(dir.path() / name) << j.dump();
    return (dir.path() / name).string();
  };
  // Request 0 is served by a's profiling stint before the set; 1-3 by the set {a, b}, which
  // sends 3 to a although b scores it lower. Request 1 was sent before the set served, and
  // queued: its first token came from the set.
  const std::string a = write("a.json", static_run("a", {10, 4, 6, 9}));
  const std::string b = write("b.json", static_run("b", {5, 8, 3, 6}));
  const json member = {{"model", "a"}, {"routed", 0}}, other = {{"model", "b"}, {"routed", 0}};
  const json routed = {
      {"label", "helios-resident"},
      {"requests", json::array({request(0, 0.1, 0.5, "a", 100), request(1, 0.96, 2.0, "a", 4),
                                request(2, 1.5, 2.5, "b", 3), request(3, 2.0, 2.8, "a", 9)})},
      {"status_samples",
       json::array({{{"t", 0.0}, {"model", "a"}},
                    {{"t", 1.0}, {"model", "a"}, {"resident", json::array({member, other})}},
                    {{"t", 3.0}, {"model", "a"}, {"resident", json::array({member, other})}},
                    {{"t", 3.5}, {"model", "a"}}})},
      {"counter_samples", json::array()}};
  const std::string r = write("routed.json", routed);
  const fs::path out = dir.path() / "report.json";
  const auto result = testing::run_command(std::string(HELIOS_COMPARE_BINARY) + " routing '" + a +
                                           "' '" + b + "' '" + r +
                                           "' --routed helios-resident --phase 0-mix --out '" +
                                           out.string() + "'");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const json report = json::parse(read_file(out));
  EXPECT_EQ(report["members"], json::array({"a", "b"}));
  EXPECT_NEAR(report["oracle_prompt_perplexity"].get<double>(), std::pow(5.0 * 4 * 3 * 6, 0.25),
              1e-9);
  EXPECT_NEAR(report["perplexity_vs_oracle"].get<double>(),
              std::pow(100.0 * 4 * 3 * 9 / (5.0 * 4 * 3 * 6), 0.25) - 1, 1e-9);
  EXPECT_EQ(report["set_served_requests"], 3);
  EXPECT_NEAR(report["set_perplexity_vs_oracle"].get<double>(),
              std::cbrt(4.0 * 3 * 9 / (4.0 * 3 * 6)) - 1, 1e-9);
  EXPECT_EQ(report["routed_run"]["routing_judged"], 4);
  EXPECT_DOUBLE_EQ(report["routed_run"]["routing_accuracy"].get<double>(), 0.5);
  EXPECT_EQ(report["best_static"]["model"], "b");
  EXPECT_NE(result.output.find("+14.5% on the 3 requests the set served from their first token"),
            std::string::npos)
      << result.output;
}

}  // namespace
}  // namespace helios
