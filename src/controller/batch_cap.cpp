#include "helios/controller/batch_cap.h"

#include <algorithm>
#include <cmath>

namespace helios::controller {

StepModel fit_step_model(const std::vector<std::pair<double, double>>& batch_seconds) {
  StepModel model;
  if (batch_seconds.empty()) return model;
  double n = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (const auto& [x, y] : batch_seconds) {
    n += 1, sx += x, sy += y, sxx += x * x, sxy += x * y;
  }
  const double var = sxx - sx * sx / n;
  if (var > 1e-9 * n) {
    const double slope = (sxy - sx * sy / n) / var;
    const double intercept = (sy - slope * sx) / n;
    if (slope > 0 && intercept >= 0) {
      model.per_sequence_seconds = slope;
      model.fixed_seconds = intercept;
      return model;
    }
  }
  model.per_sequence_seconds = sx > 0 ? sy / sx : 0.0;
  return model;
}

double predicted_tpot_ms(const ProfileRow& row, const StepModel& steps, const Option& option,
                         int64_t batch) {
  const double p95_over_mean =
      row.tpot_mean_ms > 0 && row.tpot_p95_ms > 0 ? row.tpot_p95_ms / row.tpot_mean_ms : 1.0;
  return steps.seconds(static_cast<double>(batch)) * 1e3 * option.cost_ratio * p95_over_mean;
}

int64_t latency_knee(const StepModel& steps, int64_t most) {
  if (!steps.valid()) return most;
  int64_t knee = 1;
  for (int64_t b = 2; b <= most; ++b) {
    if (steps.seconds(static_cast<double>(b)) <= 2.0 * steps.seconds(1.0)) knee = b;
  }
  return knee;
}

int64_t batch_cap(const ProfileRow& row, const StepModel& steps, const Option& option,
                  const SloConfig& slo, int64_t max_running) {
  // Not the pool's full-context sequences: the engine admits by free blocks (preempting when a
  // growing sequence finds none), as it does for a statically served model, so live sequences
  // shorter than the context share the freed memory.
  int64_t most = std::max<int64_t>(1, max_running);
  if (slo.objective == Objective::kLatency) most = latency_knee(steps, most);
  if (!slo.p95_tpot_ms || !steps.valid()) return most;
  int64_t cap = 0;
  for (int64_t b = 1; b <= most; ++b) {
    if (predicted_tpot_ms(row, steps, option, b) <= *slo.p95_tpot_ms) cap = b;
  }
  return cap;
}

}  // namespace helios::controller
