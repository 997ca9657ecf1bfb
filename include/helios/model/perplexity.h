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
// model. Each prompt (token ids, BOS included) keeps its last `context` tokens (fewer when the
// model's max_position_embeddings leaves no room for `max_new_tokens` more); a sequence ends
// at EOS or after `max_new_tokens`. Throws Error(kInvalidArgument) for ids outside the
// vocabulary.
//
// It decodes as the serving engine does (Transformer::prefill, then Transformer::decode), with
// a K/V cache per layer for the sequences, dense and right-padded (a row's query is masked past
// its own length; RoPE positions continue per row). Every step reads the layers from the first
// until every running row has left (at the first exit point whose confidence meets `policy`,
// the last one otherwise) and appends that exit's greedy token; a deeper layer is not read in
// that step. The first step runs the contexts through the layers it reads (the prefill); each
// later step runs only the previous step's token, one query per row over the cached positions.
// What a row does not compute in a step is computed when a later step reads the layer, before
// any query there (the same arithmetic, deferred; nothing is done for a row that has ended):
//  - the contexts run every layer in full (as prefill: their keys/values at full depth), the
//    layers past the first step's deepest exit when a later step first reads them;
//  - a generated token that left at exit e keeps its exit hidden state, and the keys/values of
//    every layer from e on are projected from that state (decode's fill of the skipped layers,
//    DecodeSteps::fill_skipped_layers), so later tokens attend to complete caches.
// So the tokens and exits are those of the engine decoding the same prompts alone, greedily;
// with early exit off they are plain greedy decoding.
struct StreamedContinuation {
  std::vector<int32_t> exit_points;     // at full depth
  std::vector<int64_t> exit_histogram;  // generated tokens per exit point
  int64_t tokens = 0;                   // generated tokens
  int64_t bytes_read = 0;               // tensor bytes read, layers re-read at every step
  // The most held besides the weights (see continuation_cache_bytes, its bound): the K/V cache
  // of every layer read, the contexts' hidden states until every layer has run them, and the
  // exit states of generated tokens whose skipped layers' keys/values are still to project.
  int64_t cache_bytes = 0;
  std::vector<std::vector<int32_t>> generated;    // per prompt, EOS included when reached
  std::vector<std::vector<int32_t>> exit_layers;  // per prompt, each generated token's exit
};
StreamedContinuation continue_streamed(const std::filesystem::path& dir,
                                       std::span<const std::vector<int32_t>> prompts,
                                       const ExitPolicy& policy, int64_t max_new_tokens,
                                       int64_t context, c10::ScalarType dtype,
                                       c10::Device device);

// The most StreamedContinuation::cache_bytes can be for `prompts` prompts continued under
// `config` with these arguments, at `element_size` bytes per element of the dtype: every
// layer's keys and values for prompts x (context + max_new_tokens - 1) positions, the contexts'
// hidden states and the generated tokens' exit states.
int64_t continuation_cache_bytes(const ModelConfig& config, int64_t prompts,
                                 int64_t max_new_tokens, int64_t context, int64_t element_size);

}  // namespace helios::model
