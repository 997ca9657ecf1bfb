#include "helios/serve/server_config.h"

#include <nlohmann/json.hpp>

#include <fstream>

#include "common/expect_error.h"
#include "common/scratch_dir.h"

namespace helios::serve {
namespace {

using helios::testing::expect_error;
using nlohmann::json;

TEST(ServerConfig, DefaultsAndRelativeModelPath) {
  const ServerConfig c = ServerConfig::from_json(json{{"model", {{"path", "zoo/m"}}}}, "/etc/h");
  EXPECT_EQ(c.model_path, std::filesystem::path("/etc/h/zoo/m"));
  EXPECT_EQ(c.grpc_address, "127.0.0.1:50051");
  EXPECT_EQ(c.http_port, 9464);
  EXPECT_EQ(c.limits.max_running, 64);
  EXPECT_EQ(c.memory_budget_bytes, int64_t{256} << 20);
  EXPECT_EQ(c.energy_source, "auto");
  EXPECT_TRUE(c.cuda_graphs);
  EXPECT_FALSE(ServerConfig::from_json(
                   json{{"model", {{"path", "m"}, {"cuda_graphs", false}}}}, "/etc/h")
                   .cuda_graphs);
  // to_json round-trips.
  const ServerConfig again = ServerConfig::from_json(c.to_json(), "/elsewhere");
  EXPECT_EQ(again.to_json(), c.to_json());
}

TEST(ServerConfig, TheShippedConfigsParse) {
  const ServerConfig helios =
      ServerConfig::from_file(std::string(HELIOS_SOURCE_DIR) + "/configs/server.json");
  EXPECT_EQ(helios.policy, "helios");
  EXPECT_EQ(helios.slo_file.filename(), "slo.json");
  const ServerConfig baseline =
      ServerConfig::from_file(std::string(HELIOS_SOURCE_DIR) + "/configs/server-static.json");
  EXPECT_EQ(baseline.policy, "static");
  EXPECT_EQ(baseline.model_path.filename(), "mix-l");
}

TEST(ServerConfig, PolicyKeysAreChecked) {
  const auto error_of = [](const json& config) {
    try {
      ServerConfig::from_json(config, "/etc/h");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(error_of(json{{"controller", {{"policy", "helios"}}}})
                .rfind("controller.slo_file: is required", 0),
            0u);
  EXPECT_EQ(error_of(json{{"model", {{"path", "m"}}},
                          {"controller", {{"policy", "helios"}, {"slo_file", "slo.json"}}}})
                .rfind("model.path: must not be set", 0),
            0u);
  EXPECT_EQ(error_of(json{{"model", {{"path", "m"}}}, {"controller", {{"policy", "adaptive"}}}})
                .rfind("controller.policy: must be one of", 0),
            0u);
  EXPECT_EQ(error_of(json{{"model", {{"path", "m"}, {"cuda_graphs", "yes"}}}})
                .rfind("model.cuda_graphs: must be true or false", 0),
            0u);
  EXPECT_EQ(error_of(json{{"model", {{"path", "m"}}}, {"admin", {{"tokn", "x"}}}})
                .rfind("admin.tokn: unknown key", 0),
            0u);
  const ServerConfig c = ServerConfig::from_json(
      json{{"controller", {{"policy", "helios"}, {"slo_file", "slo.json"}}}}, "/etc/h");
  EXPECT_EQ(c.slo_file, std::filesystem::path("/etc/h/slo.json"));
}

TEST(ServerConfig, ErrorsNameTheKey) {
  const json model = {{"path", "m"}};
  struct Case {
    json config;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {json{{"model", model}, {"schedular", json::object()}}, "schedular: unknown section"},
      {json{{"model", model}, {"scheduler", {{"max_batch_token", 8}}}},
       "scheduler.max_batch_token: unknown key"},
      {json{{"model", model}, {"scheduler", {{"max_running_requests", 0}}}},
       "scheduler.max_running_requests"},
      {json{{"model", model}, {"scheduler", {{"max_running_requests", 64}, {"max_batch_tokens", 8}}}},
       "scheduler.max_batch_tokens"},
      {json{{"model", model}, {"memory", {{"budget_mib", "lots"}}}}, "memory.budget_mib"},
      {json{{"model", {{"dtype", "int4"}, {"path", "m"}}}}, "model.dtype"},
      {json{{"model", model}, {"grpc", {{"address", "localhost"}}}}, "grpc.address"},
      {json{{"model", model}, {"metrics", {{"queue_time_buckets_seconds", {1, 0.5}}}}},
       "metrics.queue_time_buckets_seconds"},
      {json{{"early_exit", {{"threshold", 0.5}}}}, "model.path: is required"},
      {json{{"model", model}, {"early_exit", {{"metric", "vibes"}}}}, "early_exit.metric"},
      {json{{"model", model}, {"energy", {{"source", "rapl"}}}},
       "energy.source: must be one of auto, cpu_estimate, nvml"},
      {json{{"model", model}, {"energy", {{"source", "nvml"}}}}, "energy.source: \"nvml\" needs"},
      {json{{"model", model}, {"energy", {{"cpu_watts_per_core", -1}}}},
       "energy.cpu_watts_per_core"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.config.dump());
    expect_error([&] { ServerConfig::from_json(c.config, "."); }, ErrorCode::kInvalidArgument,
                 {c.needle});
  }
}

TEST(ServerConfig, EnergySource) {
  const json model = {{"path", "m"}};
  for (const char* source : {"auto", "cpu_estimate"}) {
    const ServerConfig c =
        ServerConfig::from_json(json{{"model", model}, {"energy", {{"source", source}}}}, ".");
    EXPECT_EQ(c.energy_source, source);
    EXPECT_EQ(c.to_json()["energy"]["source"], source);
  }
  // On a GPU "nvml" is a valid choice; whether NVML answers is found out at start.
  const ServerConfig gpu = ServerConfig::from_json(
      json{{"model", {{"path", "m"}, {"device", "cuda:1"}}}, {"energy", {{"source", "nvml"}}}},
      ".");
  EXPECT_EQ(gpu.energy_source, "nvml");
  EXPECT_EQ(ServerConfig::from_json(gpu.to_json(), ".").energy_source, "nvml");
}

TEST(ServerConfig, FileErrorsNameTheFile) {
  helios::testing::ScratchDir dir("config");
  const auto path = dir.path() / "bad.json";
  std::ofstream(path) << "{ not json";
  expect_error([&] { ServerConfig::from_file(path); }, ErrorCode::kInvalidArgument,
               {path.string(), "invalid JSON"});
  std::ofstream(path) << R"({"model": {"path": "m", "max_layers": -1}})";
  expect_error([&] { ServerConfig::from_file(path); }, ErrorCode::kInvalidArgument,
               {path.string(), "model.max_layers"});
}

// Errors of ServerConfig::parse on `text`, or "" when it parses.
std::string parse_error(const std::string& text) {
  try {
    ServerConfig::parse(text, "/etc/h", "server.json");
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
    return e.what();
  }
  return "";
}

TEST(ServerConfig, UnsignedValuesPastInt64MaxDoNotWrap) {
  // 2^64-1 read as int64 is -1, which would silently disable the HTTP endpoint.
  EXPECT_EQ(parse_error(R"({"model": {"path": "m"}, "http": {"port": 18446744073709551615}})"),
            "server.json: http.port: 18446744073709551615 is out of range");
  EXPECT_NE(parse_error(R"({"model": {"path": "m"}, "scheduler": {"max_batch_tokens":
            9223372036854775808}})")
                .find("scheduler.max_batch_tokens: 9223372036854775808 is out of range"),
            std::string::npos);
}

TEST(ServerConfig, EveryIntegerKeyIsRangeChecked) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"("grpc": {"max_message_bytes": 4294967296})", "grpc.max_message_bytes: must be in"},
      {R"("http": {"port": 65536})", "http.port: must be in [-1, 65535]"},
      {R"("http": {"port": -2})", "http.port: must be in [-1, 65535]"},
      {R"("memory": {"kv_block_size": 0})", "memory.kv_block_size: must be in [1, 1024]"},
      {R"("scheduler": {"max_running_requests": 0})", "scheduler.max_running_requests"},
      {R"("scheduler": {"max_queued_requests": 0})",
       "scheduler.max_queued_requests: must be in [1, 1048576], got 0"},
      {R"("scheduler": {"max_prompt_tokens": 100000000})", "scheduler.max_prompt_tokens"},
      {R"("scheduler": {"max_stop_bytes": 0})", "scheduler.max_stop_bytes"},
      {R"("controller": {"decisions_kept": 0})", "controller.decisions_kept"},
  };
  for (const auto& [section, needle] : cases) {
    SCOPED_TRACE(section);
    const std::string error = parse_error(R"({"model": {"path": "m"}, )" + section + "}");
    EXPECT_NE(error.find(needle), std::string::npos) << error;
  }
}

