#include "helios/engine/memory_plan.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "helios/common/error.h"
#include "helios/engine/model_instance.h"
#include "helios/model/transformer.h"
#include "helios/model/weights.h"

namespace helios::engine {
namespace {

// Byte counts of a config nobody checked against a real load (a scanned repository, a typo of
// a size): a product or sum past int64 would wrap into a plausible small or negative figure.
[[noreturn]] void overflows(const model::ModelConfig& config) {
  throw Error(ErrorCode::kInvalidArgument,
              fmt::format("config: the model's size overflows 64-bit byte counts (vocab_size {}, "
                          "hidden_size {}, intermediate_size {}, num_hidden_layers {}, "
                          "max_position_embeddings {})",
                          config.vocab_size, config.hidden_size, config.intermediate_size,
                          config.num_hidden_layers, config.max_position_embeddings));
}

int64_t mul(int64_t a, int64_t b, const model::ModelConfig& config) {
  int64_t out = 0;
  if (__builtin_mul_overflow(a, b, &out)) overflows(config);
  return out;
}

int64_t add(int64_t a, int64_t b, const model::ModelConfig& config) {
  int64_t out = 0;
  if (__builtin_add_overflow(a, b, &out)) overflows(config);
  return out;
}

int64_t numel(const std::vector<int64_t>& shape, const model::ModelConfig& config) {
  int64_t n = 1;
  for (const int64_t d : shape) n = mul(n, d, config);
  return n;
}

int64_t element_size(const model::Transformer& transformer) {
  return static_cast<int64_t>(c10::elementSize(transformer.weights().embed_tokens.scalar_type()));
}

// In the weights' dtype, on their device.
kv::KvCache cache_of(const model::Transformer& transformer, int64_t block_size, int64_t blocks) {
  const model::ModelWeights& weights = transformer.weights();
  return kv::KvCache(transformer.kv_shape(block_size), blocks, weights.embed_tokens.scalar_type(),
                     weights.embed_tokens.device());
}

}  // namespace

int64_t blocks_for_tokens(int64_t tokens, int64_t block_size) {
  return (tokens + block_size - 1) / block_size;
}

int64_t sequences_in(int64_t blocks, int64_t block_size, int64_t context) {
  return context > 0 ? blocks * block_size / context : 0;
}

ModelFootprint ModelFootprint::of(const model::ModelConfig& config, int64_t element_size) {
  ModelFootprint f;
  // The layer shapes come from the same specs the loaders check tensors against, so the
  // footprint cannot drift from what a load really holds.
  int64_t layer_elements = 0;
  int64_t linear_elements = 0;
  int64_t kv_elements = 0;
  const std::vector<model::TensorSpec> specs = model::layer_tensor_specs(config, 0);
  for (size_t i = 0; i < specs.size(); ++i) {
    const int64_t n = numel(specs[i].shape, config);
    layer_elements = add(layer_elements, n, config);
    if (specs[i].shape.size() == 2) linear_elements += n;  // a linear: one MAC per weight
    if (i == 2 || i == 3) kv_elements += n;                // k_proj, v_proj (tensors() order)
  }
  const int64_t embed = mul(config.vocab_size, config.hidden_size, config);
  const int64_t fixed_elements =
      add(add(embed, config.hidden_size, config), config.tie_word_embeddings ? 0 : embed, config);
  f.fixed_bytes = mul(fixed_elements, element_size, config);
  f.layer_bytes = mul(layer_elements, element_size, config);
  // kv_bytes_per_token multiplies 2 x layers x kv_heads x head_dim x element size.
  mul(mul(mul(2, config.num_key_value_heads, config), config.head_dim(), config), element_size,
      config);
  f.kv_bytes_per_token_layer =
      kv::kv_bytes_per_token(1, config.num_key_value_heads, config.head_dim(), element_size);
  f.context_length = config.max_position_embeddings;
  f.total_layers = config.num_hidden_layers;
  // What the figures above are later multiplied into must fit as well: the weights of a full
  // load, and the KV cache of one full-context sequence at full depth.
  add(f.fixed_bytes, mul(f.total_layers, f.layer_bytes, config), config);
  mul(mul(f.kv_bytes_per_token_layer, f.total_layers, config), f.context_length, config);
  f.kv_projection_share = linear_elements > 0 ? static_cast<double>(kv_elements) /
                                                    static_cast<double>(linear_elements)
                                              : 0.0;
  return f;
}

ModelFootprint ModelFootprint::of(const model::Transformer& transformer) {
  return of(transformer.config(), element_size(transformer));
}

KvCapacity kv_capacity(const ModelFootprint& footprint, int64_t depth, int64_t weight_bytes,
                       int64_t budget_bytes, int64_t block_size) {
  KvCapacity c;
  c.weight_bytes = weight_bytes;
  c.kv_blocks =
      kv::blocks_within(budget_bytes - weight_bytes, footprint.kv_block_bytes(depth, block_size));
  c.kv_sequences = sequences_in(c.kv_blocks, block_size, footprint.context_length);
  return c;
}

KvCapacity kv_capacity(const ModelFootprint& footprint, int64_t depth, int64_t budget_bytes,
                       int64_t block_size) {
  return kv_capacity(footprint, depth, footprint.weight_bytes(depth), budget_bytes, block_size);
}

int64_t kv_blocks_for_budget(const ModelInstance& model, int64_t budget_bytes, int64_t block_size,
                             std::string_view field) {
  const model::Transformer& transformer = model.transformer();
  const ModelFootprint footprint = ModelFootprint::of(transformer);
  const int64_t depth = transformer.loaded_layers();
  // What the load really holds: storage shared with another instance is counted here too.
  const int64_t weights = model.resident_bytes();
  const KvCapacity capacity = kv_capacity(footprint, depth, weights, budget_bytes, block_size);
  if (capacity.kv_blocks < footprint.sequence_blocks(block_size)) {
    constexpr double kMiB = 1024.0 * 1024.0;
    const int64_t one_sequence =
        footprint.sequence_blocks(block_size) * footprint.kv_block_bytes(depth, block_size);
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("{}: {:.2f} MiB does not hold the resident weights ({:.2f} MiB) plus "
                            "the KV cache of one full-context sequence ({:.2f} MiB, {} tokens)",
                            field, budget_bytes / kMiB, weights / kMiB, one_sequence / kMiB,
                            footprint.context_length));
  }
  return capacity.kv_blocks;
}

