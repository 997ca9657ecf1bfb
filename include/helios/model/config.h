#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace helios::model {

enum class TokenizerKind {
  kByte,         // ids 0-255 are raw bytes; bos/eos come from config.json
  kHuggingFace,  // the directory's tokenizer.json (byte-level BPE)
};

// The fields of a Hugging Face LlamaForCausalLM config.json that helios reads, plus the
// helios-specific optional keys "early_exit" and "tokenizer".
struct ModelConfig {
  std::string architecture = "LlamaForCausalLM";
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;
  std::string torch_dtype = "float32";  // dtype the weights are stored in (informational)

  // 1-based layer counts after which a token may exit, strictly increasing, each in
  // [1, num_hidden_layers]. Defaults to every layer when config.json has no "early_exit".
  std::vector<int> exit_layers;
  TokenizerKind tokenizer = TokenizerKind::kHuggingFace;

  int64_t head_dim() const { return hidden_size / num_attention_heads; }

  // Throws helios::Error (kInvalidArgument) naming the field when a value is missing, of the
  // wrong type, or inconsistent (e.g. hidden_size not divisible by num_attention_heads).
  static ModelConfig from_json(const nlohmann::json& json);
  // Reads and parses `path`; errors name the file (kNotFound, kDataLoss for bad JSON).
  static ModelConfig from_file(const std::filesystem::path& path);

  // Checks every invariant; throws helios::Error(kInvalidArgument) naming the field.
  void validate() const;
  nlohmann::json to_json() const;
  void save(const std::filesystem::path& path) const;
};

}  // namespace helios::model
