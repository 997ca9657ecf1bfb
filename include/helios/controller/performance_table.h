#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "helios/engine/memory_plan.h"
#include "helios/model/exit_scores.h"

namespace helios::controller {

// Memory arithmetic lives with the engine, which sizes pools and loads by the same figures.
using engine::ModelFootprint;

// One row of the Performance History Table: what profiling one candidate measured.
struct ProfileRow {
  std::string model;  // candidate name = directory name
  std::filesystem::path path;
  ModelFootprint footprint;
  int64_t profiled_layers = 0;       // depth loaded while profiled (normally the full depth)
  std::vector<int32_t> exit_points;  // 1-based exit layers within profiled_layers, ascending
  int64_t requests = 0;              // requests whose telemetry is in the row
  std::vector<int64_t> generated_exits;  // per exit point index: generated tokens that left there
  // Prompt telemetry summed over the row's requests, indexed by exit point index:
  std::vector<double> prompt_nll_sum;         // NLL if every position left at this exit point
  std::vector<double> prompt_policy_nll_sum;  // NLL if each position left at its first
                                              // confident exit, capped at this exit point
  int64_t prompt_tokens = 0;                  // scored positions
  // The prompt columns' source: > 0, this many prompts of the profiling pass's shared sample
  // (every candidate of the pass scored teacher-forced on the same ones); 0, the live
  // requests the candidate served while profiled.
  int64_t evidence_prompts = 0;
  double evidence_seconds = 0;  // scoring the sample took this long
  int64_t evidence_peak_bytes = 0;  // streamed scoring: most bytes held at once
  // The same scores prompt by prompt (in the sample's order; they add up to the columns
  // above), and the sample they come from (0: none; rows with equal keys were scored on the
  // same prompts), for paired comparisons between rows (switch_gate.h).
  std::vector<model::ExitScores> prompt_evidence;
  uint64_t evidence_key = 0;
  // The serving figures below are predicted from the served model's live ones (profile mode
  // "sample", see prediction.h) rather than measured while this candidate served.
  bool predicted = false;
  // Profile mode "serve": why the candidate served no profiling requests (outclassed on the
  // pass's shared sample as soon as it was loaded, policy.h `outclassed`); empty when it did.
  std::string screened;
  double decode_tokens_per_second = 0;  // generated tokens / engine-step seconds in the window
  double mean_batch = 0;                // mean sequences per engine step in the window
  double peak_concurrency = 0;          // most requests in flight (running + waiting)
  double tpot_p95_ms = 0, tpot_mean_ms = 0, ttft_p95_ms = 0;
  double energy_joules_per_token = 0;  // estimate
  int64_t profiled_at_request = 0;     // controller's request count when the row was completed
};

// The Performance History Table: one row per profiled candidate, keyed by model name.
class PerformanceTable {
 public:
  // Replaces the row of the same model, or appends.
  void upsert(ProfileRow row);
  const ProfileRow* find(std::string_view model) const;
  const std::vector<ProfileRow>& rows() const { return rows_; }
  void clear() { rows_.clear(); }
  // True when `interval` > 0 requests have passed since the row was profiled.
  bool stale(const ProfileRow& row, int64_t now_requests, int64_t interval) const;

 private:
  std::vector<ProfileRow> rows_;
};

// Share of generated tokens whose exit layer is <= depth (what a load of `depth` layers serves
// without a greedy exit). With no generated tokens: 1 at the profiled depth, else 0.
double coverage(const ProfileRow& row, int64_t depth);
// exp(mean full-depth prompt NLL); +infinity without scored prompt tokens.
double full_depth_perplexity(const ProfileRow& row);
// Prompt perplexity when loaded to `depth`: confident positions leave at their exit, the rest
// greedily at the deepest exit point <= depth. +infinity when no exit point is <= depth or no
// prompt token was scored.
double policy_perplexity(const ProfileRow& row, int64_t depth);
// The index of the deepest exit point <= depth (the column policy_perplexity reads for a
// row's per-prompt evidence); nullopt when every exit point is deeper.
std::optional<size_t> deepest_exit_index(const ProfileRow& row, int64_t depth);
// E[min(exit layer, depth)] over generated tokens (`depth` when none were generated).
double mean_layers_run(const ProfileRow& row, int64_t depth);

}  // namespace helios::controller
