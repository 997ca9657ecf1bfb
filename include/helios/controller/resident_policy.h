#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "helios/controller/batch_cap.h"
#include "helios/controller/performance_table.h"
#include "helios/controller/policy.h"
#include "helios/controller/slo_config.h"
#include "helios/controller/switch_gate.h"

// Resident sets chosen from the Performance History Table: which candidates to keep loaded at
// once, each at its own depth with its own KV pool in the one budget, every request routed to
// one of them by the engine's router. Pure functions of the rows of one profiling pass (their
// per-prompt evidence on the pass's shared sample), unit-tested on synthetic rows like the
// rest of the policy.
namespace helios::controller {

// A member of a resident set as the sample predicts it.
struct SetMember {
  std::string model;
  int64_t depth = 0;
  double share = 0;       // of the sample's scored tokens routed to it
  int64_t prompts = 0;    // sample prompts routed to it
  double perplexity = 0;  // on its routed prompts at `depth` (policy_perplexity's rule)
  double cost_ratio = 1;  // per-token compute at depth / at the profiled depth
  int64_t weight_bytes = 0, kv_blocks = 0, kv_sequences = 0;
  double batch = 0;              // sequences it runs per step at saturation
  double tokens_per_second = 0;  // its own rate at that batch
};

// A candidate resident set (one member: a single model, for comparison on the same terms).
struct SetOption {
  std::vector<SetMember> members;
  std::vector<size_t> routes;  // per sample prompt: the member the router sends it to
  double perplexity = 0;       // the routed workload's, at the members' depths
  double perplexity_bound = 0;
  // Engine tokens per second with every member stepped in turn: 1 / sum(share_m / rate_m).
  double tokens_per_second = 0;
  bool feasible = false;
  std::string infeasible_reason;  // the first rule it breaks, with figures
  std::string step_reference;     // the model whose measured step time the throughput carries
  std::string name() const;      // "a@2+b@3"
  nlohmann::json to_json() const;
};

// The router on the sample: each prompt goes to the row whose first exit point gives it the
// lowest mean NLL (the engine's router reads the first router_max_tokens of a prompt at the
// same exit). Rows must be paired (switch_gate.h `paired`).
std::vector<size_t> simulate_routes(const std::vector<const ProfileRow*>& rows);

// `rows` (paired, at most kMaxResidentModels) as a resident set: the router's routes; each
// member at an exit point covering load_quantile of its generated tokens or at full depth,
// the combination with the most tokens per second whose routed perplexity is within the bound
// (max_perplexity_increase over `reference_perplexity`, by default the single-model rule's
// best full-depth perplexity of the table); pools from engine::kv_blocks_for_set with the traffic shares; throughput from
// the members' step models at their shares of the batch (steps_of in the .cpp: `reference`'s
// measured one carried by token work when given, else each member's own, else its measured
// rate). Infeasible: a member's share below resident_min_share, a member whose absence raises
// the routed full-depth perplexity by less than resident_min_advantage, or no combination
// that fits the budget within the bound (the full-depth one is returned, with its reason).
SetOption evaluate_set(const std::vector<const ProfileRow*>& rows, const PerformanceTable& table,
                       const SloConfig& slo, const PolicyLimits& limits,
                       const std::map<std::string, StepModel>& steps,
                       const std::string& reference = "", double reference_perplexity = 0);

// evaluate_set's every feasible depth combination, fastest first (ties: the lower
// perplexity); the full-depth one alone, with its reason, when none is feasible.
std::vector<SetOption> evaluate_set_options(const std::vector<const ProfileRow*>& rows,
                                            const PerformanceTable& table, const SloConfig& slo,
                                            const PolicyLimits& limits,
                                            const std::map<std::string, StepModel>& steps,
                                            const std::string& reference = "",
                                            double reference_perplexity = 0);

// `set` (an evaluate_set result) with its members at `depths` instead, on the same routes,
// bound and step reference: the figures of what a breach's extension to full depth serves.
// Infeasible with the reason when it does not fit the budget. nullopt when the table no longer
// holds the members' rows as scored for `set` (another pass replaced them).
std::optional<SetOption> evaluate_set_at(const SetOption& set, const std::vector<int64_t>& depths,
                                         const PerformanceTable& table, const PolicyLimits& limits,
                                         const std::map<std::string, StepModel>& steps);

// The set the controller may serve instead of `single` (the model its single-model decision
// picked, a row of `table`), and the gate's verdict on the move.
struct SetChoice {
  std::optional<SetOption> set;  // the best feasible set of 2 or more members, if any
  SetOption single;              // `single` as a set of one, on the same terms
  GateResult gate;               // set against single (only when `set`)
  std::string reason;            // why no set, or the gate's reason
  // The bound's reference: the best full-depth perplexity of a single row or of a set that
  // fits the budget at full depth (the table's best single one when sets are off).
  double reference_perplexity = 0;
  std::vector<nlohmann::json> considered;  // every set evaluated (SetOption::to_json)
  nlohmann::json to_json() const;
};
// Every subset of 2 to resident_max_models rows paired with `single`'s row is evaluated, and
// `single` as a set of one, against one perplexity bound: max_perplexity_increase over the
// best full-depth perplexity of any single row or any such set that fits the budget at full
// depth (with sets allowed, the server's best achievable accuracy is what truncation is
// measured against, as the per-request oracle is for the comparison's figures). The
// feasible options (every set at every feasible depth combination) are weighed against
// `single` by a paired bootstrap over the sample's prompts (routes fixed, shares, perplexities
// and per-token work redrawn), fastest first: the first whose perplexity stays within the
// bound at the upper end of its interval is the set (the fastest when none does); it passes
// when the lower end of the throughput gain exceeds switch_margin plus the
// cost share and the upper end of its perplexity is within the bound, or when `single` breaks
// the perplexity bound and the set does not. Sets are weighed under the throughput objective
// without latency bounds only (the step interleaving of several models is not modelled for
// TTFT or TPOT); otherwise `set` is empty with the reason.
SetChoice choose_resident_set(const PerformanceTable& table, const std::string& single,
                              const SloConfig& slo, const PolicyLimits& limits,
                              const std::map<std::string, StepModel>& steps,
                              const SwitchCost& cost);

}  // namespace helios::controller
