#include "helios/controller/slo_config.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <set>
#include <string>

#include "helios/common/error.h"
#include "helios/common/json_limits.h"
#include "helios/common/json_section.h"

namespace helios::controller {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

[[noreturn]] void fail(const std::string& key, const std::string& what) {
  JsonSection::fail(key, what);
}

std::string show(double value) { return fmt::format("{}", value); }

// The shared reader; a JSON null is a value here (only the latency constraints accept it,
// meaning "no constraint"; elsewhere it is a type error). Ranges are checked afterwards by
// SloConfig::validate, so hand-built configs get the same messages.
class Section : public JsonSection {
 public:
  Section(const json& root, std::string name) : JsonSection(root, std::move(name), Null::kValue) {}

  // A positive number, or null for "no constraint".
  void optional_positive(const std::string& key, std::optional<double>& out) {
    const json* v = find(key);
    if (v == nullptr) return;
    if (v->is_null()) {
      out.reset();
      return;
    }
    if (!v->is_number() || !std::isfinite(v->get<double>()) || !(v->get<double>() > 0)) {
      fail(path(key), "must be a positive number or null, got " + json_excerpt(*v));
    }
    out = v->get<double>();
  }
};

Objective parse_objective(const std::string& name) {
  for (const Objective o : {Objective::kThroughput, Objective::kLatency, Objective::kEnergy}) {
    if (objective_name(o) == name) return o;
  }
  fail("objective", "must be one of throughput, latency, energy, got \"" + name + "\"");
}

ProfileMode parse_profile_mode(const std::string& name) {
  for (const ProfileMode m : {ProfileMode::kServe, ProfileMode::kSample}) {
    if (profile_mode_name(m) == name) return m;
  }
  fail("controller.profile_mode", "must be one of serve, sample, got \"" + name + "\"");
}

void require(bool ok, const std::string& key, const std::string& requirement, double value) {
  if (!ok) fail(key, "must be " + requirement + ", got " + show(value));
}

SloConfig from_json(const json& root, const fs::path& base_dir) {
  if (!root.is_object()) fail("config", "must be a JSON object");
  SloConfig c;

  Section top(root, "");
  std::string objective(objective_name(c.objective));
  top.string("objective", objective);
  c.objective = parse_objective(objective);
  std::string repository;
  top.string("model_repository", repository);
  // The sections are read before the unknown-key check so their names count as known.
  Section constraints(root, "constraints");
  Section early_exit(root, "early_exit");
  Section controller(root, "controller");
  for (const char* section : {"constraints", "early_exit", "controller"}) top.find(section);
  top.check_unknown();

  constraints.number("max_perplexity_increase", c.max_perplexity_increase);
  constraints.optional_positive("p95_ttft_ms", c.p95_ttft_ms);
  constraints.optional_positive("p95_tpot_ms", c.p95_tpot_ms);
  constraints.check_unknown();

  early_exit.number("threshold", c.exit_threshold);
  early_exit.number("load_quantile", c.load_quantile);
  early_exit.check_unknown();

  controller.integer("candidates_top_k", c.candidates_top_k);
  controller.integer("profile_requests", c.profile_requests);
  controller.integer("evidence_prompts", c.evidence_prompts);
  std::string profile_mode(profile_mode_name(c.profile_mode));
  controller.string("profile_mode", profile_mode);
  c.profile_mode = parse_profile_mode(profile_mode);
  controller.number("max_evidence_share", c.max_evidence_share);
  controller.integer("reprofile_interval_requests", c.reprofile_interval_requests);
  controller.number("max_profiling_share", c.max_profiling_share);
  controller.number("switch_margin", c.switch_margin);
  controller.integer("resident_max_models", c.resident_max_models);
  controller.number("resident_min_share", c.resident_min_share);
  controller.number("resident_min_advantage", c.resident_min_advantage);
  controller.integer("breach_window_tokens", c.breach_window_tokens);
  controller.integer("breach_max", c.breach_max);
  controller.integer("drift_window_requests", c.drift_window_requests);
  controller.number("monitor_sample_rate", c.monitor_sample_rate);
  controller.check_unknown();

  c.validate();

  if (repository.empty()) fail("model_repository", "is required");
  const fs::path repo(repository);
  c.model_repository = (repo.is_absolute() ? repo : base_dir / repo).lexically_normal();
  std::error_code ec;
  if (!fs::is_directory(c.model_repository, ec)) {
    fail("model_repository", "must be an existing directory, got " + c.model_repository.string());
  }
  return c;
}

}  // namespace

std::string_view profile_mode_name(ProfileMode mode) {
  switch (mode) {
    case ProfileMode::kServe: return "serve";
    case ProfileMode::kSample: return "sample";
  }
  return "unknown";
}

std::string_view objective_name(Objective objective) {
  switch (objective) {
    case Objective::kThroughput: return "throughput";
    case Objective::kLatency: return "latency";
    case Objective::kEnergy: return "energy";
  }
  return "unknown";
}

SloConfig SloConfig::parse(std::string_view text, const fs::path& base_dir,
                           std::string_view source_name) {
  // Syntax errors carry nlohmann's "at line L, column C".
  const json root = parse_json(text, source_name, {.comments = true});
  return from_json(root, base_dir);
}

SloConfig SloConfig::from_file(const fs::path& path) {
  const std::string text = read_json_file(path);
  return parse(text, path.parent_path(), path.string());
}

