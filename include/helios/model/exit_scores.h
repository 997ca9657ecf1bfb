#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace helios::model {

// Teacher-forced telemetry of positions with known next tokens, one entry per exit point:
// the summed next-token loss if every position left there, and where each position's first
// confident exit (under the policy) falls. Sums, so that scores of many texts add up.
struct ExitScores {
  std::vector<double> nll_sum;          // nats
  std::vector<int64_t> exit_histogram;  // positions whose first confident exit is this point
  // nats: the loss of early-exit decoding capped at this exit point. Each position leaves at
  // its first confident exit point when that is at or before this one, and here otherwise.
  // At the last exit point it is the loss of early-exit decoding at the loaded depth, so a
  // controller can read both the quality of the current policy and of shallower loads.
  std::vector<double> policy_nll_sum;
  int64_t tokens = 0;  // scored positions

  void add(const ExitScores& other);
  double perplexity(size_t exit_index) const;
  double policy_perplexity(size_t exit_index) const;
};

}  // namespace helios::model
