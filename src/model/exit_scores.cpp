#include "helios/model/exit_scores.h"

#include <algorithm>
#include <cmath>

namespace helios::model {

void ExitScores::add(const ExitScores& other) {
  nll_sum.resize(std::max(nll_sum.size(), other.nll_sum.size()), 0.0);
  exit_histogram.resize(std::max(exit_histogram.size(), other.exit_histogram.size()), 0);
  for (size_t e = 0; e < other.nll_sum.size(); ++e) nll_sum[e] += other.nll_sum[e];
  for (size_t e = 0; e < other.exit_histogram.size(); ++e) {
    exit_histogram[e] += other.exit_histogram[e];
  }
  policy_nll_sum.resize(std::max(policy_nll_sum.size(), other.policy_nll_sum.size()), 0.0);
  for (size_t e = 0; e < other.policy_nll_sum.size(); ++e) {
    policy_nll_sum[e] += other.policy_nll_sum[e];
  }
  tokens += other.tokens;
}

double ExitScores::perplexity(size_t exit_index) const {
  return std::exp(nll_sum.at(exit_index) / static_cast<double>(std::max<int64_t>(tokens, 1)));
}

double ExitScores::policy_perplexity(size_t exit_index) const {
  return std::exp(policy_nll_sum.at(exit_index) /
                  static_cast<double>(std::max<int64_t>(tokens, 1)));
}

}  // namespace helios::model
