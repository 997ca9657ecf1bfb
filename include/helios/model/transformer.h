#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "helios/kv/kv_cache.h"
#include "helios/model/config.h"
#include "helios/model/exit_scores.h"
#include "helios/model/weights.h"
#include "helios/ops/exit_head.h"
#include "helios/ops/rotary.h"

namespace helios::model {

enum class ConfidenceMetric {
  kMaxProb,  // max softmax probability of the exit head
  kEntropy,  // 1 - H(p) / ln(vocab): 1 for a one-hot, 0 for uniform
};

// The default exit confidence threshold. Byte-level models spread probability over more
// plausible continuations than subword models, so their useful thresholds sit lower than the
// 0.8-0.9 common for subword LayerSkip models; see the zoo table in the README.
inline constexpr double kDefaultExitThreshold = 0.5;

// When a token may leave the network. threshold > 1 never exits early; threshold 0 always
// exits at the first exit point.
struct ExitPolicy {
  double threshold = kDefaultExitThreshold;
  ConfidenceMetric metric = ConfidenceMetric::kMaxProb;

  // Throws helios::Error(kInvalidArgument) naming the field when threshold is negative or NaN.
  void validate() const;
};

// How one token left the network.
struct TokenExit {
  int32_t exit_layer = 0;    // 1-based count of layers run
  float confidence = 0.0f;   // at exit_layer, per the policy's metric
  bool greedy_exit = false;  // forced out at the last loaded layer below the threshold
};

class DecodeGraphs;
struct DecodeSteps;
class CpuDecode;

// One row per sequence: the exit head's logits at the row's exit layer, and the exit.
struct StepOutput {
  at::Tensor logits;  // [rows, vocab] float32
  std::vector<TokenExit> exits;
  // prefill with score_prompt: every prompt position that has a next prompt token, scored at
  // every exit point (the prefill runs all loaded layers anyway, so this costs only the heads).
  ExitScores prompt_scores;
};

// Llama decoder with early exit over the loaded depth of `weights`. Stateless apart from the
// rotary tables: KV lives in the caller's KvCache, so one Transformer serves any batch.
// Keeps references: `config` and `weights` must outlive it.
class Transformer {
 public:
  Transformer(const ModelConfig& config, const ModelWeights& weights);

  const ModelConfig& config() const { return config_; }
  // The rotary tables, sized to max_position_embeddings.
  const ops::RotaryEmbedding& rotary() const { return rotary_; }
  const ModelWeights& weights() const { return weights_; }
  int64_t loaded_layers() const { return weights_.loaded_layers(); }
  // The layer counts at which a token may exit within the loaded depth: the configured exit
  // layers up to the depth, plus the depth itself (the last loaded layer always exits).
  const std::vector<int32_t>& exit_points() const { return exit_points_; }
  kv::KvCacheShape kv_shape(int64_t block_size) const;

  // Teacher-forced forward of windows that start at position 0, without a cache.
  // tokens: int64 [batch, time]. Returns the hidden state after each exit point
  // ([batch, time, hidden] each, aligned with exit_points()). Differentiable (the trainer uses it).
  std::vector<at::Tensor> forward_exits(const at::Tensor& tokens) const;
  // The token embeddings of forward_exits: int64 [batch, time] -> [batch, time, hidden].
  at::Tensor embed(const at::Tensor& tokens) const;
  // Keys and values of one layer (rotary applied to the keys): [..., kv_heads, head_dim].
  struct LayerKv {
    at::Tensor k, v;
  };
  // One decoder layer of forward_exits on hidden states h [batch, time, hidden] of windows that
  // start at position 0. `layer` need not be resident in weights() (streamed scoring brings
  // one layer at a time); it must have this config's shapes. With `kv`, also the layer's keys
  // and values of the windows ([batch, time, kv_heads, head_dim]), as prefill caches them.
  at::Tensor forward_layer(const LayerWeights& layer, const at::Tensor& h,
                           LayerKv* kv = nullptr) const;
  // The keys/values `layer` gets from rows whose input to it is h [N, hidden], at `positions`
  // (int64 [N]): [N, kv_heads, head_dim]. The projections prefill and decode cache, so also
  // those decode writes for a layer a row skipped (h: the row's exit hidden state).
  LayerKv layer_kv(const LayerWeights& layer, const at::Tensor& h,
                   const at::Tensor& positions) const;
  // One decoder layer for one new position per row over a dense per-row cache of the layer
  // (streamed continuations, which hold no paged KvCache): keys/values [R, capacity, kv_heads,
  // head_dim]; h [B, hidden] is the input of rows `rows` (int64 [B], distinct) at `positions`
  // (int64 [B]). Writes each row's keys/values at (rows[b], positions[b]), attends to that
  // row's positions [0, positions[b]] (the earlier ones must be cached) and returns the
  // layer's output [B, hidden]. `context`: max(positions) + 1, at most capacity.
  at::Tensor forward_layer_cached(const LayerWeights& layer, const at::Tensor& h,
                                  const at::Tensor& rows, const at::Tensor& positions,
                                  int64_t context, at::Tensor& keys, at::Tensor& values) const;
  // The exit head: final norm, then the LM head. hidden [..., hidden] -> logits [..., vocab].
  at::Tensor exit_logits(const at::Tensor& hidden) const;
  // Confidence of each row of `logits` [rows, vocab] under `metric`: float32 [rows].
  static at::Tensor confidence(const at::Tensor& logits, ConfidenceMetric metric);
  // The same from the exit head's statistics of a vocabulary of `vocab` entries.
  static at::Tensor confidence_of(const ops::ExitHeadStats& stats, ConfidenceMetric metric,
                                  int64_t vocab);
  // False when the policy's threshold is above 1: no row can leave before the last loaded
  // layer, so the exit heads before it are not evaluated.
  static bool can_exit_early(const ExitPolicy& policy) { return policy.threshold <= 1.0; }
  // Scores hidden states: hidden[e] is [N, hidden] at exit point e, targets int64 [N] with -1
  // where a position has no next token to predict.
  ExitScores score_exits(const std::vector<at::Tensor>& hidden, const at::Tensor& targets,
                         const ExitPolicy& policy) const;
  // score_exits one exit point at a time, so that a caller need not hold every exit's hidden
  // states at once: score_exit gives exit point `exit_index`'s column (per-row NLL, and
  // whether the row is confident there), combine_exit_columns the scores of all the columns
  // (one per exit point, in order). The result equals score_exits on the same states.
  struct ExitColumn {
    at::Tensor nll;        // float32 [N] per row; meaningless where targets < 0
    at::Tensor confident;  // bool [N]; undefined at the last exit point
  };
  ExitColumn score_exit(size_t exit_index, const at::Tensor& hidden, const at::Tensor& targets,
                        const ExitPolicy& policy) const;
  static ExitScores combine_exit_columns(const std::vector<ExitColumn>& columns,
                                         const at::Tensor& targets);

