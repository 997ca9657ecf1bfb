#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "helios/controller/performance_table.h"
#include "helios/controller/policy.h"
#include "helios/controller/slo_config.h"

// Whether a change of the served (model, depth) is worth making: the ranking says which option
// scores best on point estimates; the gate asks whether the gain is large enough and sure
// enough to pay for the move. Pure functions of rows and figures, unit-tested on synthetic
// rows like the rest of the policy.
namespace helios::controller {

// Replicates and confidence level of the paired bootstrap below. 400 replicates put the 5th
// and 95th percentiles within about one replicate of where more would; fixed seed, so the
// same rows give the same decision.
inline constexpr int kGateReplicates = 400;
inline constexpr double kGateConfidence = 0.90;

struct Interval {
  double low = 0, point = 0, high = 0;
};

// What a switch costs and over how long its gain is collected.
struct SwitchCost {
  // Tokens the engine recomputes on the new model: the context of every sequence in flight
  // (KV blocks in use x block size, an upper bound).
  int64_t recompute_tokens = 0;
  // Seconds of engine time the recompute takes (recompute_tokens at the target's measured or
  // predicted per-sequence decode step time: an upper bound, a prefill batches them).
  double seconds = 0;
  // Serving seconds until the next scheduled re-profile, when the choice is made again: the
  // re-profile interval in requests at the measured request rate, at least the profiling
  // share's spacing. Infinite when nothing re-profiles periodically.
  double horizon_seconds = 0;
};

struct GateResult {
  bool pass = false;
  std::string reason;
  // Relative gain of the objective (the target's score over the served option's, minus 1) at
  // the point estimate and over the bootstrap's central kGateConfidence interval.
  Interval gain;
  // The target's perplexity over the served option's, on the same prompts (paired).
  std::optional<Interval> perplexity_ratio;
  // The target's own perplexity interval, checked against its bound.
  std::optional<Interval> perplexity;
  int64_t prompts = 0;  // prompts both rows were scored on (0: no paired evidence)
  double required_gain = 0;  // margin + cost seconds / horizon seconds
  double margin = 0;
  SwitchCost cost;

  nlohmann::json to_json() const;
};

// Perplexity of `row` at `depth` (policy_perplexity's rule) over a subset of its per-prompt
// evidence given by prompt weights (a bootstrap replicate's draw counts); +inf without tokens.
double weighted_policy_perplexity(const ProfileRow& row, int64_t depth,
                                  const std::vector<int>& weights);

// Layer units per token (token_cost's formula) from the first confident exits of the scored
// positions of the weighted prompts: a position leaves at its first confident exit point when
// that is within `depth`, else it runs all `depth` layers.
double weighted_token_cost(const ProfileRow& row, int64_t depth, const std::vector<int>& weights);

// The paired bootstrap's replicates over n prompts: kGateReplicates draws of n prompts with
// replacement, as per-prompt counts, from a fixed seed.
std::vector<std::vector<int>> bootstrap_weights(size_t n);
// The central kGateConfidence interval of replicate values around `point`.
Interval interval_of(const std::vector<double>& values, double point);
nlohmann::json interval_json(const Interval& i);
// (to - from) / |from|; +inf from 0 to a positive figure.
double relative_gain(double from, double to);
// The part of a change's gain its cost takes: cost seconds over horizon seconds (0 for an
// infinite horizon, +inf for none).
double cost_share(const SwitchCost& cost);

// True when `a` and `b` carry per-prompt evidence from the same sample (same pass, same
// tokenizer, same prompts), so that their prompts pair up.
bool paired(const ProfileRow& a, const ProfileRow& b);

// Decides a move from `from` (the served option, `from_row` its row) to `to` (`to_row`):
//  - the served option is infeasible (it breaks the SLO): the move passes whatever it costs;
//  - otherwise it passes when the lower end of the gain's interval exceeds
//    slo.switch_margin + cost.seconds / cost.horizon_seconds, and the upper end of the
//    target's perplexity interval is within its bound.
// With paired per-prompt evidence the intervals come from a paired bootstrap over the prompts
// (each replicate reweights both rows' prompts alike, so the prompts' difficulty cancels): the
// perplexities from the replicate's NLL, the throughput, latency and energy figures scaled by
// the replicate's mean layers run (the first confident exits of its positions) over the
// point's. Without it the interval is the point.
GateResult gate_switch(const ProfileRow& from_row, const Option& from, const ProfileRow& to_row,
                       const Option& to, const SloConfig& slo, const SwitchCost& cost);

}  // namespace helios::controller
