#include "helios/controller/resident_policy.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <limits>

#include "helios/common/error.h"
#include "helios/controller/prediction.h"
#include "helios/engine/memory_plan.h"

namespace helios::controller {
namespace {

constexpr double kInfinity = std::numeric_limits<double>::infinity();

// Policy NLL and tokens of the weighted prompts each member is routed, at the members' depths.
struct Sums {
  double nll = 0, tokens = 0;
};
std::vector<Sums> routed_sums(const std::vector<const ProfileRow*>& rows,
                              const std::vector<size_t>& routes, const std::vector<int64_t>& depths,
                              const std::vector<int>& weights) {
  std::vector<Sums> sums(rows.size());
  for (size_t p = 0; p < routes.size() && p < weights.size(); ++p) {
    if (weights[p] == 0) continue;
    const size_t m = routes[p];
    const ProfileRow& row = *rows[m];
    const std::optional<size_t> at = deepest_exit_index(row, depths[m]);
    const model::ExitScores& s = row.prompt_evidence[p];
    if (!at || *at >= s.policy_nll_sum.size()) {
      sums[m].nll = kInfinity;
    } else {
      sums[m].nll += weights[p] * s.policy_nll_sum[*at];
    }
    sums[m].tokens += weights[p] * static_cast<double>(s.tokens);
  }
  return sums;
}

double perplexity_of(const std::vector<Sums>& sums) {
  double nll = 0, tokens = 0;
  for (const Sums& s : sums) nll += s.nll, tokens += s.tokens;
  return tokens > 0 ? std::exp(nll / tokens) : kInfinity;
}

std::vector<int> only(const std::vector<size_t>& routes, size_t member) {
  std::vector<int> w(routes.size(), 0);
  for (size_t p = 0; p < routes.size(); ++p) w[p] = routes[p] == member ? 1 : 0;
  return w;
}

std::vector<int> masked(const std::vector<int>& weights, const std::vector<int>& mask) {
  std::vector<int> w(weights.size());
  for (size_t p = 0; p < w.size(); ++p) w[p] = p < mask.size() ? weights[p] * mask[p] : 0;
  return w;
}

// The routed workload's perplexity with every member at its profiled depth.
double full_depth_perplexity_of(const std::vector<const ProfileRow*>& rows) {
  std::vector<int64_t> depths;
  for (const ProfileRow* r : rows) depths.push_back(r->profiled_layers);
  const std::vector<size_t> routes = simulate_routes(rows);
  return perplexity_of(routed_sums(rows, routes, depths, std::vector<int>(routes.size(), 1)));
}

// Seconds of engine time per generated token of `row` at `depth` running `batch` sequences a
// step: its step model scaled by the depth's cost ratio, or, without one, its measured rate at
// the batch it was profiled at, the step time taken as independent of the batch (as
// policy.cpp's capacity factor does).
double token_seconds(const ProfileRow& row, const StepModel& steps, double cost_ratio,
                     double batch, double profiled_batch) {
  if (steps.valid()) return steps.seconds(batch) * cost_ratio / batch;
  if (!(row.decode_tokens_per_second > 0)) return kInfinity;
  return cost_ratio * profiled_batch / (row.decode_tokens_per_second * batch);
}

// The step model a member's throughput is predicted with. With a `reference` (the single model
// a set is weighed against) whose step model or decode rate was measured: that one, carried to every other
// member by their token work (prediction.h), so that set and single differ by what their
// models and depths cost, not by the noise of separate profiling stints. Otherwise the
// member's own measured one, or, for a row that served nothing (one screened on the sample),
// a peer's carried the same way. Invalid when none exists (token_seconds then reads the
// row's measured rate).
StepModel steps_of(const ProfileRow& row, const std::vector<const ProfileRow*>& peers,
                   const std::map<std::string, StepModel>& steps, const std::string& reference) {
  const auto measured = [&](const std::string& model) -> const StepModel* {
    const auto it = steps.find(model);
    return it != steps.end() && it->second.valid() ? &it->second : nullptr;
  };
  for (const ProfileRow* peer : peers) {
    if (peer->model != reference || peer->predicted) continue;
    // Without a fitted step model (under a steady stream of arrivals almost every step also
    // runs a prefill chunk, and only pure decode steps are fitted), the reference's measured
    // rate as a step time proportional to the batch.
    const StepModel* s = measured(reference);
    const StepModel from_rate{0.0, peer->decode_tokens_per_second > 0
                                       ? 1.0 / peer->decode_tokens_per_second
                                       : 0.0};
    if (s == nullptr && from_rate.valid()) s = &from_rate;
    if (s != nullptr) return row.model == reference ? *s : predict_step_model(*s, *peer, row);
  }
  if (const StepModel* own = measured(row.model)) return *own;
  if (row.decode_tokens_per_second > 0) return StepModel{};
  for (const ProfileRow* peer : peers) {
    const StepModel* s = measured(peer->model);
    if (s != nullptr && !peer->predicted) return predict_step_model(*s, *peer, row);
  }
  return StepModel{};
}

// steps_of for each of `rows`, their peers being the table's rows scored on the same prompts.
std::vector<StepModel> member_step_models(const std::vector<const ProfileRow*>& rows,
                                          const PerformanceTable& table,
                                          const std::map<std::string, StepModel>& steps,
                                          const std::string& reference) {
  std::vector<const ProfileRow*> peers;
  for (const ProfileRow& r : table.rows()) {
    if (paired(*rows.front(), r)) peers.push_back(&r);
  }
  std::vector<StepModel> out;
  for (const ProfileRow* r : rows) out.push_back(steps_of(*r, peers, steps, reference));
  return out;
}

}  // namespace

std::string SetOption::name() const {
  std::string s;
  for (const SetMember& m : members) s += fmt::format("{}{}@{}", s.empty() ? "" : "+", m.model, m.depth);
  return s;
}

nlohmann::json SetOption::to_json() const {
  const auto finite = [](double x) { return std::isfinite(x) ? nlohmann::json(x) : nullptr; };
  nlohmann::json ms = nlohmann::json::array();
  for (const SetMember& m : members) {
    ms.push_back({{"model", m.model},
                  {"depth", m.depth},
                  {"share", m.share},
                  {"prompts", m.prompts},
                  {"perplexity", finite(m.perplexity)},
                  {"cost_ratio", m.cost_ratio},
                  {"weight_bytes", m.weight_bytes},
                  {"kv_blocks", m.kv_blocks},
                  {"kv_sequences", m.kv_sequences},
                  {"batch", m.batch},
                  {"tokens_per_second", finite(m.tokens_per_second)}});
  }
  return {{"set", name()},
          {"members", std::move(ms)},
          {"perplexity", finite(perplexity)},
          {"perplexity_bound", finite(perplexity_bound)},
          {"tokens_per_second", finite(tokens_per_second)},
          {"feasible", feasible},
          {"infeasible_reason", infeasible_reason},
          {"step_reference", step_reference}};
}

nlohmann::json SetChoice::to_json() const {
  nlohmann::json j = {{"single", single.to_json()},
                      {"reason", reason},
                      {"reference_perplexity",
                       std::isfinite(reference_perplexity) ? nlohmann::json(reference_perplexity)
                                                           : nlohmann::json(nullptr)}};
  j["considered"] = nlohmann::json::array();
  for (const nlohmann::json& o : considered) j["considered"].push_back(o);
  j["set"] = set ? set->to_json() : nlohmann::json(nullptr);
  j["gate"] = set ? gate.to_json() : nlohmann::json(nullptr);
  return j;
}

std::vector<size_t> simulate_routes(const std::vector<const ProfileRow*>& rows) {
  std::vector<size_t> routes;
  if (rows.empty()) return routes;
  const size_t n = rows.front()->prompt_evidence.size();
  for (size_t p = 0; p < n; ++p) {
    size_t best = 0;
    double best_nll = kInfinity;
    for (size_t m = 0; m < rows.size(); ++m) {
      const model::ExitScores& s = rows[m]->prompt_evidence.at(p);
      if (s.tokens <= 0 || s.nll_sum.empty()) continue;
      const double mean = s.nll_sum.front() / static_cast<double>(s.tokens);
      if (mean < best_nll) best_nll = mean, best = m;
    }
    routes.push_back(best);
  }
  return routes;
}

namespace {

// The figures of `rows` with fixed routes at fixed depths: perplexity, pools, throughput.
// `base` carries the routes and the leave rules' verdict.
SetOption evaluate_at(const std::vector<const ProfileRow*>& rows, const std::vector<int64_t>& depths,
                      const SetOption& base, const PolicyLimits& limits,
                      const std::vector<StepModel>& member_steps) {
  SetOption o = base;
  const size_t n = o.routes.size();
  const std::vector<Sums> sums = routed_sums(rows, o.routes, depths, std::vector<int>(n, 1));
  double total_tokens = 0;
  for (const Sums& s : sums) total_tokens += s.tokens;
  o.perplexity = perplexity_of(sums);
  const auto infeasible = [&](std::string why) {
    if (o.infeasible_reason.empty()) o.infeasible_reason = std::move(why);
  };
  for (size_t m = 0; m < rows.size(); ++m) {
    const ProfileRow& row = *rows[m];
    SetMember& member = o.members[m];
    member.depth = depths[m];
    member.share = total_tokens > 0 ? sums[m].tokens / total_tokens : 0.0;
    member.perplexity = sums[m].tokens > 0 ? std::exp(sums[m].nll / sums[m].tokens) : kInfinity;
    member.cost_ratio = token_cost(row, depths[m]) / token_cost(row, row.profiled_layers);
  }

  // Memory: weights first, a full-context sequence per pool, the rest by traffic share.
  std::vector<engine::SetMemberFootprint> plan;
  for (size_t m = 0; m < rows.size(); ++m) {
    plan.push_back({rows[m]->footprint, depths[m], rows[m]->footprint.weight_bytes(depths[m]),
                    std::max(o.members[m].share, 1e-3)});
  }
  std::vector<int64_t> blocks;
  try {
    blocks = engine::kv_blocks_for_set(plan, limits.memory_budget_bytes, limits.kv_block_size,
                                       "memory.budget_mib");
  } catch (const Error& e) {
    infeasible(e.what());
    o.tokens_per_second = 0;
    o.feasible = false;
    return o;
  }

  // Throughput at saturation: the traffic shares fix each member's part of the batch, so the
  // scarcest pool (sequences over share) bounds the whole batch.
  double demand = std::max<double>(1.0, static_cast<double>(limits.max_running));
  for (const ProfileRow* r : rows) demand = std::max(demand, r->peak_concurrency);
  double batch = demand;
  for (size_t m = 0; m < rows.size(); ++m) {
    SetMember& member = o.members[m];
    member.weight_bytes = plan[m].weight_bytes;
    member.kv_blocks = blocks[m];
    member.kv_sequences = blocks[m] / std::max<int64_t>(1, rows[m]->footprint.sequence_blocks(
                                                              limits.kv_block_size));
    if (member.share > 0) {
      batch = std::min(batch, static_cast<double>(member.kv_sequences) / member.share);
    }
  }
  batch = std::max(1.0, batch);
  double seconds = 0;
  for (size_t m = 0; m < rows.size(); ++m) {
    SetMember& member = o.members[m];
    const ProfileRow& row = *rows[m];
    member.batch = std::max(1.0, member.share * batch);
    const engine::KvCapacity profiled = engine::kv_capacity(
        row.footprint, row.profiled_layers, limits.memory_budget_bytes, limits.kv_block_size);
    const double profiled_batch =
        std::max(1.0, std::min(static_cast<double>(profiled.kv_sequences), demand));
    const double per_token =
        token_seconds(row, member_steps[m], member.cost_ratio, member.batch, profiled_batch);
    member.tokens_per_second = std::isfinite(per_token) ? 1.0 / per_token : 0.0;
    seconds += member.share * per_token;
  }
  o.tokens_per_second = seconds > 0 && std::isfinite(seconds) ? 1.0 / seconds : 0.0;
  if (!(o.tokens_per_second > 0)) {
    infeasible("throughput: a member has no measured or predicted decode rate");
  }
  if (!(o.perplexity <= o.perplexity_bound)) {
    infeasible(fmt::format("max_perplexity_increase: predicted routed perplexity {:.3f} > bound "
                           "{:.3f}",
                           o.perplexity, o.perplexity_bound));
  }
  o.feasible = o.infeasible_reason.empty();
  return o;
}

}  // namespace

std::vector<SetOption> evaluate_set_options(const std::vector<const ProfileRow*>& rows,
                                            const PerformanceTable& table, const SloConfig& slo,
                                            const PolicyLimits& limits,
                                            const std::map<std::string, StepModel>& steps,
                                            const std::string& reference,
                                            double reference_perplexity) {
  SetOption base;
  base.perplexity_bound =
      (1.0 + slo.max_perplexity_increase) *
      (reference_perplexity > 0 ? reference_perplexity : best_full_perplexity(table));
  if (rows.empty()) {
    base.infeasible_reason = "no member";
    return {base};
  }
  for (const ProfileRow* r : rows) {
    if (!paired(*rows.front(), *r)) {
      throw Error(ErrorCode::kInvalidArgument,
                  "resident set: " + r->model + " was not scored on the same prompts as " +
                      rows.front()->model);
    }
  }
  base.routes = simulate_routes(rows);
  base.step_reference = reference;
  const std::vector<StepModel> member_steps = member_step_models(rows, table, steps, reference);
  for (const ProfileRow* r : rows) {
    SetMember member;
    member.model = r->model;
    member.prompts = std::count(base.routes.begin(), base.routes.end(), base.members.size());
    base.members.push_back(std::move(member));
  }
  // The leave rules: a member earns its memory by traffic and by accuracy.
  if (rows.size() > 1) {
    const std::vector<int64_t> full = [&] {
      std::vector<int64_t> d;
      for (const ProfileRow* r : rows) d.push_back(r->profiled_layers);
      return d;
    }();
    const std::vector<Sums> sums =
        routed_sums(rows, base.routes, full, std::vector<int>(base.routes.size(), 1));
    double total = 0;
    for (const Sums& s : sums) total += s.tokens;
    for (size_t m = 0; m < rows.size(); ++m) {
      const double share = total > 0 ? sums[m].tokens / total : 0.0;
      if (share < slo.resident_min_share && base.infeasible_reason.empty()) {
        base.infeasible_reason = fmt::format(
            "resident_min_share: {} serves {:.1f}% of the sampled prompt tokens < {:.1f}%",
            rows[m]->model, 100 * share, 100 * slo.resident_min_share);
      }
    }
    const double with_all = perplexity_of(sums);
    for (size_t m = 0; m < rows.size() && base.infeasible_reason.empty(); ++m) {
      std::vector<const ProfileRow*> rest = rows;
      rest.erase(rest.begin() + static_cast<std::ptrdiff_t>(m));
      const double advantage = full_depth_perplexity_of(rest) / with_all - 1.0;
      if (!(advantage >= slo.resident_min_advantage)) {
        base.infeasible_reason = fmt::format(
            "resident_min_advantage: without {} the routed perplexity rises by {:+.1f}% < {:.1f}%",
            rows[m]->model, 100 * advantage, 100 * slo.resident_min_advantage);
      }
    }
  }

  // The depths: every exit point covering load_quantile of a member's generated tokens, and
  // its full depth; the feasible combination with the most tokens per second wins (ties: the
  // lower perplexity). The set's accuracy, better than any single model's on mixed traffic,
  // is what buys its members their truncation.
  std::vector<std::vector<int64_t>> choices;
  for (const ProfileRow* r : rows) {
    std::vector<int64_t> d;
    for (const int32_t e : r->exit_points) {
      if (e < r->profiled_layers && coverage(*r, e) >= slo.load_quantile) d.push_back(e);
    }
    d.push_back(r->profiled_layers);
    choices.push_back(std::move(d));
  }
  std::vector<size_t> at(rows.size(), 0);
  std::vector<SetOption> feasible;
  std::optional<SetOption> fullest;  // every member at full depth: reported when none fits
  while (true) {
    std::vector<int64_t> depths;
    bool full = true;
    for (size_t m = 0; m < rows.size(); ++m) {
      depths.push_back(choices[m][at[m]]);
      full = full && at[m] + 1 == choices[m].size();
    }
    SetOption o = evaluate_at(rows, depths, base, limits, member_steps);
    if (o.feasible) feasible.push_back(o);
    if (full) fullest = std::move(o);
    size_t m = 0;
    while (m < rows.size() && ++at[m] == choices[m].size()) at[m++] = 0;
    if (m == rows.size()) break;
  }
  if (feasible.empty()) return {*fullest};
  std::stable_sort(feasible.begin(), feasible.end(), [](const SetOption& a, const SetOption& b) {
    return a.tokens_per_second > b.tokens_per_second ||
           (a.tokens_per_second == b.tokens_per_second && a.perplexity < b.perplexity);
  });
  return feasible;
}

SetOption evaluate_set(const std::vector<const ProfileRow*>& rows, const PerformanceTable& table,
                       const SloConfig& slo, const PolicyLimits& limits,
                       const std::map<std::string, StepModel>& steps,
                       const std::string& reference, double reference_perplexity) {
  return evaluate_set_options(rows, table, slo, limits, steps, reference, reference_perplexity)
      .front();
}

std::optional<SetOption> evaluate_set_at(const SetOption& set, const std::vector<int64_t>& depths,
                                         const PerformanceTable& table, const PolicyLimits& limits,
                                         const std::map<std::string, StepModel>& steps) {
  if (set.members.empty() || depths.size() != set.members.size()) return std::nullopt;
  std::vector<const ProfileRow*> rows;
  for (const SetMember& m : set.members) {
    const ProfileRow* row = table.find(m.model);
    if (row == nullptr || row->prompt_evidence.size() != set.routes.size() ||
        (!rows.empty() && !paired(*rows.front(), *row))) {
      return std::nullopt;
    }
    rows.push_back(row);
  }
  SetOption base = set;
  base.infeasible_reason.clear();
  return evaluate_at(rows, depths, base, limits,
                     member_step_models(rows, table, steps, set.step_reference));
}

namespace {

// Replicate figures of a set with its routes, depths and pools fixed: the weighted prompts'
// perplexity, and its throughput with the shares and each member's per-token work redrawn.
struct Replicate {
  double perplexity = 0, tokens_per_second = 0;
};
Replicate replicate(const SetOption& o, const std::vector<const ProfileRow*>& rows,
                    const std::vector<int>& weights) {
  std::vector<int64_t> depths;
  for (const SetMember& m : o.members) depths.push_back(m.depth);
  const std::vector<Sums> sums = routed_sums(rows, o.routes, depths, weights);
  double total = 0;
  for (const Sums& s : sums) total += s.tokens;
  double seconds = 0;
  for (size_t m = 0; m < rows.size(); ++m) {
    const SetMember& member = o.members[m];
    if (!(member.tokens_per_second > 0) || total <= 0) return {perplexity_of(sums), 0.0};
    const std::vector<int> mine = only(o.routes, m);
    const double point = weighted_token_cost(*rows[m], member.depth, mine);
    const double here = weighted_token_cost(*rows[m], member.depth, masked(weights, mine));
    seconds += sums[m].tokens / total * (here / point) / member.tokens_per_second;
  }
  return {perplexity_of(sums), seconds > 0 ? 1.0 / seconds : 0.0};
}

}  // namespace

SetChoice choose_resident_set(const PerformanceTable& table, const std::string& single,
                              const SloConfig& slo, const PolicyLimits& limits,
                              const std::map<std::string, StepModel>& steps,
                              const SwitchCost& cost) {
  SetChoice choice;
  const ProfileRow* single_row = table.find(single);
  if (single_row == nullptr || single_row->prompt_evidence.empty()) {
    choice.reason = "no per-prompt evidence for " + single;
    return choice;
  }
  choice.reference_perplexity = best_full_perplexity(table);
  const auto single_only = [&](std::string why) {
    choice.single = evaluate_set({single_row}, table, slo, limits, steps, single);
    choice.reason = std::move(why);
    return choice;
  };
  if (slo.resident_max_models < 2) return single_only("controller.resident_max_models is 1");
  if (slo.objective != Objective::kThroughput || slo.p95_ttft_ms || slo.p95_tpot_ms) {
    return single_only(
        "resident sets are weighed under the throughput objective without latency bounds only");
  }
  std::vector<const ProfileRow*> peers;
  for (const ProfileRow& r : table.rows()) {
    if (paired(*single_row, r)) peers.push_back(&r);
  }
  const size_t most = std::min<size_t>(peers.size(), static_cast<size_t>(slo.resident_max_models));
  // Every subset of 2..most peers (a bit mask; the repository's shortlist keeps peers few).
  std::vector<std::vector<const ProfileRow*>> subsets;
  for (uint32_t mask = 1; mask < (1u << peers.size()); ++mask) {
    const auto size = static_cast<size_t>(__builtin_popcount(mask));
    if (size < 2 || size > most) continue;
    std::vector<const ProfileRow*> rows;
    for (size_t i = 0; i < peers.size(); ++i) {
      if (mask & (1u << i)) rows.push_back(peers[i]);
    }
    subsets.push_back(std::move(rows));
  }
  // The accuracy the bound is relative to: the best full-depth perplexity of any single model,
  // or of any set whose full-depth load fits the budget, on the sample as routed. What may set
  // it, for the bootstrap: every paired row alone and every set that fits at full depth, each
  // with its routes (fixed across the replicates).
  struct Reference {
    std::vector<const ProfileRow*> rows;
    std::vector<size_t> routes;
    std::vector<int64_t> depths;
  };
  std::vector<Reference> references;
  const auto add_reference = [&](const std::vector<const ProfileRow*>& rows) {
    Reference r{rows, simulate_routes(rows), {}};
    for (const ProfileRow* row : rows) r.depths.push_back(row->profiled_layers);
    references.push_back(std::move(r));
  };
  const auto perplexity_at = [](const Reference& r, const std::vector<int>& weights) {
    return perplexity_of(routed_sums(r.rows, r.routes, r.depths, weights));
  };
  const std::vector<int> every_prompt(single_row->prompt_evidence.size(), 1);
  for (const ProfileRow* peer : peers) add_reference({peer});
  for (const auto& rows : subsets) {
    std::vector<engine::SetMemberFootprint> plan;
    for (const ProfileRow* r : rows) {
      plan.push_back({r->footprint, r->profiled_layers, r->footprint.weight_bytes(r->profiled_layers)});
    }
    try {
      engine::kv_blocks_for_set(plan, limits.memory_budget_bytes, limits.kv_block_size,
                                "memory.budget_mib");
    } catch (const Error&) {
      continue;
    }
    add_reference(rows);
    choice.reference_perplexity =
        std::min(choice.reference_perplexity, perplexity_at(references.back(), every_prompt));
  }
  const auto reference_of = [&](const std::vector<int>& weights) {
    double best = kInfinity;
    for (const Reference& r : references) best = std::min(best, perplexity_at(r, weights));
    return best;
  };
  // The table's best may come from a row of another sample: the replicates' references are
  // scaled to the point's.
  const double anchor = choice.reference_perplexity / reference_of(every_prompt);
  choice.single =
      evaluate_set({single_row}, table, slo, limits, steps, single, choice.reference_perplexity);
  // Every feasible depth combination of every set, fastest first: the gate takes the fastest
  // whose perplexity stays within the bound with confidence, so that a sample on which the
  // fastest combination only just fits the bound yields a deeper one rather than no set.
  std::vector<std::pair<SetOption, std::vector<const ProfileRow*>>> options;
  std::string last_reason;
  for (const auto& rows : subsets) {
    std::vector<SetOption> of = evaluate_set_options(rows, table, slo, limits, steps, single,
                                                     choice.reference_perplexity);
    choice.considered.push_back(of.front().to_json());
    if (!of.front().feasible) {
      last_reason = of.front().name() + ": " + of.front().infeasible_reason;
      continue;
    }
    for (SetOption& o : of) options.emplace_back(std::move(o), rows);
  }
  if (options.empty()) {
    choice.reason = last_reason.empty() ? "fewer than 2 candidates scored on the same prompts"
                                         : "no feasible set (last: " + last_reason + ")";
    return choice;
  }
  std::stable_sort(options.begin(), options.end(), [](const auto& a, const auto& b) {
    return a.first.tokens_per_second > b.first.tokens_per_second;
  });

  // The gate: the set against the single model on the same prompts, every option on the same
  // replicates.
  const size_t n = single_row->prompt_evidence.size();
  const std::vector<std::vector<int>> replicates = bootstrap_weights(n);
  std::vector<Replicate> singles;
  std::vector<double> replicate_references;
  for (const std::vector<int>& weights : replicates) {
    singles.push_back(replicate(choice.single, {single_row}, weights));
    replicate_references.push_back(reference_of(weights) * anchor);
  }
  // The bound moves with the reference on the same prompts: the set's perplexity over the
  // replicate's reference, against 1 + max_perplexity_increase.
  std::vector<Replicate> sets;
  Interval increase;
  bool any = false;
  int64_t held = 0;
  for (const auto& [option, rows] : options) {
    std::vector<Replicate> replicated;
    std::vector<double> increases;
    for (size_t i = 0; i < replicates.size(); ++i) {
      replicated.push_back(replicate(option, rows, replicates[i]));
      increases.push_back(replicated.back().perplexity / replicate_references[i]);
    }
    const Interval within = interval_of(increases, option.perplexity / choice.reference_perplexity);
    if (!any || within.high <= 1.0 + slo.max_perplexity_increase) {
      choice.set = option;
      sets = std::move(replicated);
      increase = within;
      any = true;
    }
    if (within.high <= 1.0 + slo.max_perplexity_increase) break;
    ++held;
  }
  GateResult& g = choice.gate;
  g.cost = cost;
  g.margin = slo.switch_margin;
  g.required_gain = slo.switch_margin + cost_share(cost);
  g.prompts = static_cast<int64_t>(n);
  const double point_gain =
      relative_gain(choice.single.tokens_per_second, choice.set->tokens_per_second);
  std::vector<double> gains, ppls, ratios;
  for (size_t i = 0; i < replicates.size(); ++i) {
    gains.push_back(relative_gain(singles[i].tokens_per_second, sets[i].tokens_per_second));
    ppls.push_back(sets[i].perplexity);
    ratios.push_back(sets[i].perplexity / singles[i].perplexity);
  }
  g.gain = interval_of(gains, point_gain);
  g.perplexity = interval_of(ppls, choice.set->perplexity);
  g.perplexity_ratio = interval_of(ratios, choice.set->perplexity / choice.single.perplexity);
  const std::string figures = fmt::format(
      "{} against {}: {:.0f} vs {:.0f} tokens/s predicted, gain {:+.1f}% (90% interval {:+.1f}% "
      "to {:+.1f}%), needed {:.1f}% (margin {:.1f}% + recompute of {} tokens, {:.3f} s); "
      "perplexity x{:.3f} ({:.3f} to {:.3f}) on {} shared prompts{}",
      choice.set->name(), choice.single.name(), choice.set->tokens_per_second,
      choice.single.tokens_per_second, 100 * g.gain.point, 100 * g.gain.low, 100 * g.gain.high,
      100 * g.required_gain, 100 * g.margin, cost.recompute_tokens, cost.seconds,
      g.perplexity_ratio->point, g.perplexity_ratio->low, g.perplexity_ratio->high, n,
      held > 0 && increase.high <= 1.0 + slo.max_perplexity_increase
          ? fmt::format(" ({} faster option(s) held: their perplexity may exceed the bound)",
                        held)
          : std::string());
  if (!(increase.high <= 1.0 + slo.max_perplexity_increase)) {
    g.reason = fmt::format("held: the set's perplexity may exceed its bound (x{:.3f} to x{:.3f} "
                           "the reference on the same prompts > x{:.3f}); {}",
                           increase.low, increase.high, 1.0 + slo.max_perplexity_increase,
                           figures);
  } else if (!choice.single.feasible) {
    g.pass = true;
    g.reason = "the single model breaks the SLO (" + choice.single.infeasible_reason +
               "; the bound is relative to the best set's full-depth perplexity): " + figures;
  } else if (!(g.gain.low > g.required_gain)) {
    g.reason = "held: the gain does not clear its cost: " + figures;
  } else {
    g.pass = true;
    g.reason = "the gain clears its cost: " + figures;
  }
  choice.reason = g.reason;
  return choice;
}

}  // namespace helios::controller
