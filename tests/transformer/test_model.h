#pragma once

#include <ATen/ATen.h>

#include "helios/model/config.h"
#include "helios/model/weights.h"

namespace helios::testing {

// A small GQA Llama shape with an exit after every layer: 4 query heads share 2 kv heads.
inline model::ModelConfig tiny_config(int64_t layers = 4) {
  model::ModelConfig config;
  config.hidden_size = 32;
  config.intermediate_size = 64;
  config.num_hidden_layers = layers;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.vocab_size = 50;
  config.max_position_embeddings = 128;
  config.rms_norm_eps = 1e-5;
  config.rope_theta = 10000.0;
  config.tie_word_embeddings = false;
  config.bos_token_id = 1;
  config.eos_token_id = 2;
  for (int l = 1; l <= layers; ++l) config.exit_layers.push_back(l);
  return config;
}

// Random weights with a large init so that exit heads are peaked and confidences spread out
// (a mix of early and late exits at a middling threshold).
inline model::ModelWeights peaked_weights(const model::ModelConfig& config, uint64_t seed = 3) {
  model::ModelWeights weights = model::init_weights(config, seed, 0.35);
  return weights;
}

}  // namespace helios::testing
