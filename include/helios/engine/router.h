#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "helios/model/transformer.h"

namespace helios::engine {

// Each prompt's mean negative log-likelihood (nats per token) at `model`'s first exit point,
// teacher-forced over its first `max_tokens` tokens (BOS included); NaN for a prompt whose
// prefix leaves no token to predict. The prompts run as one batch (right-padded: windows start
// at 0 and attention is causal, so padding never reaches a real position) through the layers
// below the first exit, without a cache, then one exit head.
std::vector<double> first_exit_nll(const model::Transformer& model,
                                   std::span<const std::span<const int32_t>> prompts,
                                   int64_t max_tokens);

// Which member of a resident set serves each prompt: the one whose first exit predicts the
// prompt's prefix best (lowest first_exit_nll). Cheap enough to run for every arrival (the
// arrivals of an engine step are scored together), and decided once: a routed request stays on
// its member unless that member leaves the set.
struct RouteChoices {
  std::vector<size_t> members;          // per prompt
  std::vector<std::vector<double>> nll;  // per prompt, per member; NaN: nothing to predict
  double seconds = 0;                    // wall time of the scoring
};

// Scores `prompts` on each member and picks the lowest NLL per prompt; ties and NaN keep the
// earlier member. With one member nothing is scored (every prompt goes to it).
RouteChoices route_prompts(std::span<const model::Transformer* const> members,
                           std::span<const std::span<const int32_t>> prompts, int64_t max_tokens);

}  // namespace helios::engine
