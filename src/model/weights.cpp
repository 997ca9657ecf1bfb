#include "helios/model/weights.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <unordered_set>

#include "helios/common/error.h"

namespace helios::model {
namespace {

// HF names of one layer's tensors, in LayerWeights::tensors() order.
std::vector<std::string> layer_tensor_names(size_t layer) {
  const std::string prefix = "model.layers." + std::to_string(layer) + ".";
  std::vector<std::string> names;
  for (const char* suffix :
       {"input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
        "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
        "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"}) {
    names.push_back(prefix + suffix);
  }
  return names;
}

}  // namespace

std::vector<at::Tensor> LayerWeights::tensors() const {
  return {input_norm, q_proj, k_proj, v_proj, o_proj, post_norm, gate_proj, up_proj, down_proj};
}

std::vector<at::Tensor*> LayerWeights::mutable_tensors() {
  return {&input_norm, &q_proj,    &k_proj,  &v_proj,   &o_proj,
          &post_norm,  &gate_proj, &up_proj, &down_proj};
}

std::vector<TensorSpec> layer_tensor_specs(const ModelConfig& config, int64_t layer) {
  const std::vector<std::string> n = layer_tensor_names(static_cast<size_t>(layer));
  const int64_t hidden = config.hidden_size;
  const int64_t q_out = config.num_attention_heads * config.head_dim();
  const int64_t kv_out = config.num_key_value_heads * config.head_dim();
  const int64_t inter = config.intermediate_size;
  return {
      {n[0], {hidden}},         {n[1], {q_out, hidden}}, {n[2], {kv_out, hidden}},
      {n[3], {kv_out, hidden}}, {n[4], {hidden, q_out}}, {n[5], {hidden}},
      {n[6], {inter, hidden}},  {n[7], {inter, hidden}}, {n[8], {hidden, inter}},
  };
}

int64_t ModelWeights::resident_bytes() const {
  // Keyed by storage so tied or otherwise shared tensors count once, and a view counts the
  // whole storage it keeps alive.
  std::unordered_set<const void*> seen;
  int64_t total = 0;
  auto add = [&](const at::Tensor& t) {
    if (!t.defined()) return;
    const c10::Storage& storage = t.storage();
    if (seen.insert(storage.data()).second) total += static_cast<int64_t>(storage.nbytes());
  };
  add(embed_tokens);
  for (const LayerWeights& layer : layers) {
    for (const at::Tensor& t : layer.tensors()) add(t);
  }
  add(final_norm);
  add(lm_head);
  return total;
}

std::vector<std::pair<std::string, at::Tensor>> ModelWeights::named_tensors(
    bool tie_word_embeddings) const {
  // Embeddings, then layers in depth order, then the head: a file written in this order keeps
  // each prefix of the layers contiguous, so a shallow load touches one region of it.
  std::vector<std::pair<std::string, at::Tensor>> out;
  out.emplace_back("model.embed_tokens.weight", embed_tokens);
  for (size_t l = 0; l < layers.size(); ++l) {
    const std::vector<at::Tensor> tensors = layers[l].tensors();
    const std::vector<std::string> names = layer_tensor_names(l);
    for (size_t i = 0; i < tensors.size(); ++i) out.emplace_back(names[i], tensors[i]);
  }
  out.emplace_back("model.norm.weight", final_norm);
  if (!tie_word_embeddings) out.emplace_back("lm_head.weight", lm_head);
  return out;
}

ModelWeights init_weights(const ModelConfig& config, uint64_t seed, double init_std) {
  config.validate();
  if (!(init_std > 0)) {
    throw Error(ErrorCode::kInvalidArgument, "init_weights: init_std must be positive");
  }
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto normal = [&](at::IntArrayRef shape) {
    return at::empty(shape, at::kFloat).normal_(0.0, init_std, generator);
  };
  ModelWeights w;
  w.embed_tokens = normal({config.vocab_size, config.hidden_size});
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    LayerWeights layer;
    const std::vector<TensorSpec> specs = layer_tensor_specs(config, l);
    const std::vector<at::Tensor*> slots = layer.mutable_tensors();
    for (size_t i = 0; i < specs.size(); ++i) {
      // Norm weights are the 1-D specs; RMSNorm starts as the identity scale.
      *slots[i] = specs[i].shape.size() == 1 ? at::ones(specs[i].shape, at::kFloat)
                                             : normal(specs[i].shape);
    }
    w.layers.push_back(std::move(layer));
  }
  w.final_norm = at::ones({config.hidden_size}, at::kFloat);
  w.lm_head =
      config.tie_word_embeddings ? w.embed_tokens : normal({config.vocab_size, config.hidden_size});
  return w;
}

}  // namespace helios::model
