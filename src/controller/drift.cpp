#include "helios/controller/drift.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

namespace helios::controller {
namespace {

struct Moments {
  double mean = 0, variance = 0;
  int64_t n = 0;
};

Moments moments(const std::vector<double>& xs) {
  Moments m;
  m.n = static_cast<int64_t>(xs.size());
  if (m.n == 0) return m;
  for (const double x : xs) m.mean += x;
  m.mean /= static_cast<double>(m.n);
  if (m.n > 1) {
    for (const double x : xs) m.variance += (x - m.mean) * (x - m.mean);
    m.variance /= static_cast<double>(m.n - 1);
  }
  return m;
}

}  // namespace

int next_drift_backoff(int backoff, bool drift_pass, bool moved) {
  if (moved) return 0;
  return drift_pass ? std::min(backoff + 1, kMaxDriftBackoff) : backoff;
}

DriftCheck perplexity_drift(const std::deque<std::pair<double, int64_t>>& window,
                            const ProfileRow& row, int64_t depth, double bound) {
  DriftCheck c;
  double nll = 0;
  int64_t tokens = 0;
  std::vector<double> live;
  for (const auto& [n, t] : window) {
    if (t <= 0) continue;
    nll += n, tokens += t;
    live.push_back(n / static_cast<double>(t));
  }
  c.live = tokens > 0 ? std::exp(nll / static_cast<double>(tokens)) : 0.0;
  c.expected = policy_perplexity(row, depth);
  c.live_prompts = static_cast<int64_t>(live.size());
  if (!(c.live > bound) || !std::isfinite(c.expected)) return c;

  // The row's per-prompt means at the served depth (the exit point policy_perplexity reads).
  const std::optional<size_t> at = deepest_exit_index(row, depth);
  std::vector<double> profiled;
  for (const model::ExitScores& s : row.prompt_evidence) {
    if (at && s.tokens > 0 && *at < s.policy_nll_sum.size()) {
      profiled.push_back(s.policy_nll_sum[*at] / static_cast<double>(s.tokens));
    }
  }
  c.row_prompts = static_cast<int64_t>(profiled.size());
  if (c.live > kPerplexityDriftFactor * c.expected) {
    c.drifted = true;
    c.reason = fmt::format("live prompt perplexity {:.2f} > bound {:.2f} and > {:.1f}x the {:.2f} "
                           "profiled",
                           c.live, bound, kPerplexityDriftFactor, c.expected);
    return c;
  }
  const Moments a = moments(live), b = moments(profiled);
  if (a.n < 4 || b.n < 4) return c;
  const double spread = std::sqrt(a.variance / static_cast<double>(a.n) +
                                  b.variance / static_cast<double>(b.n));
  const double shift = a.mean - b.mean;
  c.t = spread > 0 ? shift / spread : (shift > 0 ? INFINITY : 0.0);
  if (shift >= std::log(kDriftMinRatio) && c.t >= kDriftTStatistic) {
    c.drifted = true;
    c.reason = fmt::format("live prompt perplexity {:.2f} > bound {:.2f}; its {} prompts' mean "
                           "log-perplexity is x{:.2f} in perplexity above the {} profiled ones' "
                           "(Welch t {:.1f} >= {:.1f})",
                           c.live, bound, a.n, std::exp(shift), b.n, c.t, kDriftTStatistic);
  }
  return c;
}

std::optional<std::string> resident_share_drift(const std::vector<int64_t>& routed,
                                                const std::vector<std::string>& names,
                                                int64_t window, double min_share) {
  int64_t total = 0;
  for (const int64_t r : routed) total += r;
  if (total < window || total <= 0) return std::nullopt;
  std::string shares;
  std::optional<size_t> left;
  for (size_t m = 0; m < routed.size(); ++m) {
    const double share = static_cast<double>(routed[m]) / static_cast<double>(total);
    shares += fmt::format("{}{} {:.0f}%", shares.empty() ? "" : ", ",
                          m < names.size() ? names[m] : std::to_string(m), 100 * share);
    if (share < min_share && !left) left = m;
  }
  if (!left) return std::nullopt;
  return fmt::format("the traffic left resident member {}: routed shares over the last {} "
                     "requests {} (resident_min_share {:.0f}%)",
                     *left < names.size() ? names[*left] : std::to_string(*left), total, shares,
                     100 * min_share);
}

}  // namespace helios::controller
