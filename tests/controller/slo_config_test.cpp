#include "helios/controller/slo_config.h"

#include <nlohmann/json.hpp>

#include <fstream>

#include "common/expect_error.h"
#include "common/scratch_dir.h"

namespace helios::controller {
namespace {

using helios::testing::expect_error;
using helios::testing::ScratchDir;
using nlohmann::json;
namespace fs = std::filesystem;

class SloConfigTest : public ::testing::Test {
 protected:
  SloConfigTest() { fs::create_directories(scratch_.path() / "zoo"); }

  SloConfig parse(const std::string& text) {
    return SloConfig::parse(text, scratch_.path() / "configs", "slo.json");
  }
  // A config with `key` (dotted path) set to `value`, and the repository that exists.
  std::string with(const std::string& section, const std::string& key, const json& value) {
    json root = {{"model_repository", "../zoo"}};
    if (section.empty()) {
      root[key] = value;
    } else {
      root[section][key] = value;
    }
    return root.dump();
  }

  ScratchDir scratch_{"slo"};
};

TEST_F(SloConfigTest, DefaultsWithCommentsAndRelativeRepository) {
  const SloConfig c = parse(R"(// the operator's notes
    { /* block comment */ "model_repository": "../zoo" // trailing
    })");
  EXPECT_EQ(c.objective, Objective::kThroughput);
  EXPECT_DOUBLE_EQ(c.max_perplexity_increase, 0.05);
  EXPECT_FALSE(c.p95_ttft_ms.has_value());
  EXPECT_FALSE(c.p95_tpot_ms.has_value());
  EXPECT_DOUBLE_EQ(c.exit_threshold, 0.5);
  EXPECT_DOUBLE_EQ(c.load_quantile, 0.8);
  EXPECT_EQ(c.candidates_top_k, 3);
  EXPECT_EQ(c.profile_requests, 5);
  EXPECT_EQ(c.evidence_prompts, 16);
  EXPECT_EQ(c.profile_mode, ProfileMode::kServe);
  EXPECT_DOUBLE_EQ(c.max_evidence_share, 0.1);
  EXPECT_EQ(c.reprofile_interval_requests, 150);
  EXPECT_DOUBLE_EQ(c.max_profiling_share, 0.1);
  EXPECT_DOUBLE_EQ(c.switch_margin, 0.05);
  EXPECT_EQ(c.resident_max_models, 1);
  EXPECT_DOUBLE_EQ(c.resident_min_share, 0.1);
  EXPECT_DOUBLE_EQ(c.resident_min_advantage, 0.05);
  EXPECT_EQ(c.breach_window_tokens, 100);
  EXPECT_EQ(c.breach_max, 50);
  EXPECT_EQ(c.drift_window_requests, 32);
  EXPECT_DOUBLE_EQ(c.monitor_sample_rate, 0.25);
  EXPECT_EQ(c.model_repository, (scratch_.path() / "zoo").lexically_normal());
}

TEST_F(SloConfigTest, EveryKeyIsReadAndRoundTrips) {
  const SloConfig c = parse(R"({
    "objective": "latency",
    "constraints": {"max_perplexity_increase": 0.1, "p95_ttft_ms": 250, "p95_tpot_ms": 2.5},
    "early_exit": {"threshold": 0.7, "load_quantile": 0.9},
    "controller": {"candidates_top_k": 2, "profile_requests": 7, "evidence_prompts": 32,
                   "profile_mode": "sample", "max_evidence_share": 0.5,
                   "reprofile_interval_requests": 0, "max_profiling_share": 0.25,
                   "switch_margin": 0, "breach_window_tokens": 40,
                   "breach_max": 40, "drift_window_requests": 4, "monitor_sample_rate": 1},
    "model_repository": ")" + (scratch_.path() / "zoo").string() + R"("})");
  EXPECT_EQ(c.objective, Objective::kLatency);
  EXPECT_DOUBLE_EQ(*c.p95_ttft_ms, 250);
  EXPECT_DOUBLE_EQ(*c.p95_tpot_ms, 2.5);
  EXPECT_DOUBLE_EQ(c.exit_threshold, 0.7);
  EXPECT_EQ(c.evidence_prompts, 32);
  EXPECT_EQ(c.profile_mode, ProfileMode::kSample);
  EXPECT_DOUBLE_EQ(c.max_evidence_share, 0.5);
  EXPECT_EQ(c.reprofile_interval_requests, 0);
  EXPECT_DOUBLE_EQ(c.max_profiling_share, 0.25);
  EXPECT_DOUBLE_EQ(c.switch_margin, 0.0);
  EXPECT_EQ(c.breach_max, 40);
  EXPECT_EQ(c.drift_window_requests, 4);
  EXPECT_EQ(SloConfig::parse(c.to_json().dump(), "/elsewhere", "again"), c);
  EXPECT_EQ(c.to_json()["constraints"]["p95_ttft_ms"], 250);
  EXPECT_TRUE(parse(with("", "objective", "energy")).objective == Objective::kEnergy);
}

TEST_F(SloConfigTest, ErrorsStartWithTheKey) {
  struct Case {
    std::string text;
    std::string prefix;
  };
  const std::vector<Case> cases = {
      {with("", "objective", "speed"), "objective: must be one of throughput, latency, energy"},
      {with("constraints", "p95_tpot_ms", -3),
       "constraints.p95_tpot_ms: must be a positive number or null, got -3"},
      {with("constraints", "p95_ttft_ms", 0), "constraints.p95_ttft_ms:"},
      {with("constraints", "max_perplexity_increase", -0.1),
       "constraints.max_perplexity_increase:"},
      {with("early_exit", "threshold", -1), "early_exit.threshold:"},
      {with("early_exit", "load_quantile", 0), "early_exit.load_quantile:"},
      {with("early_exit", "load_quantile", 1.5), "early_exit.load_quantile:"},
      {with("controller", "candidates_top_k", 0), "controller.candidates_top_k:"},
      {with("controller", "candidates_top_k", 2.5), "controller.candidates_top_k: must be an integer"},
      {with("controller", "profile_requests", 0), "controller.profile_requests:"},
      {with("controller", "evidence_prompts", -1), "controller.evidence_prompts: must be in [0, 1024]"},
      {with("controller", "evidence_prompts", 1025), "controller.evidence_prompts: must be in [0, 1024]"},
      {with("controller", "profile_mode", "live"),
       "controller.profile_mode: must be one of serve, sample, got \"live\""},
      {with("controller", "max_evidence_share", 0), "controller.max_evidence_share: must be in (0, 1]"},
      {R"({"model_repository": "../zoo", "controller": {"profile_mode": "sample", "evidence_prompts": 0}})",
       "controller.evidence_prompts: must be > 0 with controller.profile_mode \"sample\""},
      {with("controller", "reprofile_interval_requests", -1),
       "controller.reprofile_interval_requests:"},
      {with("controller", "max_profiling_share", 0), "controller.max_profiling_share:"},
      {with("controller", "max_profiling_share", 1.5), "controller.max_profiling_share:"},
      {with("controller", "switch_margin", -0.1), "controller.switch_margin:"},
      {with("controller", "switch_margin", 11), "controller.switch_margin:"},
      {with("controller", "resident_max_models", 0), "controller.resident_max_models: must be in [1, 4]"},
      {with("controller", "resident_max_models", 5), "controller.resident_max_models: must be in [1, 4]"},
      {with("controller", "resident_min_share", 0.6), "controller.resident_min_share: must be in [0, 0.5]"},
      {with("controller", "resident_min_advantage", -1), "controller.resident_min_advantage:"},
      {with("controller", "breach_window_tokens", 0), "controller.breach_window_tokens:"},
      {with("controller", "breach_max", 101), "controller.breach_max:"},
      {with("controller", "breach_max", 0), "controller.breach_max:"},
      {with("controller", "drift_window_requests", 3), "controller.drift_window_requests:"},
      {with("controller", "monitor_sample_rate", 1.01), "controller.monitor_sample_rate:"},
      {with("controller", "monitor_sample_rate", "often"), "controller.monitor_sample_rate:"},
      {with("controller", "breach_maximum", 3), "controller.breach_maximum: unknown key"},
      {with("", "objectives", "latency"), "objectives: unknown key"},
      {with("", "constraints", 5), "constraints: must be an object"},
      {R"({"objective": "latency"})", "model_repository: is required"},
  };
  for (const Case& c : cases) {
    try {
      parse(c.text);
      ADD_FAILURE() << "accepted " << c.text;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_EQ(std::string(e.what()).rfind(c.prefix, 0), 0u)
          << "message \"" << e.what() << "\" does not start with \"" << c.prefix << "\"";
    }
  }
}

TEST_F(SloConfigTest, SyntaxErrorsNameTheSourceAndLine) {
  expect_error([&] { parse("{\n  \"objective\": \"latency\",\n  oops\n}"); },
               ErrorCode::kInvalidArgument, {"slo.json", "line 3"});
}

TEST_F(SloConfigTest, RepositoryMustBeADirectory) {
  expect_error([&] { parse(R"({"model_repository": "../missing"})"); },
               ErrorCode::kInvalidArgument,
               {"model_repository", (scratch_.path() / "missing").string()});
  std::ofstream(scratch_.path() / "file") << "x";
  expect_error([&] { parse(R"({"model_repository": "../file"})"); },
               ErrorCode::kInvalidArgument, {"model_repository"});
}

TEST_F(SloConfigTest, FromFileResolvesAgainstTheFileAndNamesMissingFiles) {
  fs::create_directories(scratch_.path() / "configs");
  const fs::path file = scratch_.path() / "configs" / "slo.json";
  std::ofstream(file) << R"({"model_repository": "../zoo", "objective": "energy"})";
  const SloConfig c = SloConfig::from_file(file);
  EXPECT_EQ(c.objective, Objective::kEnergy);
  EXPECT_EQ(c.model_repository, (scratch_.path() / "zoo").lexically_normal());
  const fs::path missing = scratch_.path() / "configs" / "nope.json";
  expect_error([&] { SloConfig::from_file(missing); }, ErrorCode::kNotFound, {missing.string()});
}

TEST_F(SloConfigTest, TheShippedExampleParses) {
  // configs/slo.json points at ../zoo, which exists only after scripts/build_zoo.sh; parse its
  // text against a base whose ../zoo exists instead.
  std::ifstream in(std::string(HELIOS_SOURCE_DIR) + "/configs/slo.json");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // The defaults, except the early-exit settings tuned for the byte-level zoo.
  SloConfig expected;
  expected.model_repository = (scratch_.path() / "zoo").lexically_normal();
  expected.exit_threshold = 0.3;
  expected.load_quantile = 0.7;
  EXPECT_EQ(parse(text), expected);
}

TEST(SloConfigDetection, TellsSloFilesFromServerConfigs) {
  EXPECT_TRUE(looks_like_slo_config(json{{"objective", "latency"}}));
  EXPECT_TRUE(looks_like_slo_config(json{{"model_repository", "zoo"}}));
  EXPECT_TRUE(looks_like_slo_config(json{{"constraints", json::object()}}));
  EXPECT_FALSE(looks_like_slo_config(json{{"model", {{"path", "m"}}}}));
  EXPECT_FALSE(looks_like_slo_config(json::array()));
}

TEST_F(SloConfigTest, CountsAndWindowsAreBoundedAbove) {
  for (const char* key : {"candidates_top_k", "profile_requests", "reprofile_interval_requests",
                          "breach_window_tokens", "drift_window_requests"}) {
    SCOPED_TRACE(key);
    expect_error([&] { parse(with("controller", key, 1'000'001)); }, ErrorCode::kInvalidArgument,
                 {std::string("controller.") + key, "1000000]", "got 1000001"});
    json at_limit = json::parse(with("controller", key, 1'000'000));
    EXPECT_NO_THROW(parse(at_limit.dump()));
  }
  // A hand-built config gets the same bound from validate().
  SloConfig c;
  c.drift_window_requests = int64_t{1} << 40;
  expect_error([&] { c.validate(); }, ErrorCode::kInvalidArgument,
               {"controller.drift_window_requests"});
}

TEST_F(SloConfigTest, UnsignedValuesPastInt64MaxDoNotWrap) {
  std::string text = with("controller", "breach_window_tokens", 0);
  text.replace(text.find("\"breach_window_tokens\":0"), 24,
               "\"breach_window_tokens\":18446744073709551615");
  expect_error([&] { parse(text); }, ErrorCode::kInvalidArgument,
               {"controller.breach_window_tokens", "18446744073709551615 is out of range"});
}

TEST_F(SloConfigTest, DeeplyNestedValuesAreRefusedNotDumped) {
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  expect_error(
      [&] {
        parse(R"({"model_repository": "../zoo", "constraints": {"p95_tpot_ms": )" + deep + "}}");
      },
      ErrorCode::kInvalidArgument, {"slo.json", "64 levels"});
  expect_error([&] { parse(with("constraints", "p95_tpot_ms", json::parse("[[1, 2]]"))); },
               ErrorCode::kInvalidArgument,
               {"constraints.p95_tpot_ms: must be a positive number or null, got [[... 2 items]]"});
}

}  // namespace
}  // namespace helios::controller
