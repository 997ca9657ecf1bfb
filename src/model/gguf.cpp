#include "helios/model/gguf.h"

#include <ATen/ATen.h>

#include <cstring>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "helios/common/error.h"
#include "helios/tokenizer/byte_level.h"

namespace helios::model {
namespace {

// GGUF value types and the one tensor type written (ggml's GGML_TYPE_F32).
enum : uint32_t {
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
};
constexpr uint32_t kTensorF32 = 0;
constexpr uint64_t kAlignment = 32;  // general.alignment's default

// Little-endian serialisation into a byte buffer (the header and metadata, written first).
class Buffer {
 public:
  template <typename T>
  void pod(T value) {
    const auto* p = reinterpret_cast<const char*>(&value);
    bytes_.insert(bytes_.end(), p, p + sizeof(T));
  }
  void string(const std::string& s) {
    pod<uint64_t>(s.size());
    bytes_.insert(bytes_.end(), s.begin(), s.end());
  }
  void key(const std::string& k, uint32_t type) {
    string(k);
    pod<uint32_t>(type);
  }
  void pad_to(uint64_t alignment) {
    while (bytes_.size() % alignment != 0) bytes_.push_back(0);
  }
  const std::vector<char>& bytes() const { return bytes_; }

 private:
  std::vector<char> bytes_;
};

struct Metadata {
  Buffer buffer;
  uint64_t count = 0;

  void u32(const std::string& k, uint32_t v) {
    buffer.key(k, kUint32);
    buffer.pod(v);
    ++count;
  }
  void f32(const std::string& k, float v) {
    buffer.key(k, kFloat32);
    buffer.pod(v);
    ++count;
  }
  void boolean(const std::string& k, bool v) {
    buffer.key(k, kBool);
    buffer.pod<uint8_t>(v ? 1 : 0);
    ++count;
  }
  void str(const std::string& k, const std::string& v) {
    buffer.key(k, kString);
    buffer.string(v);
    ++count;
  }
  void strings(const std::string& k, const std::vector<std::string>& v) {
    buffer.key(k, kArray);
    buffer.pod<uint32_t>(kString);
    buffer.pod<uint64_t>(v.size());
    for (const std::string& s : v) buffer.string(s);
    ++count;
  }
  void i32s(const std::string& k, const std::vector<int32_t>& v) {
    buffer.key(k, kArray);
    buffer.pod<uint32_t>(kInt32);
    buffer.pod<uint64_t>(v.size());
    for (const int32_t x : v) buffer.pod(x);
    ++count;
  }
};

std::string utf8(char32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return out;
}

// HF's q/k rows (per head: the first halves of the rotary pairs, then the second halves) in
// llama.cpp's order (per head: the pairs interleaved), as convert_hf_to_gguf permutes them.
at::Tensor interleave_rotary_rows(const at::Tensor& w, int64_t heads) {
  const int64_t out = w.size(0), in = w.size(1);
  return w.reshape({heads, 2, out / heads / 2, in}).transpose(1, 2).reshape({out, in}).contiguous();
}

struct GgufTensor {
  std::string name;
  at::Tensor data;  // float32, contiguous, HF shape [rows, cols] or [n]
};

std::vector<GgufTensor> gguf_tensors(const ModelConfig& config, const ModelWeights& weights) {
  const auto f32 = [](const at::Tensor& t) { return t.to(at::kCPU, at::kFloat).contiguous(); };
  std::vector<GgufTensor> out;
  out.push_back({"token_embd.weight", f32(weights.embed_tokens)});
  for (size_t l = 0; l < weights.layers.size(); ++l) {
    const LayerWeights& w = weights.layers[l];
    const std::string p = "blk." + std::to_string(l) + ".";
    out.push_back({p + "attn_norm.weight", f32(w.input_norm)});
    out.push_back({p + "attn_q.weight",
                   interleave_rotary_rows(f32(w.q_proj), config.num_attention_heads)});
    out.push_back({p + "attn_k.weight",
                   interleave_rotary_rows(f32(w.k_proj), config.num_key_value_heads)});
    out.push_back({p + "attn_v.weight", f32(w.v_proj)});
    out.push_back({p + "attn_output.weight", f32(w.o_proj)});
    out.push_back({p + "ffn_norm.weight", f32(w.post_norm)});
    out.push_back({p + "ffn_gate.weight", f32(w.gate_proj)});
    out.push_back({p + "ffn_up.weight", f32(w.up_proj)});
    out.push_back({p + "ffn_down.weight", f32(w.down_proj)});
  }
  out.push_back({"output_norm.weight", f32(weights.final_norm)});
  // Tied embeddings: llama.cpp uses token_embd when output.weight is absent.
  if (!config.tie_word_embeddings) out.push_back({"output.weight", f32(weights.lm_head)});
  return out;
}

}  // namespace

std::vector<std::pair<std::string, std::string>> gguf_tensor_names(const ModelConfig& config) {
  std::vector<std::pair<std::string, std::string>> names{
      {"token_embd.weight", "model.embed_tokens.weight"}};
  const std::pair<const char*, const char*> layer[] = {
      {"attn_norm", "input_layernorm"}, {"attn_q", "self_attn.q_proj"},
      {"attn_k", "self_attn.k_proj"},   {"attn_v", "self_attn.v_proj"},
      {"attn_output", "self_attn.o_proj"}, {"ffn_norm", "post_attention_layernorm"},
      {"ffn_gate", "mlp.gate_proj"},    {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"}};
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    for (const auto& [gguf, hf] : layer) {
      names.emplace_back("blk." + std::to_string(l) + "." + gguf + ".weight",
                         "model.layers." + std::to_string(l) + "." + hf + ".weight");
    }
  }
  names.emplace_back("output_norm.weight", "model.norm.weight");
  if (!config.tie_word_embeddings) names.emplace_back("output.weight", "lm_head.weight");
  return names;
}

void save_gguf(const std::filesystem::path& path, const ModelConfig& config,
               const ModelWeights& weights, const std::string& name) {
  if (config.tokenizer != TokenizerKind::kByte) {
    throw Error(ErrorCode::kInvalidArgument,
                "GGUF export: only models with the byte tokenizer can be exported (a "
                "tokenizer.json vocabulary is not converted)");
  }
  if (weights.loaded_layers() != config.num_hidden_layers) {
    throw Error(ErrorCode::kInvalidArgument,
                "GGUF export: " + std::to_string(weights.loaded_layers()) + " of " +
                    std::to_string(config.num_hidden_layers) + " layers loaded; load them all");
  }
  Metadata m;
  m.str("general.architecture", "llama");
  m.str("general.name", name);
  m.u32("general.file_type", 0);  // all float32
  m.u32("general.alignment", static_cast<uint32_t>(kAlignment));
  m.u32("llama.context_length", static_cast<uint32_t>(config.max_position_embeddings));
  m.u32("llama.embedding_length", static_cast<uint32_t>(config.hidden_size));
  m.u32("llama.block_count", static_cast<uint32_t>(config.num_hidden_layers));
  m.u32("llama.feed_forward_length", static_cast<uint32_t>(config.intermediate_size));
  m.u32("llama.attention.head_count", static_cast<uint32_t>(config.num_attention_heads));
  m.u32("llama.attention.head_count_kv", static_cast<uint32_t>(config.num_key_value_heads));
  m.u32("llama.rope.dimension_count", static_cast<uint32_t>(config.head_dim()));
  m.f32("llama.rope.freq_base", static_cast<float>(config.rope_theta));
  m.f32("llama.attention.layer_norm_rms_epsilon", static_cast<float>(config.rms_norm_eps));
  m.u32("llama.vocab_size", static_cast<uint32_t>(config.vocab_size));

  std::vector<std::string> tokens;
  std::vector<int32_t> types;  // llama.cpp's token types: 1 normal, 3 control
  const auto& table = tokenizer::byte_to_unicode();
  for (int64_t id = 0; id < config.vocab_size; ++id) {
    if (id < 256) {
      tokens.push_back(utf8(table[static_cast<size_t>(id)]));
      types.push_back(1);
    } else {
      tokens.push_back(id == config.bos_token_id   ? "<|bos|>"
                       : id == config.eos_token_id ? "<|eos|>"
                                                   : "<unused-" + std::to_string(id) + ">");
      types.push_back(3);
    }
  }
  m.str("tokenizer.ggml.model", "gpt2");
  m.str("tokenizer.ggml.pre", "default");
  m.strings("tokenizer.ggml.tokens", tokens);
  m.i32s("tokenizer.ggml.token_type", types);
  m.strings("tokenizer.ggml.merges", {});
  m.u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(config.bos_token_id));
  m.u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(config.eos_token_id));
  m.boolean("tokenizer.ggml.add_bos_token", true);
  m.boolean("tokenizer.ggml.add_eos_token", false);

