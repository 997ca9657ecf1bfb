#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "helios/controller/performance_table.h"
#include "helios/model/exit_scores.h"

// Synthetic Performance History Table rows for the policy's unit tests: exit points 2 and 4
// of a 4-layer model, per-prompt evidence that adds up to the row's columns.
namespace helios::controller::synthetic {

// One prompt's scores at exit points 2 and 4: `early` positions confident at exit 2 (the rest
// never), NLL per position `nll2` at exit 2 and `nll4` at exit 4.
inline model::ExitScores prompt(int64_t tokens, int64_t early, double nll2, double nll4) {
  model::ExitScores s;
  s.tokens = tokens;
  s.exit_histogram = {early, 0};
  s.nll_sum = {nll2 * static_cast<double>(tokens), nll4 * static_cast<double>(tokens)};
  // Confident positions leave at exit 2 under the policy, the rest at 4.
  s.policy_nll_sum = {s.nll_sum[0],
                      nll2 * static_cast<double>(early) + nll4 * static_cast<double>(tokens - early)};
  return s;
}

// A row whose columns are the sums of `prompts`, keyed as scored on sample `key`.
inline ProfileRow row(const std::string& model, std::vector<model::ExitScores> prompts,
                      uint64_t key) {
  ProfileRow r;
  r.model = model;
  r.profiled_layers = 4;
  r.exit_points = {2, 4};
  r.footprint.kv_projection_share = 0.1;
  r.footprint.total_layers = 4;
  model::ExitScores sum;
  for (const auto& p : prompts) sum.add(p);
  r.prompt_nll_sum = sum.nll_sum;
  r.prompt_policy_nll_sum = sum.policy_nll_sum;
  r.prompt_tokens = sum.tokens;
  r.prompt_evidence = std::move(prompts);
  r.evidence_key = key;
  r.evidence_prompts = static_cast<int64_t>(r.prompt_evidence.size());
  return r;
}

}  // namespace helios::controller::synthetic
