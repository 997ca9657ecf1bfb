#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace helios::model {

// Upper bounds on the sizes a config.json may declare, checked before anything is sized from
// them (exit lists, RoPE tables, weight shapes). Each is well past any published Llama.
inline constexpr int64_t kMaxHiddenSize = 65536;                  // hidden_size
inline constexpr int64_t kMaxIntermediateSize = int64_t{1} << 18;  // intermediate_size: 262144
inline constexpr int64_t kMaxLayers = 1024;                       // num_hidden_layers
inline constexpr int64_t kMaxAttentionHeads = 1024;               // num_attention_heads
inline constexpr int64_t kMaxVocabSize = int64_t{1} << 22;        // vocab_size: 4194304
inline constexpr int64_t kMaxPositionEmbeddings = int64_t{1} << 20;  // max_position_embeddings
// max_position_embeddings x head_dim, the element count of the RoPE cos/sin tables: 2^28
// (1 GiB as float32), so a long context with wide heads cannot ask for an absurd table.
inline constexpr int64_t kMaxRopeTableElements = int64_t{1} << 28;

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
  // Parses the text of a config.json (nested at most kMaxJsonDepth deep); errors name
  // `source` (kDataLoss for bad JSON, kInvalidArgument for a bad field or a document too deep).
  static ModelConfig parse(std::string_view text, const std::string& source);
  // Reads (at most kMaxJsonConfigBytes) and parses `path`; errors name the file (kNotFound
  // when it cannot be read).
  static ModelConfig from_file(const std::filesystem::path& path);

  // Checks every invariant and every upper bound above; throws helios::Error(kInvalidArgument)
  // naming the field.
  void validate() const;
  nlohmann::json to_json() const;
  void save(const std::filesystem::path& path) const;
};

}  // namespace helios::model
