#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "helios/model/transformer.h"

namespace helios::model {

// Teacher-forced quality of every exit point on one text.
struct ExitPerplexity {
  std::vector<int32_t> exit_layers;  // the transformer's exit points
  std::vector<double> perplexity;    // perplexity[i] when every token exits at exit_layers[i]
  std::vector<double> mean_nll;      // nats per token, same indexing
  // exit_histogram[i]: predicted tokens whose first confident exit (under the policy) is
  // exit_layers[i]; tokens never confident land on the last loaded layer.
  std::vector<int64_t> exit_histogram;
  int64_t tokens = 0;  // predicted tokens
};

// Scores `text` (token ids, no BOS): windows of up to `window` tokens (0: the model's
// max_position_embeddings), each with BOS prepended, predict every text token. Windows are
// batched `batch_windows` at a time.
ExitPerplexity evaluate_perplexity(const Transformer& transformer, std::span<const int32_t> text,
                                   const ExitPolicy& policy, int64_t window = 0,
                                   int64_t batch_windows = 8);

// Teacher-forced scores of prompts as a server prefills them (token ids, BOS included): every
// position with a next prompt token predicts it, at every exit point. Prompts longer than the
// model's max_position_embeddings are cut there. Prompts are batched `batch` at a time, padded
// on the right (causal attention: padding never reaches the positions scored). The sums equal
// those of prefilling each prompt alone with score_prompt. Throws Error(kInvalidArgument)
// naming the prompt and position when a token id is outside the model's vocabulary.
ExitScores score_prompts(const Transformer& transformer,
                         std::span<const std::vector<int32_t>> prompts, const ExitPolicy& policy,
                         int64_t batch = 8);

}  // namespace helios::model
