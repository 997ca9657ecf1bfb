#include "helios/controller/switch_gate.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <vector>

namespace helios::controller {
namespace {

constexpr double kInfinity = std::numeric_limits<double>::infinity();
constexpr uint64_t kGateSeed = 0x68656c696f73ULL;  // fixed: the same rows, the same decision

// The option's objective score with its per-token work scaled by `work` (replicate / point).
double scaled_score(Objective objective, const Option& o, double work) {
  Option scaled = o;
  scaled.tokens_per_second = o.tokens_per_second / work;
  scaled.tpot_p95_ms = o.tpot_p95_ms * work;
  scaled.energy_joules_per_token = o.energy_joules_per_token * work;
  return objective_score(objective, scaled);
}

double quantile(std::vector<double> values, double q) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const double at = q * static_cast<double>(values.size() - 1);
  const size_t below = static_cast<size_t>(std::floor(at));
  const size_t above = std::min(values.size() - 1, below + 1);
  return values[below] + (at - static_cast<double>(below)) * (values[above] - values[below]);
}

}  // namespace

double weighted_token_cost(const ProfileRow& row, int64_t depth, const std::vector<int>& weights) {
  double layers = 0, tokens = 0;
  for (size_t p = 0; p < row.prompt_evidence.size() && p < weights.size(); ++p) {
    if (weights[p] == 0) continue;
    const model::ExitScores& s = row.prompt_evidence[p];
    double left = static_cast<double>(s.tokens);
    double run = 0;
    for (size_t i = 0; i < row.exit_points.size() && i < s.exit_histogram.size(); ++i) {
      if (row.exit_points[i] > depth) break;
      run += static_cast<double>(row.exit_points[i]) * static_cast<double>(s.exit_histogram[i]);
      left -= static_cast<double>(s.exit_histogram[i]);
    }
    run += std::max(0.0, left) * static_cast<double>(depth);
    layers += weights[p] * run;
    tokens += weights[p] * static_cast<double>(s.tokens);
  }
  if (tokens <= 0) return 1.0 + static_cast<double>(depth);
  const double mean = layers / tokens;
  return 1.0 + mean + row.footprint.kv_projection_share * (static_cast<double>(depth) - mean);
}

double relative_gain(double from, double to) {
  if (from == 0) return to > 0 ? kInfinity : 0.0;
  return (to - from) / std::abs(from);
}

Interval interval_of(const std::vector<double>& values, double point) {
  const double tail = (1.0 - kGateConfidence) / 2.0;
  return {quantile(values, tail), point, quantile(values, 1.0 - tail)};
}

nlohmann::json interval_json(const Interval& i) {
  const auto finite = [](double x) { return std::isfinite(x) ? nlohmann::json(x) : nullptr; };
  return {{"low", finite(i.low)}, {"point", finite(i.point)}, {"high", finite(i.high)}};
}

std::vector<std::vector<int>> bootstrap_weights(size_t n) {
  std::vector<std::vector<int>> replicates;
  if (n == 0) return replicates;
  std::mt19937_64 rng(kGateSeed);
  std::uniform_int_distribution<size_t> pick(0, n - 1);
  for (int r = 0; r < kGateReplicates; ++r) {
    std::vector<int> weights(n, 0);
    for (size_t i = 0; i < n; ++i) ++weights[pick(rng)];
    replicates.push_back(std::move(weights));
  }
  return replicates;
}

double cost_share(const SwitchCost& cost) {
  if (!(cost.horizon_seconds > 0)) return kInfinity;
  return std::isfinite(cost.horizon_seconds) ? cost.seconds / cost.horizon_seconds : 0.0;
}

double weighted_policy_perplexity(const ProfileRow& row, int64_t depth,
                                  const std::vector<int>& weights) {
  const std::optional<size_t> at = deepest_exit_index(row, depth);
  if (!at) return kInfinity;
  double nll = 0, tokens = 0;
  for (size_t p = 0; p < row.prompt_evidence.size() && p < weights.size(); ++p) {
    const model::ExitScores& s = row.prompt_evidence[p];
    if (weights[p] == 0 || *at >= s.policy_nll_sum.size()) continue;
    nll += weights[p] * s.policy_nll_sum[*at];
    tokens += weights[p] * static_cast<double>(s.tokens);
  }
  return tokens > 0 ? std::exp(nll / tokens) : kInfinity;
}

