#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <filesystem>
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
// With `per_batch`, also the scores of each batch of `batch` prompts in order (one prompt
// each with batch 1; an entry with no tokens for a batch with nothing to predict).
ExitScores score_prompts(const Transformer& transformer,
                         std::span<const std::vector<int32_t>> prompts, const ExitPolicy& policy,
                         int64_t batch = 8, std::vector<ExitScores>* per_batch = nullptr);

// score_prompts of a model that is not loaded: the checkpoint in `dir` at full depth, read one
// decoder layer at a time (LayerReader), so that only the embeddings, final norm, head, one
// layer and the prompts' hidden states are resident at once. Same sums as score_prompts on
// the model loaded whole, with the same dtype and device.
struct StreamedScores {
  ExitScores scores;
  std::vector<ExitScores> per_batch;  // the same per batch of prompts, in order (see above)
  std::vector<int32_t> exit_points;  // at full depth
  int64_t bytes_read = 0;            // tensor bytes read from the checkpoint, as stored
  int64_t peak_weight_bytes = 0;     // embeddings + final norm + head + the largest layer
  int64_t hidden_bytes = 0;          // the prompts' hidden states, held from layer to layer
};
StreamedScores score_prompts_streamed(const std::filesystem::path& dir,
                                      std::span<const std::vector<int32_t>> prompts,
                                      const ExitPolicy& policy, c10::ScalarType dtype,
                                      c10::Device device, int64_t batch = 8);

// Early-exit greedy continuations of prompts by the checkpoint in `dir`, read one decoder layer
// at a time: where the tokens a server would generate leave the network, without loading the
// model. Each prompt (token ids, BOS included) keeps its last `context` tokens; every step
// runs each unfinished sequence through the layers without a cache, leaves at the first exit
// point whose confidence meets `policy` (the last one otherwise) and appends that exit's
// greedy token; a sequence ends at EOS or after `max_new_tokens`. Layers past the step's
// deepest exit are not read. Throws Error(kInvalidArgument) for ids outside the vocabulary.
struct StreamedContinuation {
  std::vector<int32_t> exit_points;     // at full depth
  std::vector<int64_t> exit_histogram;  // generated tokens per exit point
  int64_t tokens = 0;                   // generated tokens
  int64_t bytes_read = 0;               // tensor bytes read, layers re-read at every step
  std::vector<std::vector<int32_t>> generated;  // per prompt, EOS included when reached
};
StreamedContinuation continue_streamed(const std::filesystem::path& dir,
                                       std::span<const std::vector<int32_t>> prompts,
                                       const ExitPolicy& policy, int64_t max_new_tokens,
                                       int64_t context, c10::ScalarType dtype,
                                       c10::Device device);

}  // namespace helios::model
