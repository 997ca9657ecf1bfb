#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "helios/model/config.h"

namespace helios::model {

// One Llama decoder layer, HF names in comments. Linear weights are [out, in] as in HF.
struct LayerWeights {
  at::Tensor input_norm;  // model.layers.N.input_layernorm.weight          [hidden]
  at::Tensor q_proj;      // model.layers.N.self_attn.q_proj.weight         [heads*hd, hidden]
  at::Tensor k_proj;      // model.layers.N.self_attn.k_proj.weight         [kv_heads*hd, hidden]
  at::Tensor v_proj;      // model.layers.N.self_attn.v_proj.weight         [kv_heads*hd, hidden]
  at::Tensor o_proj;      // model.layers.N.self_attn.o_proj.weight         [hidden, heads*hd]
  at::Tensor post_norm;   // model.layers.N.post_attention_layernorm.weight [hidden]
  at::Tensor gate_proj;   // model.layers.N.mlp.gate_proj.weight            [inter, hidden]
  at::Tensor up_proj;     // model.layers.N.mlp.up_proj.weight              [inter, hidden]
  at::Tensor down_proj;   // model.layers.N.mlp.down_proj.weight            [hidden, inter]

  std::vector<at::Tensor> tensors() const;
  // The same nine tensors, writable, in tensors() order (for loaders filling a layer).
  std::vector<at::Tensor*> mutable_tensors();
};

// The HF name and expected shape of one tensor.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};

// Specs of the nine tensors of layer `layer` (0-based), in LayerWeights::tensors() order.
std::vector<TensorSpec> layer_tensor_specs(const ModelConfig& config, int64_t layer);

// The resident weights of a model loaded to some depth: layers.size() is the loaded depth.
// With tie_word_embeddings, lm_head aliases embed_tokens (counted once in resident_bytes).
struct ModelWeights {
  at::Tensor embed_tokens;  // model.embed_tokens.weight [vocab, hidden]
  std::vector<LayerWeights> layers;
  at::Tensor final_norm;  // model.norm.weight [hidden]
  at::Tensor lm_head;     // lm_head.weight [vocab, hidden]

  int64_t loaded_layers() const { return static_cast<int64_t>(layers.size()); }
  // Bytes held by distinct tensor storages (tied tensors counted once).
  int64_t resident_bytes() const;
  // Every tensor with its HF name, in the order save writes them.
  std::vector<std::pair<std::string, at::Tensor>> named_tensors(bool tie_word_embeddings) const;
};

// Randomly initialised weights of the given shape (for training from scratch and for tests):
// normal(0, init_std) linears and embeddings, ones for norms; seeded and deterministic.
ModelWeights init_weights(const ModelConfig& config, uint64_t seed, double init_std = 0.02);

}  // namespace helios::model
