#include "helios/controller/prediction.h"

#include <algorithm>

#include "helios/engine/memory_plan.h"

namespace helios::controller {
namespace {

// How much more a token of `to` costs than one of `from`, each at its profiled depth.
double work_ratio(const ProfileRow& from, const ProfileRow& to) {
  const double base = token_work_bytes(from, from.profiled_layers);
  return base > 0 ? token_work_bytes(to, to.profiled_layers) / base : 1.0;
}

}  // namespace

double token_work_bytes(const ProfileRow& row, int64_t depth) {
  return static_cast<double>(row.footprint.fixed_bytes) +
         static_cast<double>(row.footprint.layer_bytes) * (token_cost(row, depth) - 1.0);
}

ProfileRow predict_row(const ProfileRow& served, const Candidate& candidate,
                       const model::ExitScores& scores, const std::vector<int32_t>& exit_points,
                       const std::vector<int64_t>& generated_exits, const PolicyLimits& limits) {
  ProfileRow row;
  row.model = candidate.name;
  row.path = candidate.path;
  row.footprint = candidate.footprint;
  row.profiled_layers = exit_points.empty() ? candidate.config.num_hidden_layers
                                            : static_cast<int64_t>(exit_points.back());
  row.exit_points = exit_points;
  const bool generated = generated_exits.size() == exit_points.size() &&
                         std::any_of(generated_exits.begin(), generated_exits.end(),
                                     [](int64_t n) { return n > 0; });
  row.generated_exits = generated ? generated_exits : scores.exit_histogram;
  row.prompt_nll_sum = scores.nll_sum;
  row.prompt_policy_nll_sum = scores.policy_nll_sum;
  row.prompt_tokens = scores.tokens;
  row.requests = served.requests;
  row.mean_batch = served.mean_batch;
  row.peak_concurrency = served.peak_concurrency;
  row.profiled_at_request = served.profiled_at_request;

  const double work = work_ratio(served, row);
  const double served_weights =
      static_cast<double>(served.footprint.weight_bytes(served.profiled_layers));
  const double prefill = served_weights > 0
                             ? static_cast<double>(row.footprint.weight_bytes(row.profiled_layers)) /
                                   served_weights
                             : 1.0;
  // As evaluate() does: more room in the pool helps only as far as the traffic fills it.
  const double demand =
      std::max({1.0, served.peak_concurrency, static_cast<double>(limits.max_running)});
  const auto sequences = [&](const ProfileRow& r) {
    const engine::KvCapacity c = engine::kv_capacity(r.footprint, r.profiled_layers,
                                                     limits.memory_budget_bytes,
                                                     limits.kv_block_size);
    return std::max(1.0, std::min(static_cast<double>(c.kv_sequences), demand));
  };
  const double capacity = sequences(row) / sequences(served);
  row.decode_tokens_per_second = served.decode_tokens_per_second / work * capacity;
  row.tpot_p95_ms = served.tpot_p95_ms * work;
  row.tpot_mean_ms = served.tpot_mean_ms * work;
  row.ttft_p95_ms = served.ttft_p95_ms * prefill;
  row.energy_joules_per_token = served.energy_joules_per_token * work;
  return row;
}

StepModel predict_step_model(const StepModel& measured, const ProfileRow& served,
                             const ProfileRow& predicted) {
  const double work = work_ratio(served, predicted);
  return StepModel{measured.fixed_seconds * work, measured.per_sequence_seconds * work};
}

}  // namespace helios::controller