bool paired(const ProfileRow& a, const ProfileRow& b) {
  return a.evidence_key != 0 && a.evidence_key == b.evidence_key && !a.prompt_evidence.empty() &&
         a.prompt_evidence.size() == b.prompt_evidence.size();
}

nlohmann::json GateResult::to_json() const {
  nlohmann::json j = {{"pass", pass},
                      {"reason", reason},
                      {"gain", interval_json(gain)},
                      {"required_gain", required_gain},
                      {"margin", margin},
                      {"confidence", kGateConfidence},
                      {"prompts", prompts},
                      {"recompute_tokens", cost.recompute_tokens},
                      {"cost_seconds", cost.seconds},
                      {"horizon_seconds",
                       std::isfinite(cost.horizon_seconds) ? nlohmann::json(cost.horizon_seconds)
                                                           : nlohmann::json(nullptr)}};
  j["perplexity_ratio"] = perplexity_ratio ? interval_json(*perplexity_ratio) : nlohmann::json(nullptr);
  j["perplexity"] = perplexity ? interval_json(*perplexity) : nlohmann::json(nullptr);
  return j;
}

GateResult gate_switch(const ProfileRow& from_row, const Option& from, const ProfileRow& to_row,
                       const Option& to, const SloConfig& slo, const SwitchCost& cost) {
  GateResult g;
  g.cost = cost;
  g.margin = slo.switch_margin;
  g.required_gain = slo.switch_margin + cost_share(cost);
  const double point_gain = relative_gain(from.score, to.score);
  g.gain = {point_gain, point_gain, point_gain};

  if (paired(from_row, to_row)) {
    const size_t n = to_row.prompt_evidence.size();
    g.prompts = static_cast<int64_t>(n);
    const std::vector<int> all(n, 1);
    const double to_work = weighted_token_cost(to_row, to.depth, all);
    const double from_work = weighted_token_cost(from_row, from.depth, all);
    const double to_ppl = weighted_policy_perplexity(to_row, to.depth, all);
    const double from_ppl = weighted_policy_perplexity(from_row, from.depth, all);
    std::vector<double> gains, ratios, ppls;
    for (const std::vector<int>& weights : bootstrap_weights(n)) {
      const double t = scaled_score(slo.objective, to,
                                    weighted_token_cost(to_row, to.depth, weights) / to_work);
      const double f = scaled_score(slo.objective, from,
                                    weighted_token_cost(from_row, from.depth, weights) / from_work);
      gains.push_back(relative_gain(f, t));
      const double tp = weighted_policy_perplexity(to_row, to.depth, weights);
      const double fp = weighted_policy_perplexity(from_row, from.depth, weights);
      ppls.push_back(tp);
      ratios.push_back(tp / fp);
    }
    g.gain = interval_of(gains, point_gain);
    g.perplexity = interval_of(ppls, to_ppl);
    g.perplexity_ratio = interval_of(ratios, to_ppl / from_ppl);
  }

  const auto figures = [&] {
    std::string s = fmt::format("gain {:+.1f}% (90% interval {:+.1f}% to {:+.1f}%), needed {:.1f}% "
                                "(margin {:.1f}% + recompute of {} tokens, {:.3f} s, over {:.1f} s)",
                                100 * g.gain.point, 100 * g.gain.low, 100 * g.gain.high,
                                100 * g.required_gain, 100 * g.margin, cost.recompute_tokens,
                                cost.seconds, cost.horizon_seconds);
    if (g.perplexity_ratio) {
      s += fmt::format("; perplexity x{:.3f} ({:.3f} to {:.3f}) on {} shared prompts",
                       g.perplexity_ratio->point, g.perplexity_ratio->low,
                       g.perplexity_ratio->high, g.prompts);
    }
    return s;
  };
  if (!from.feasible) {
    g.pass = true;
    g.reason = "the served option breaks the SLO (" + from.infeasible_reason + "): " + figures();
    return g;
  }
  if (g.perplexity && !(g.perplexity->high <= to.perplexity_bound)) {
    g.reason = fmt::format("held: {}@{} perplexity may exceed its bound ({:.3f} to {:.3f} > "
                           "{:.3f}); {}",
                           to.model, to.depth, g.perplexity->low, g.perplexity->high,
                           to.perplexity_bound, figures());
    return g;
  }
  if (!(g.gain.low > g.required_gain)) {
    g.reason = "held: the gain does not clear its cost: " + figures();
    return g;
  }
  g.pass = true;
  g.reason = "the gain clears its cost: " + figures();
  return g;
}

}  // namespace helios::controller
