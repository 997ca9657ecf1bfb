// The daemon's log as an operator's pipeline reads it: JSON lines, one request_finished event
// per request with its figures, one controller_decision event per decision with its reason.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "serve/daemon_process.h"

namespace helios::testing {
namespace {

using nlohmann::json;

// Every line of the daemon's log, parsed; a line that is not a JSON object fails the test.
std::vector<json> json_lines(const std::string& log) {
  std::vector<json> lines;
  std::istringstream in(log);
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    const json parsed = json::parse(line, nullptr, /*allow_exceptions=*/false);
    EXPECT_TRUE(parsed.is_object()) << "not a JSON object: " << line;
    if (!parsed.is_object()) continue;
    EXPECT_TRUE(parsed.contains("ts") && parsed.contains("level")) << line;
    EXPECT_TRUE(parsed.contains("msg")) << line;
    lines.push_back(parsed);
  }
  return lines;
}

std::vector<json> events(const std::vector<json>& lines, const std::string& name) {
  std::vector<json> found;
  for (const json& line : lines) {
    if (line.value("event", "") == name) found.push_back(line);
  }
  return found;
}

TEST(DaemonLogs, JsonLinesWithOneLinePerFinishedRequest) {
  DaemonProcess daemon(daemon_config("prose-micro", {{"logging", {{"format", "json"}}}}));
  ASSERT_TRUE(daemon.wait_ready());
  auto stub = daemon.inference();
  const std::vector<std::string> prompts = test_prompts(3);
  std::map<std::string, StreamResult> results;
  for (size_t i = 0; i < prompts.size(); ++i) {
    v1::GenerateRequest request = greedy_request(prompts[i], 6 + static_cast<uint32_t>(i));
    request.set_request_id("log-test-" + std::to_string(i));
    results[request.request_id()] = generate(*stub, request);
    ASSERT_TRUE(results[request.request_id()].status.ok());
  }
  ASSERT_EQ(daemon.stop(), 0);

  const std::vector<json> lines = json_lines(daemon.log());
  const std::vector<json> finished = events(lines, "request_finished");
  ASSERT_EQ(finished.size(), prompts.size()) << daemon.log();
  for (const json& line : finished) {
    const std::string id = line.at("id");
    ASSERT_TRUE(results.contains(id)) << line;
    const v1::Usage& usage = results[id].usage;
    EXPECT_EQ(line.at("level"), "info");
    EXPECT_EQ(line.at("model"), "prose-micro");
    EXPECT_EQ(line.at("finish"), "length");
    EXPECT_EQ(line.at("prompt_tokens").get<int64_t>(), usage.prompt_tokens());
    EXPECT_EQ(line.at("output_tokens").get<int64_t>(), usage.completion_tokens());
    EXPECT_GT(line.at("ttft_ms").get<double>(), 0.0);
    EXPECT_GE(line.at("total_ms").get<double>(), line.at("ttft_ms").get<double>());
    EXPECT_NEAR(line.at("mean_exit_layer").get<double>(), usage.mean_exit_layer(), 1e-9);
    EXPECT_GE(line.at("mean_exit_layer").get<double>(), 1.0);
    EXPECT_LE(line.at("mean_exit_layer").get<double>(), line.at("layers").get<double>());
  }
}

TEST(DaemonLogs, TextLinesAndTheRequestSwitch) {
  {
    DaemonProcess daemon(daemon_config("prose-micro"));
    ASSERT_TRUE(daemon.wait_ready());
    v1::GenerateRequest request = greedy_request("The man", 3);
    request.set_request_id("text-log");
    ASSERT_TRUE(generate(*daemon.inference(), request).status.ok());
    ASSERT_EQ(daemon.stop(), 0);
    EXPECT_NE(daemon.log().find("[info] request finished: id=text-log model=prose-micro"),
              std::string::npos)
        << daemon.log();
  }
  DaemonProcess quiet(daemon_config("prose-micro", {{"logging", {{"requests", false}}}}));
  ASSERT_TRUE(quiet.wait_ready());
  ASSERT_TRUE(generate(*quiet.inference(), greedy_request("The man", 3)).status.ok());
  ASSERT_EQ(quiet.stop(), 0);
  EXPECT_EQ(quiet.log().find("request finished"), std::string::npos) << quiet.log();
}

TEST(DaemonLogs, EachControllerDecisionIsOneEventWithItsReason) {
  ScratchDir dir("slo");
  const auto slo_path = dir.path() / "slo.json";
  std::ofstream(slo_path) << json{
      {"objective", "throughput"},
      {"early_exit", {{"threshold", 0.3}}},
      {"controller", {{"candidates_top_k", 2}, {"profile_requests", 2}}},
      {"model_repository", kMicroZoo}}.dump();
  json config = daemon_config("prose-micro", {{"logging", {{"format", "json"}}},
                                              {"memory", {{"budget_mib", 4}}}});
  config["model"].erase("path");
  config["controller"] = {{"policy", "helios"}, {"slo_file", slo_path.string()}};
  DaemonProcess daemon(config);
  ASSERT_TRUE(daemon.wait_ready());
  auto stub = daemon.inference();
  // Requests until the start-up profile of both candidates ends in a decision (a request that
  // straddles a switch does not count towards a row, so how many that takes depends on the
  // timing), at most 64.
  // (Read from the raw text while the daemon writes: a last line may be incomplete.)
  const auto decided = [&] {
    std::istringstream in(daemon.log());
    for (std::string line; std::getline(in, line);) {
      if (line.find("\"event\":\"controller_decision\"") != std::string::npos &&
          line.find("\"kind\":\"profile\"") == std::string::npos) {
        return true;
      }
    }
    return false;
  };
  const std::vector<std::string> prompts = test_prompts(64);
  for (size_t i = 0; i < prompts.size() && !decided(); ++i) {
    ASSERT_TRUE(generate(*stub, greedy_request(prompts[i], 8)).status.ok());
  }
  ASSERT_EQ(daemon.stop(), 0);
  const std::vector<json> decisions = events(json_lines(daemon.log()), "controller_decision");
  ASSERT_FALSE(decisions.empty()) << daemon.log();
  bool serving_decision = false;
  for (const json& d : decisions) {
    for (const char* key : {"kind", "trigger", "to_model", "to_layers", "max_batch", "reason"}) {
      EXPECT_TRUE(d.contains(key)) << key << " missing in " << d;
    }
    EXPECT_FALSE(d.at("reason").get<std::string>().empty()) << d;
    serving_decision = serving_decision || d.at("kind") != "profile";
  }
  EXPECT_TRUE(serving_decision) << "only profiling decisions:\n" << daemon.log();
}

}  // namespace
}  // namespace helios::testing
