#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string_view>

namespace helios::controller {

// Largest value of every count and window in the SLO file's controller section: 1,000,000.
// Windows are allocated whole, so a larger one is refused at parse time rather than failing
// an allocation in the controller.
inline constexpr int64_t kMaxSloCount = 1'000'000;
// Most evidence prompts (controller.evidence_prompts), and the tokens kept of each (BOS
// included): scoring them costs one teacher-forced forward of every candidate.
inline constexpr int64_t kMaxEvidencePrompts = 1024;
inline constexpr int64_t kEvidencePromptTokens = 512;
// Off-path rows (profile mode "sample") also continue this many prompts of the sample (spread
// over it) by this many tokens each, early-exit greedy from their last
// kEvidenceContinuationContext tokens, for where generated tokens leave the network.
inline constexpr int64_t kEvidenceContinuationPrompts = 8;
inline constexpr int64_t kEvidenceContinuationTokens = 8;
inline constexpr int64_t kEvidenceContinuationContext = 64;

// What the controller maximises among the options that meet every constraint.
enum class Objective { kThroughput, kLatency, kEnergy };
std::string_view objective_name(Objective objective);

// How a profiling pass fills the Performance History Table.
//  kServe: each shortlisted candidate serves the next profile_requests live requests at full
//          depth in turn (the HELIOS paper's profiling; its rows are measured, the users pay
//          for the slower candidates and for a batch recompute at every switch).
//  kSample: the served model keeps serving; after profile_requests of its requests the pass
//          scores every candidate on the shared prompt sample off the engine's path (streamed,
//          one decoder layer resident), and predicts each candidate's serving figures from the
//          served model's live ones by the ratio of their per-token work.
enum class ProfileMode { kServe, kSample };
std::string_view profile_mode_name(ProfileMode mode);

// The operator's SLO file (JSON with comments; configs/slo.json documents every key). Every key
// but model_repository is optional; unknown keys are errors so a typo never leaves a default
// silently in place. Every error is helios::Error(kInvalidArgument) whose message starts with
// the dotted key, e.g. "constraints.p95_tpot_ms: must be a positive number or null, got -3".
// The most models a resident set holds (an operator's pin or the controller's choice).
inline constexpr size_t kMaxResidentModels = 4;

struct SloConfig {
  Objective objective = Objective::kThroughput;
  // constraints
  double max_perplexity_increase = 0.05;  // relative to the best full-depth perplexity
  std::optional<double> p95_ttft_ms;      // unset: no constraint
  std::optional<double> p95_tpot_ms;
  // early_exit
  double exit_threshold = 0.5;
  double load_quantile = 0.8;  // share of generated tokens the loaded depth must cover
  // controller
  int64_t candidates_top_k = 3;
  int64_t profile_requests = 5;
  // Same-prompt quality evidence: every candidate of a profiling pass is scored teacher-forced
  // on the same recent live prompts (at most this many, each cut to kEvidencePromptTokens), so
  // the prompts' difficulty cancels out of the comparison. 0: each candidate's quality comes
  // from the live requests it served while profiled (different prompts per candidate).
  int64_t evidence_prompts = 16;
  ProfileMode profile_mode = ProfileMode::kServe;
  // kSample: the scoring of the candidates takes at most this share of the wall time while it
  // runs (after scoring one for t seconds the next waits t * (1 - share) / share), so the
  // engine keeps most of the machine.
  double max_evidence_share = 0.1;
  int64_t reprofile_interval_requests = 150;  // 0 = never
  // Periodic re-profiles wait until the time spent profiling stays under this share of the
  // wall time (a pass that took t seconds is followed by at least t * (1 - share) / share
  // seconds of serving); 1 = no cap. Drift, breaches and edits re-profile regardless.
  double max_profiling_share = 0.1;
  // A change of model or depth that the ranking prefers is made only when the lower end of its
  // predicted gain's 90% interval (paired bootstrap over the sample's prompts) exceeds this
  // relative margin plus the switch's cost share (recompute seconds over the seconds until the
  // next re-profile), unless the served option breaks the SLO (switch_gate.h). 0: any sure gain
  // that pays for its recompute.
  double switch_margin = 0.05;
  // Resident sets (resident_policy.h): with 2 or more, a pass's decision may keep up to this
  // many candidates loaded at once, each at its own depth with its own KV pool, every request
  // routed to one of them; 1: one model at a time. A set is kept only when each member serves
  // at least resident_min_share of the pass's sampled prompts and the set without any one
  // member would have a perplexity at least resident_min_advantage (relative) higher.
  int64_t resident_max_models = 1;
  double resident_min_share = 0.1;
  double resident_min_advantage = 0.05;
  int64_t breach_window_tokens = 100;
  int64_t breach_max = 50;
  int64_t drift_window_requests = 32;
  double monitor_sample_rate = 0.25;
  // Absolute once parsed (relative paths are resolved against the SLO file's directory).
  std::filesystem::path model_repository;

  // Parses `text` (nested at most kMaxJsonDepth deep); `base_dir` resolves a relative
  // model_repository, which must exist and be a directory. JSON syntax errors name
  // `source_name` and the line.
  static SloConfig parse(std::string_view text, const std::filesystem::path& base_dir,
                         std::string_view source_name);
  // Reads (at most kMaxJsonConfigBytes) and parses `path`; a missing or unreadable file is an
  // error naming the path.
  static SloConfig from_file(const std::filesystem::path& path);

  // Checks every range (not the repository on disk): parse() calls it, and so may code that
  // builds a config by hand.
  void validate() const;
  // The effective config in the file's layout; parse(to_json().dump(), ...) gives it back.
  nlohmann::json to_json() const;
  bool operator==(const SloConfig&) const = default;
};

// True when a config document is an SLO file rather than a server config: its top-level
// object has "objective", "model_repository" or "constraints" (keys no server config has).
bool looks_like_slo_config(const nlohmann::json& root);

}  // namespace helios::controller
