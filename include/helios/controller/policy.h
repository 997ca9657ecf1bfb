#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "helios/controller/performance_table.h"
#include "helios/controller/slo_config.h"
#include "helios/model/config.h"

// The HELIOS decisions as pure functions of the Performance History Table, the SLO and the
// server's limits: which candidates to profile, which (model, depth) to serve, and what to do
// on a confidence breach. Nothing here touches a model or a clock, so every rule is unit-tested
// on synthetic tables.
namespace helios::controller {

struct PolicyLimits {
  int64_t memory_budget_bytes = 0;  // weights + KV cache
  int64_t kv_block_size = 16;
  int64_t max_running = 64;
};

// One (model, depth) with its predicted figures.
struct Option {
  std::string model;
  int64_t depth = 0;
  double coverage = 0;          // share of generated tokens exiting at or before depth
  double perplexity = 0;        // policy_perplexity(row, depth)
  double perplexity_bound = 0;  // (1 + max_perplexity_increase) * best full-depth perplexity
  double cost_ratio = 1;        // per-token compute at depth / at the profiled depth
  double tokens_per_second = 0, tpot_p95_ms = 0, ttft_p95_ms = 0, energy_joules_per_token = 0;
  int64_t weight_bytes = 0, kv_blocks = 0, kv_sequences = 0;  // memory at this depth
  bool feasible = false;
  std::string infeasible_reason;  // first violated constraint, with figures
  double score = 0;               // higher is better for the objective

  nlohmann::json to_json() const;
};

// The option's figure for `objective`, higher is better: tokens per second, or the negated
// p95 time per output token or energy per token.
double objective_score(Objective objective, const Option& option);

// Per generated token, in layer units: 1 (embedding + exit heads) + the layers run + the K/V
// projections of the loaded layers a token skipped.
double token_cost(const ProfileRow& row, int64_t depth);

Option evaluate(const ProfileRow& row, int64_t depth, const SloConfig& slo,
                const PolicyLimits& limits, double best_full_perplexity);

// The greedy partial load: the smallest exit point whose coverage reaches load_quantile and
// whose policy perplexity is within the bound; the full profiled depth when none is.
int64_t choose_depth(const ProfileRow& row, const SloConfig& slo, double best_full_perplexity);

// The reference of the perplexity bound: the lowest prompt perplexity of any row at its full
// profiled depth with early exit on (what the static baseline delivers), +infinity when no row
// has scored prompt tokens.
double best_full_perplexity(const PerformanceTable& table);
// The fewest shared prompts `outclassed` judges on.
inline constexpr int64_t kScreenMinPrompts = 4;
// Why `row` cannot be chosen by a pass whose other rows are in `table` (nullopt when it can):
// a row of another model scored on the same shared prompts (equal, non-zero evidence_key) has
// a full-depth perplexity whose max_perplexity_increase bound `row`'s own full-depth
// perplexity exceeds, both scored on at least kScreenMinPrompts prompts. The policy's bound
// is set by the best row of the table, so `row` meets it at no depth.
std::optional<std::string> outclassed(const ProfileRow& row, const PerformanceTable& table,
                                      const SloConfig& slo);

// Every row evaluated at choose_depth: feasible first, then by score (ties: tokens per second,
// then model name).
std::vector<Option> rank_options(const PerformanceTable& table, const SloConfig& slo,
                                 const PolicyLimits& limits);
std::optional<Option> best_option(const PerformanceTable& table, const SloConfig& slo,
                                  const PolicyLimits& limits);

// What to do when the breach counter passes breach_max.
struct Decision {
  enum class Kind { kKeep, kExtend, kSwitch, kReprofile };
  Kind kind = Kind::kKeep;
  Option option;       // what to load (kExtend, kSwitch)
  std::string reason;  // the figures behind the choice, for the decision log
};
std::string_view decision_kind_name(Decision::Kind kind);

Decision decide_on_breach(const PerformanceTable& table, std::string_view current_model,
                          int64_t current_depth, const SloConfig& slo, const PolicyLimits& limits,
                          int64_t now_requests);

// Seconds of serving a periodic re-profile waits after a pass of `profile_seconds`, so that
// profiling takes at most `max_share` of the wall time.
double serving_seconds_before_reprofile(double profile_seconds, double max_share);

// A model of the repository, before any telemetry.
struct Candidate {
  std::string name;  // directory name
  std::filesystem::path path;
  model::ModelConfig config;
  ModelFootprint footprint;
};

// A model of the repository that cannot be served, and why.
struct UnavailableModel {
  std::string name;  // directory name
  std::string reason;
  bool operator==(const UnavailableModel&) const = default;
};

// Every subdirectory of `dir` with a valid config.json, sorted by name. A subdirectory whose
// config.json cannot be read, parsed or sized (any exception: a malformed file, a symlink
// loop, a size that overflows) is skipped with a warning and, with `unavailable`, listed
// there (sorted by name) with the reason; the others are still scanned.
std::vector<Candidate> scan_repository(const std::filesystem::path& dir, int64_t element_size,
                                       std::vector<UnavailableModel>* unavailable = nullptr);

// Drops candidates whose full depth cannot hold one full-context sequence in the budget, orders
// the rest by an estimate for the objective (latency, energy: weight bytes per token
// ascending; throughput: full-depth KV sequences capped at max_running descending, then weight
// bytes ascending) and keeps the first candidates_top_k.
std::vector<Candidate> shortlist(std::vector<Candidate> candidates, const SloConfig& slo,
                                 const PolicyLimits& limits);

}  // namespace helios::controller