TEST(ServerConfig, DeeplyNestedValuesAreRefusedNotDumped) {
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  const std::string error = parse_error(R"({"model": {"path": "m"}, "http": {"port": )" + deep +
                                        "}}");
  EXPECT_NE(error.find("server.json"), std::string::npos) << error;
  EXPECT_NE(error.find("64 levels"), std::string::npos) << error;
  // Nested within the limit, a type error shows a bounded excerpt.
  EXPECT_EQ(parse_error(R"({"model": {"path": "m"}, "http": {"port": [[1, 2], 3]}})"),
            "server.json: http.port: must be an integer, got [[... 2 items], 3]");
}

TEST(ServerConfig, NumbersPastDoubleRangeAreAnError) {
  // nlohmann reports these as out_of_range, not parse_error: still a helios::Error.
  const std::string error = parse_error(R"({"memory": {"budget_mib": 1e400}})");
  EXPECT_NE(error.find("server.json: invalid JSON"), std::string::npos) << error;
}

TEST(ServerConfig, ParseAcceptsCommentsAndResolvesAgainstBaseDir) {
  const ServerConfig c = ServerConfig::parse("// notes\n{\"model\": {\"path\": \"m\"}}", "/etc/h",
                                             "server.json");
  EXPECT_EQ(c.model_path, std::filesystem::path("/etc/h/m"));
}

}  // namespace
}  // namespace helios::serve