std::vector<int64_t> kv_blocks_for_set(const std::vector<SetMemberFootprint>& members,
                                       int64_t budget_bytes, int64_t block_size,
                                       std::string_view field) {
  int64_t needed = 0;
  double shares = 0;
  std::vector<int64_t> blocks;
  for (const SetMemberFootprint& m : members) {
    if (!(m.share > 0)) throw Error(ErrorCode::kInvalidArgument, "resident set: shares must be positive");
    blocks.push_back(m.footprint.sequence_blocks(block_size));
    needed += m.weight_bytes + blocks.back() * m.footprint.kv_block_bytes(m.depth, block_size);
    shares += m.share;
  }
  if (needed > budget_bytes) {
    constexpr double kMiB = 1024.0 * 1024.0;
    throw Error(ErrorCode::kResourceExhausted,
                fmt::format("{}: {:.2f} MiB does not hold the resident set: {:.2f} MiB of "
                            "weights and one full-context sequence of KV cache per model",
                            field, budget_bytes / kMiB, needed / kMiB));
  }
  const int64_t spare = budget_bytes - needed;
  for (size_t i = 0; i < members.size(); ++i) {
    const int64_t bytes = static_cast<int64_t>(static_cast<double>(spare) * members[i].share / shares);
    blocks[i] += bytes / members[i].footprint.kv_block_bytes(members[i].depth, block_size);
  }
  return blocks;
}

std::unique_ptr<kv::KvCache> make_kv_cache(const model::Transformer& transformer,
                                           int64_t block_size, int64_t blocks) {
  return std::make_unique<kv::KvCache>(cache_of(transformer, block_size, blocks));
}

kv::KvCache make_cache_for(const model::Transformer& transformer, int64_t sequences,
                           int64_t max_length, int64_t block_size) {
  return cache_of(transformer, block_size, sequences * blocks_for_tokens(max_length, block_size));
}

}  // namespace helios::engine
