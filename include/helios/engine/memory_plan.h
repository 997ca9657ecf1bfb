#pragma once

// The one home of helios's memory arithmetic: what a model holds resident at a depth, what one
// token of KV cache costs at that depth, how many blocks a budget buys, and the pool that
// follows. HELIOS turns unloaded layers into KV cache; every figure that trades one for the
// other (the daemon's start-up pool, the controller's options and switches, the policy's
// capacity, `generate`, the roofline benchmark) comes from here, so none of them can disagree.

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "helios/kv/kv_cache.h"
#include "helios/model/config.h"

namespace helios::model {
class Transformer;
}

namespace helios::engine {

class ModelInstance;

// Whole blocks that hold `tokens` positions.
int64_t blocks_for_tokens(int64_t tokens, int64_t block_size);
// Full-context sequences (of `context` positions) a pool of `blocks` blocks holds.
int64_t sequences_in(int64_t blocks, int64_t block_size, int64_t context);

// Memory and compute facts of a model at any depth, from its config (no weights loaded).
struct ModelFootprint {
  int64_t fixed_bytes = 0;               // embed_tokens + final norm (+ lm_head when not tied)
  int64_t layer_bytes = 0;               // one decoder layer's nine tensors
  int64_t kv_bytes_per_token_layer = 0;  // keys + values of one token in one layer
  int64_t context_length = 0;            // max_position_embeddings
  int64_t total_layers = 0;
  // k_proj + v_proj flops over all linear flops of one layer per token: what a skipped layer
  // still costs, since its K/V are filled from the exit state. (Attention-score flops depend on
  // the context length and are left out.)
  double kv_projection_share = 0.0;

  // Throws Error(kInvalidArgument) when a figure, or the weights of a full load or the KV
  // cache of one full-context sequence at full depth, overflows int64 (a config no device
  // could hold, or a corrupt one).
  static ModelFootprint of(const model::ModelConfig& config, int64_t element_size);
  // Of a loaded transformer: its config at its weights' element size.
  static ModelFootprint of(const model::Transformer& transformer);

  // Resident weights of a load to `depth` layers.
  int64_t weight_bytes(int64_t depth) const { return fixed_bytes + depth * layer_bytes; }
  // Keys and values of one token across `depth` layers.
  int64_t kv_bytes_per_token(int64_t depth) const { return depth * kv_bytes_per_token_layer; }
  int64_t kv_block_bytes(int64_t depth, int64_t block_size) const {
    return block_size * kv_bytes_per_token(depth);
  }
  // Blocks of one full-context sequence: the smallest pool a server can run with.
  int64_t sequence_blocks(int64_t block_size) const {
    return blocks_for_tokens(context_length, block_size);
  }
};

// The KV pool a memory budget leaves beside `weight_bytes` of resident weights at `depth`:
// whole blocks, and the full-context sequences they hold.
struct KvCapacity {
  int64_t weight_bytes = 0, kv_blocks = 0, kv_sequences = 0;
};
KvCapacity kv_capacity(const ModelFootprint& footprint, int64_t depth, int64_t weight_bytes,
                       int64_t budget_bytes, int64_t block_size);
// The same for a load of `depth` layers (weights as the footprint counts them).
KvCapacity kv_capacity(const ModelFootprint& footprint, int64_t depth, int64_t budget_bytes,
                       int64_t block_size);

// KV blocks left by a memory budget once the model's resident weights are paid for; the
// bytes per token follow the loaded depth, so a shallower load leaves more blocks. Throws
// Error(kInvalidArgument) naming `field` when the budget does not hold the weights plus one
// sequence of the full context.
int64_t kv_blocks_for_budget(const ModelInstance& model, int64_t budget_bytes, int64_t block_size,
                             std::string_view field);

// One member of a resident set, as the memory plan sees it.
struct SetMemberFootprint {
  ModelFootprint footprint;
  int64_t depth = 0;         // loaded layers
  int64_t weight_bytes = 0;  // what its load holds
  double share = 1.0;        // its part of the KV bytes left over (any positive scale)
};
// The KV pools of a resident set within one budget: the weights of every member are paid
// first; each pool then gets one full-context sequence, and the bytes left are split by share
// (a member's bytes become whole blocks of its depth). The sum of weights and pools never
// exceeds budget_bytes. Throws Error(kResourceExhausted) naming `field` when the weights and
// one sequence per member do not fit.
std::vector<int64_t> kv_blocks_for_set(const std::vector<SetMemberFootprint>& members,
                                       int64_t budget_bytes, int64_t block_size,
                                       std::string_view field);

// A pool of `blocks` blocks for the loaded layers of `transformer`, in its weights' dtype and
// on their device.
std::unique_ptr<kv::KvCache> make_kv_cache(const model::Transformer& transformer,
                                           int64_t block_size, int64_t blocks);
// A cache large enough for `sequences` sequences of `max_length` tokens each.
kv::KvCache make_cache_for(const model::Transformer& transformer, int64_t sequences,
                           int64_t max_length, int64_t block_size = 16);

}  // namespace helios::engine