  const std::vector<GgufTensor> tensors = gguf_tensors(config, weights);
  Buffer head;
  head.pod<uint32_t>(0x46554747);  // "GGUF"
  head.pod<uint32_t>(3);
  head.pod<uint64_t>(tensors.size());
  head.pod<uint64_t>(m.count);
  Buffer infos;
  uint64_t offset = 0;
  for (const GgufTensor& t : tensors) {
    infos.string(t.name);
    infos.pod<uint32_t>(static_cast<uint32_t>(t.data.dim()));
    // ggml lists dimensions innermost first: [cols, rows].
    for (int64_t d = t.data.dim() - 1; d >= 0; --d) infos.pod<uint64_t>(t.data.size(d));
    infos.pod<uint32_t>(kTensorF32);
    infos.pod<uint64_t>(offset);
    offset += (t.data.nbytes() + kAlignment - 1) / kAlignment * kAlignment;
  }

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  const auto write = [&](const char* data, size_t size) {
    out.write(data, static_cast<std::streamsize>(size));
  };
  write(head.bytes().data(), head.bytes().size());
  write(m.buffer.bytes().data(), m.buffer.bytes().size());
  write(infos.bytes().data(), infos.bytes().size());
  const uint64_t header = head.bytes().size() + m.buffer.bytes().size() + infos.bytes().size();
  const std::vector<char> zeros(kAlignment, 0);
  write(zeros.data(), (kAlignment - header % kAlignment) % kAlignment);
  for (const GgufTensor& t : tensors) {
    const size_t bytes = t.data.nbytes();
    write(static_cast<const char*>(t.data.data_ptr()), bytes);
    write(zeros.data(), (kAlignment - bytes % kAlignment) % kAlignment);
  }
  out.flush();
  if (!out) throw Error(ErrorCode::kUnavailable, path.string() + ": cannot write");
}

}  // namespace helios::model
