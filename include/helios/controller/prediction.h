#pragma once

#include <cstdint>
#include <vector>

#include "helios/controller/batch_cap.h"
#include "helios/controller/performance_table.h"
#include "helios/controller/policy.h"
#include "helios/model/exit_scores.h"

// Rows of the Performance History Table for candidates that were not served (profile mode
// "sample"): their quality from the shared prompt sample, their serving figures from the
// served model's live ones, scaled by how much weight each generated token streams.
namespace helios::controller {

// Weight bytes one generated token streams when `row`'s model is loaded to `depth`: the fixed
// tensors (embeddings, exit head) plus the layers it runs and the K/V projections of the
// loaded layers it skips, token_cost's layer units at the row's layer size.
double token_work_bytes(const ProfileRow& row, int64_t depth);

// The row of `candidate` at full depth without serving it. Quality: `scores`, the shared
// sample scored teacher-forced at the full-depth `exit_points`. Generated tokens' exits:
// `generated_exits` (per exit point, from greedy continuations of the sample); when it is
// empty or all zero, the first-confident-exit histogram of the scored positions. Serving figures:
// those `served` measured live at served.profiled_layers, times the ratio of token work
// (decode tokens/s divided, p95/mean TPOT and energy per token multiplied), TTFT by the ratio
// of weight bytes (prefill runs every loaded layer), and tokens/s by the ratio of the
// sequences each pool holds under `limits` as far as the traffic asks for them. The traffic
// figures (mean batch, peak concurrency, requests) are the served row's.
ProfileRow predict_row(const ProfileRow& served, const Candidate& candidate,
                       const model::ExitScores& scores, const std::vector<int32_t>& exit_points,
                       const std::vector<int64_t>& generated_exits, const PolicyLimits& limits);

// A step model measured on `served` (at served.profiled_layers) carried to `predicted` (at
// its profiled depth) by the ratio of their token work.
StepModel predict_step_model(const StepModel& measured, const ProfileRow& served,
                             const ProfileRow& predicted);

}  // namespace helios::controller
