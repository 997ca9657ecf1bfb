#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "helios/model/transformer.h"

namespace helios::engine {

// The prompt's mean negative log-likelihood (nats per token) at `model`'s first exit point,
// teacher-forced over its first `max_tokens` tokens (BOS included); NaN when that leaves no
// token to predict. Runs only the layers below the first exit, without a cache: the cost of
// routing a prompt is that prefix through those layers and one exit head, per member.
double first_exit_nll(const model::Transformer& model, std::span<const int32_t> prompt,
                      int64_t max_tokens);

// Which member of a resident set serves a prompt: the one whose first exit predicts the
// prompt's prefix best (lowest first_exit_nll). Cheap enough to run for every arrival, and
// decided once: a routed request stays on its member unless that member leaves the set.
struct RouteChoice {
  size_t member = 0;
  std::vector<double> nll;  // per member; NaN where the prefix gave nothing to predict
  double seconds = 0;       // wall time of the scoring
};

// Scores `prompt` on each member (at least one) and picks the lowest NLL; ties and NaN keep
// the earlier member. One member is returned at once, without scoring.
RouteChoice route_prompt(std::span<const model::Transformer* const> members,
                         std::span<const int32_t> prompt, int64_t max_tokens);

}  // namespace helios::engine