void SloConfig::validate() const {
  const auto finite = [](double x) { return std::isfinite(x); };
  require(finite(max_perplexity_increase) && max_perplexity_increase >= 0,
          "constraints.max_perplexity_increase", "a number >= 0", max_perplexity_increase);
  if (p95_ttft_ms) {
    require(finite(*p95_ttft_ms) && *p95_ttft_ms > 0, "constraints.p95_ttft_ms",
            "a positive number or null", *p95_ttft_ms);
  }
  if (p95_tpot_ms) {
    require(finite(*p95_tpot_ms) && *p95_tpot_ms > 0, "constraints.p95_tpot_ms",
            "a positive number or null", *p95_tpot_ms);
  }
  require(finite(exit_threshold) && exit_threshold >= 0, "early_exit.threshold", "a number >= 0",
          exit_threshold);
  require(finite(load_quantile) && load_quantile > 0 && load_quantile <= 1,
          "early_exit.load_quantile", "in (0, 1]", load_quantile);
  const auto within = [](int64_t value, int64_t minimum, const std::string& key) {
    if (value < minimum || value > kMaxSloCount) {
      fail(key, "must be in [" + std::to_string(minimum) + ", " + std::to_string(kMaxSloCount) +
                    "], got " + std::to_string(value));
    }
  };
  within(candidates_top_k, 1, "controller.candidates_top_k");
  within(profile_requests, 1, "controller.profile_requests");
  if (evidence_prompts < 0 || evidence_prompts > kMaxEvidencePrompts) {
    fail("controller.evidence_prompts", "must be in [0, " + std::to_string(kMaxEvidencePrompts) +
                                            "], got " + std::to_string(evidence_prompts));
  }
  require(finite(max_evidence_share) && max_evidence_share > 0 && max_evidence_share <= 1,
          "controller.max_evidence_share", "in (0, 1]", max_evidence_share);
  if (profile_mode == ProfileMode::kSample && evidence_prompts == 0) {
    fail("controller.evidence_prompts",
         "must be > 0 with controller.profile_mode \"sample\" (the candidates are scored on "
         "the prompt sample), got 0");
  }
  within(reprofile_interval_requests, 0, "controller.reprofile_interval_requests");
  require(finite(max_profiling_share) && max_profiling_share > 0 && max_profiling_share <= 1,
          "controller.max_profiling_share", "in (0, 1]", max_profiling_share);
  require(finite(switch_margin) && switch_margin >= 0 && switch_margin <= 10,
          "controller.switch_margin", "in [0, 10]", switch_margin);
  if (resident_max_models < 1 || resident_max_models > static_cast<int64_t>(kMaxResidentModels)) {
    fail("controller.resident_max_models", "must be in [1, " + std::to_string(kMaxResidentModels) +
                                               "], got " + std::to_string(resident_max_models));
  }
  require(finite(resident_min_share) && resident_min_share >= 0 && resident_min_share <= 0.5,
          "controller.resident_min_share", "in [0, 0.5]", resident_min_share);
  require(finite(resident_min_advantage) && resident_min_advantage >= 0 &&
              resident_min_advantage <= 10,
          "controller.resident_min_advantage", "in [0, 10]", resident_min_advantage);
  within(breach_window_tokens, 1, "controller.breach_window_tokens");
  if (breach_max < 1 || breach_max > breach_window_tokens) {
    fail("controller.breach_max", "must be in [1, controller.breach_window_tokens = " +
                                      std::to_string(breach_window_tokens) + "], got " +
                                      std::to_string(breach_max));
  }
  within(drift_window_requests, 4, "controller.drift_window_requests");
  require(finite(monitor_sample_rate) && monitor_sample_rate >= 0 && monitor_sample_rate <= 1,
          "controller.monitor_sample_rate", "in [0, 1]", monitor_sample_rate);
}

nlohmann::json SloConfig::to_json() const {
  const auto optional = [](const std::optional<double>& v) { return v ? json(*v) : json(nullptr); };
  return json{
      {"objective", objective_name(objective)},
      {"constraints",
       {{"max_perplexity_increase", max_perplexity_increase},
        {"p95_ttft_ms", optional(p95_ttft_ms)},
        {"p95_tpot_ms", optional(p95_tpot_ms)}}},
      {"early_exit", {{"threshold", exit_threshold}, {"load_quantile", load_quantile}}},
      {"controller",
       {{"candidates_top_k", candidates_top_k},
        {"profile_requests", profile_requests},
        {"evidence_prompts", evidence_prompts},
        {"profile_mode", profile_mode_name(profile_mode)},
        {"max_evidence_share", max_evidence_share},
        {"reprofile_interval_requests", reprofile_interval_requests},
        {"max_profiling_share", max_profiling_share},
        {"switch_margin", switch_margin},
        {"resident_max_models", resident_max_models},
        {"resident_min_share", resident_min_share},
        {"resident_min_advantage", resident_min_advantage},
        {"breach_window_tokens", breach_window_tokens},
        {"breach_max", breach_max},
        {"drift_window_requests", drift_window_requests},
        {"monitor_sample_rate", monitor_sample_rate}}},
      {"model_repository", model_repository.string()},
  };
}

bool looks_like_slo_config(const nlohmann::json& root) {
  return root.is_object() &&
         (root.contains("objective") || root.contains("model_repository") ||
          root.contains("constraints"));
}

}  // namespace helios::controller