  // Runs `tokens` at positions [sequence.length, sequence.length + T) through every loaded
  // layer, writing their keys/values, and advances sequence.length. The caller has reserved
  // the room. Consecutive chunks give the same cache as one call. Output row 0: the last
  // position's exit under `policy`.
  //
  // exit_layers (replay, to recompute the cache of a preempted sequence): empty, or one entry
  // per token, the TokenExit::exit_layer the token left at when it was decoded; an entry <= 0
  // or >= loaded_layers() means full depth (prompt tokens). A token with exit e runs layers
  // [0, e) normally; its hidden state is then frozen, and every deeper layer's keys/values are
  // the projections of that frozen state, exactly what decode writes for the layers a token
  // skipped. So replaying the generated tokens with their recorded exits reproduces the cache
  // decode built. When the last token has an early exit e, the output is the exit head's
  // logits at e and TokenExit{e, confidence, greedy_exit = false} (it left there by record,
  // whatever the policy); otherwise the output is as without exit_layers.
  // Throws Error(kInvalidArgument) when exit_layers is non-empty and its size differs from
  // tokens', or when it is combined with score_prompt.
  //
  // next_prompt_token (with score_prompt, for a chunk of a longer prompt): the prompt token
  // after the chunk, the target of the chunk's last position, so that the chunks' scores add
  // up to those of one prefill of the whole prompt; -1 when the chunk ends the prompt.
  StepOutput prefill(kv::KvCache& cache, kv::SequenceKv& sequence, std::span<const int32_t> tokens,
                     const ExitPolicy& policy, bool score_prompt = false,
                     std::span<const int32_t> exit_layers = {},
                     int32_t next_prompt_token = -1) const;

  // One new token per sequence, tokens[i] at position sequences[i]->length (room reserved).
  // Rows leave at the first exit point whose confidence meets the policy; the keys/values of
  // the layers a row skipped are computed from its exit hidden state (state propagation), so
  // later tokens attend to complete caches. Advances every sequence's length by one.
  StepOutput decode(kv::KvCache& cache, std::span<kv::SequenceKv* const> sequences,
                    std::span<const int32_t> tokens, const ExitPolicy& policy) const;

  // CUDA graphs for decode (builds with HELIOS_CUDA, weights on a CUDA device; otherwise a
  // no-op and cuda_graphs() stays false). Each segment of the step between two evaluated exit
  // heads is captured once per padded batch size and context bucket and replayed afterwards,
  // so a step costs a few graph launches instead of one launch per op. Same results as the
  // eager step. Set before the first decode; not thread-safe against a running decode.
  void set_cuda_graphs(bool enabled);
  bool cuda_graphs() const { return graphs_ != nullptr; }

  // The fused CPU decode step (src/model/cpu_decode.h): on by default wherever it can run
  // (float32 weights and cache on the CPU), unless HELIOS_CPU_DECODE=aten is set when the
  // transformer is built. Off, decode runs the ATen ops, the reference the fused step is
  // tested against. Same results either way, within float32 rounding. Not thread-safe against
  // a running decode.
  // `kernels` names the instruction set ("" for the best this CPU has; Error kInvalidArgument
  // when this build or CPU lacks the one named).
  void set_fused_cpu_decode(bool enabled, const std::string& kernels = "");
  bool fused_cpu_decode() const { return cpu_decode_ != nullptr; }
  // The instruction set of the fused step's kernels ("avx512", "avx2", "generic"), or "" when
  // it is off.
  std::string cpu_kernels() const;

  // x @ w^T (at::linear, no bias). With the fused CPU decode on, the inference ops outside the
  // decode step (prefill, prompt scoring) run their projections through its kernels too, on
  // ATen's intra-op threads rather than the BLAS library's; with autograd on, or for tensors
  // the kernels do not take, it is at::linear.
  at::Tensor linear(const at::Tensor& x, const at::Tensor& w) const;

 private:
  // The steps of decode, shared with the graphed path (src/model/decode_steps.h).
  friend struct DecodeSteps;
  friend class CpuDecode;

  // The post-attention norm + SwiGLU block of a layer.
  at::Tensor mlp(const LayerWeights& layer, const at::Tensor& h) const;

  const ModelConfig& config_;
  const ModelWeights& weights_;
  ops::RotaryEmbedding rotary_;
  std::vector<int32_t> exit_points_;
  double attention_scale_;
  std::shared_ptr<DecodeGraphs> graphs_;  // see set_cuda_graphs
  std::shared_ptr<CpuDecode> cpu_decode_;  // see set_fused_cpu_decode
};

}  // namespace helios::model
