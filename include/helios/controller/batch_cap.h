#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "helios/controller/performance_table.h"
#include "helios/controller/policy.h"
#include "helios/controller/slo_config.h"

namespace helios::controller {

// Decode step time as a function of the batch: seconds = fixed + per_sequence * batch. Each
// sequence gets one token per step, so the step time is the time per output token.
struct StepModel {
  double fixed_seconds = 0.0;
  double per_sequence_seconds = 0.0;

  double seconds(double batch) const { return fixed_seconds + per_sequence_seconds * batch; }
  bool valid() const { return per_sequence_seconds > 0.0 || fixed_seconds > 0.0; }
};

// Least-squares fit over (batch, seconds) pairs of decode steps. With one batch size only, the
// time is taken as proportional to the batch (no fixed part: the conservative reading, since
// it predicts the largest gain from a smaller batch... and the smallest from a larger one).
StepModel fit_step_model(const std::vector<std::pair<double, double>>& batch_seconds);

// The concurrency cap that meets the p95 time-per-output-token bound of the SLO for `option`
// (a row profiled at its full depth, predicted at option.depth): the largest batch whose
// predicted p95 TPOT (step model x the option's cost ratio x the row's p95/mean ratio) stays
// within the bound, at most max_running. Without a bound, that maximum: the KV pool limits
// the batch through the engine's admission by free blocks, not through the cap (which would
// hold a full context per sequence). 0 when not even one sequence meets the bound.
int64_t batch_cap(const ProfileRow& row, const StepModel& steps, const Option& option,
                  const SloConfig& slo, int64_t max_running);

// The latency objective's cap: the largest batch whose predicted step takes at most twice the
// single-sequence step. Up to there batching is cheap for each sequence (the fixed part of a
// step dominates); beyond it every added sequence slows all the others almost linearly.
int64_t latency_knee(const StepModel& steps, int64_t most);

// Predicted p95 TPOT (ms) of `option` at `batch` concurrent sequences.
double predicted_tpot_ms(const ProfileRow& row, const StepModel& steps, const Option& option,
                         int64_t batch);

}  // namespace helios::controller
