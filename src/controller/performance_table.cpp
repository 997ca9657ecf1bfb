#include "helios/controller/performance_table.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

namespace helios::controller {
namespace {

constexpr double kInfinity = std::numeric_limits<double>::infinity();

int64_t generated_total(const ProfileRow& row) {
  int64_t total = 0;
  for (const int64_t n : row.generated_exits) total += n;
  return total;
}

}  // namespace

void PerformanceTable::upsert(ProfileRow row) {
  const auto it = std::find_if(rows_.begin(), rows_.end(),
                               [&](const ProfileRow& r) { return r.model == row.model; });
  if (it == rows_.end()) {
    rows_.push_back(std::move(row));
  } else {
    *it = std::move(row);
  }
}

const ProfileRow* PerformanceTable::find(std::string_view model) const {
  const auto it = std::find_if(rows_.begin(), rows_.end(),
                               [&](const ProfileRow& r) { return r.model == model; });
  return it == rows_.end() ? nullptr : &*it;
}

bool PerformanceTable::stale(const ProfileRow& row, int64_t now_requests,
                             int64_t interval) const {
  return interval > 0 && now_requests - row.profiled_at_request >= interval;
}

double coverage(const ProfileRow& row, int64_t depth) {
  const int64_t total = generated_total(row);
  if (total == 0) return depth >= row.profiled_layers ? 1.0 : 0.0;
  int64_t covered = 0;
  for (size_t i = 0; i < row.exit_points.size() && i < row.generated_exits.size(); ++i) {
    if (row.exit_points[i] <= depth) covered += row.generated_exits[i];
  }
  return static_cast<double>(covered) / static_cast<double>(total);
}

double full_depth_perplexity(const ProfileRow& row) {
  if (row.prompt_tokens <= 0 || row.prompt_nll_sum.empty()) return kInfinity;
  return std::exp(row.prompt_nll_sum.back() / static_cast<double>(row.prompt_tokens));
}

double policy_perplexity(const ProfileRow& row, int64_t depth) {
  const std::optional<size_t> deepest = deepest_exit_index(row, depth);
  if (row.prompt_tokens <= 0 || !deepest || row.prompt_policy_nll_sum.empty()) return kInfinity;
  // Exit points are ascending: past the scored columns, the deepest scored one is the last.
  const size_t at = std::min(*deepest, row.prompt_policy_nll_sum.size() - 1);
  return std::exp(row.prompt_policy_nll_sum[at] / static_cast<double>(row.prompt_tokens));
}

std::optional<size_t> deepest_exit_index(const ProfileRow& row, int64_t depth) {
  std::optional<size_t> deepest;
  for (size_t i = 0; i < row.exit_points.size(); ++i) {
    if (row.exit_points[i] <= depth) deepest = i;
  }
  return deepest;
}

double mean_layers_run(const ProfileRow& row, int64_t depth) {
  const int64_t total = generated_total(row);
  if (total == 0) return static_cast<double>(depth);
  double layers = 0.0;
  for (size_t i = 0; i < row.exit_points.size() && i < row.generated_exits.size(); ++i) {
    layers += static_cast<double>(std::min<int64_t>(row.exit_points[i], depth)) *
              static_cast<double>(row.generated_exits[i]);
  }
  return layers / static_cast<double>(total);
}

}  // namespace helios::controller
