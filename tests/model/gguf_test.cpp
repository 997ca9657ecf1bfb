// GGUF export read back by an independent reader of the format (version 3): header, metadata,
// tensor table, alignment, and the tensors' bytes (q/k rows in llama.cpp's rotary order).
#include "helios/model/gguf.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <map>
#include <variant>

#include "common/expect_error.h"
#include "common/scratch_dir.h"
#include "transformer/test_model.h"

namespace helios {
namespace {

struct TensorInfo {
  std::vector<uint64_t> dims;
  uint32_t type = 0;
  uint64_t offset = 0;
};

using Value = std::variant<uint64_t, int64_t, double, bool, std::string, std::vector<std::string>,
                           std::vector<int64_t>>;

struct GgufFile {
  uint32_t version = 0;
  std::map<std::string, Value> kv;
  std::vector<std::string> order;  // tensor names in file order
  std::map<std::string, TensorInfo> tensors;
  uint64_t data_start = 0;
  std::string bytes;

  at::Tensor tensor(const std::string& name) const {
    const TensorInfo& info = tensors.at(name);
    std::vector<int64_t> shape(info.dims.rbegin(), info.dims.rend());
    int64_t n = 1;
    for (const int64_t d : shape) n *= d;
    at::Tensor t = at::empty(shape, at::kFloat);
    std::memcpy(t.data_ptr<float>(), bytes.data() + data_start + info.offset, n * sizeof(float));
    return t;
  }
};

class Reader {
 public:
  explicit Reader(const std::string& bytes) : bytes_(bytes) {}
  template <typename T>
  T pod() {
    if (pos_ + sizeof(T) > bytes_.size()) throw std::runtime_error("truncated");
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string string() {
    const uint64_t n = pod<uint64_t>();
    if (pos_ + n > bytes_.size()) throw std::runtime_error("truncated string");
    std::string s = bytes_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  Value scalar(uint32_t type) {
    switch (type) {
      case 4: return uint64_t{pod<uint32_t>()};
      case 5: return int64_t{pod<int32_t>()};
      case 6: return double{pod<float>()};
      case 7: return pod<uint8_t>() != 0;
      case 8: return string();
      default: throw std::runtime_error("unexpected type " + std::to_string(type));
    }
  }
  Value value(uint32_t type) {
    if (type != 9) return scalar(type);
    const uint32_t element = pod<uint32_t>();
    const uint64_t n = pod<uint64_t>();
    if (element == 8) {
      std::vector<std::string> v;
      for (uint64_t i = 0; i < n; ++i) v.push_back(string());
      return v;
    }
    std::vector<int64_t> v;
    for (uint64_t i = 0; i < n; ++i) v.push_back(std::get<int64_t>(scalar(element)));
    return v;
  }
  size_t pos() const { return pos_; }

 private:
  const std::string& bytes_;
  size_t pos_ = 0;
};

GgufFile read_gguf(const std::filesystem::path& path) {
  GgufFile f;
  std::ifstream in(path, std::ios::binary);
  f.bytes.assign(std::istreambuf_iterator<char>(in), {});
  Reader r(f.bytes);
  EXPECT_EQ(r.pod<uint32_t>(), 0x46554747u);  // "GGUF"
  f.version = r.pod<uint32_t>();
  const uint64_t tensors = r.pod<uint64_t>(), kvs = r.pod<uint64_t>();
  for (uint64_t i = 0; i < kvs; ++i) {
    const std::string key = r.string();
    f.kv[key] = r.value(r.pod<uint32_t>());
  }
  for (uint64_t i = 0; i < tensors; ++i) {
    const std::string name = r.string();
    TensorInfo info;
    const uint32_t dims = r.pod<uint32_t>();
    for (uint32_t d = 0; d < dims; ++d) info.dims.push_back(r.pod<uint64_t>());
    info.type = r.pod<uint32_t>();
    info.offset = r.pod<uint64_t>();
    f.order.push_back(name);
    f.tensors[name] = info;
  }
  const uint64_t alignment = std::get<uint64_t>(f.kv.at("general.alignment"));
  f.data_start = (r.pos() + alignment - 1) / alignment * alignment;
  return f;
}

at::Tensor interleaved(const at::Tensor& w, int64_t heads) {
  return w.reshape({heads, 2, w.size(0) / heads / 2, w.size(1)}).transpose(1, 2).reshape(w.sizes());
}

TEST(Gguf, WritesALlamaFileThatReadsBackTensorForTensor) {
  model::ModelConfig config = testing::tiny_config(3);
  config.tokenizer = model::TokenizerKind::kByte;
  config.vocab_size = 258;
  config.bos_token_id = 256;
  config.eos_token_id = 257;
  const model::ModelWeights weights = model::init_weights(config, 4);
  testing::ScratchDir dir("gguf");
  const auto path = dir.path() / "tiny.gguf";
  model::save_gguf(path, config, weights, "tiny");
  const GgufFile f = read_gguf(path);

  EXPECT_EQ(f.version, 3u);
  EXPECT_EQ(std::get<std::string>(f.kv.at("general.architecture")), "llama");
  EXPECT_EQ(std::get<std::string>(f.kv.at("general.name")), "tiny");
  EXPECT_EQ(std::get<uint64_t>(f.kv.at("llama.block_count")), 3u);
  EXPECT_EQ(std::get<uint64_t>(f.kv.at("llama.embedding_length")), 32u);
  EXPECT_EQ(std::get<uint64_t>(f.kv.at("llama.feed_forward_length")), 64u);
  EXPECT_EQ(std::get<uint64_t>(f.kv.at("llama.attention.head_count")), 4u);
  EXPECT_EQ(std::get<uint64_t>(f.kv.at("llama.attention.head_count_kv")), 2u);
  EXPECT_EQ(std::get<uint64_t>(f.kv.at("llama.context_length")), 128u);
  EXPECT_FLOAT_EQ(std::get<double>(f.kv.at("llama.rope.freq_base")), 10000.0);
  EXPECT_FLOAT_EQ(std::get<double>(f.kv.at("llama.attention.layer_norm_rms_epsilon")), 1e-5f);

  // One token per byte in GPT-2's spelling, then the control tokens; no merges.
  const auto& tokens = std::get<std::vector<std::string>>(f.kv.at("tokenizer.ggml.tokens"));
  const auto& types = std::get<std::vector<int64_t>>(f.kv.at("tokenizer.ggml.token_type"));
  ASSERT_EQ(tokens.size(), 258u);
  ASSERT_EQ(types.size(), 258u);
  EXPECT_EQ(tokens['a'], "a");
  EXPECT_EQ(tokens[' '], "\xC4\xA0");   // U+0120
  EXPECT_EQ(tokens['\n'], "\xC4\x8A");  // U+010A
  EXPECT_EQ(tokens[256], "<|bos|>");
  EXPECT_EQ(tokens[257], "<|eos|>");
  EXPECT_EQ(types['a'], 1);
  EXPECT_EQ(types[256], 3);
  EXPECT_TRUE(std::get<std::vector<std::string>>(f.kv.at("tokenizer.ggml.merges")).empty());
  EXPECT_EQ(std::get<std::string>(f.kv.at("tokenizer.ggml.model")), "gpt2");
  EXPECT_EQ(std::get<uint64_t>(f.kv.at("tokenizer.ggml.bos_token_id")), 256u);
  EXPECT_EQ(std::get<uint64_t>(f.kv.at("tokenizer.ggml.eos_token_id")), 257u);
  EXPECT_TRUE(std::get<bool>(f.kv.at("tokenizer.ggml.add_bos_token")));

  // The tensor table: llama.cpp's names in order, innermost dimension first, aligned offsets
  // inside the file.
  std::vector<std::string> expected_order;
  for (const auto& [gguf, hf] : model::gguf_tensor_names(config)) expected_order.push_back(gguf);
  EXPECT_EQ(f.order, expected_order);
  for (const auto& [name, info] : f.tensors) {
    EXPECT_EQ(info.type, 0u) << name;
    EXPECT_EQ(info.offset % 32, 0u) << name;
  }
  const TensorInfo& embd = f.tensors.at("token_embd.weight");
  EXPECT_EQ(embd.dims, (std::vector<uint64_t>{32, 258}));
  const TensorInfo& last = f.tensors.at(expected_order.back());
  EXPECT_LE(f.data_start + last.offset + last.dims[0] * 4, f.bytes.size());

  EXPECT_TRUE(at::equal(f.tensor("token_embd.weight"), weights.embed_tokens));
  EXPECT_TRUE(at::equal(f.tensor("output.weight"), weights.lm_head));
  EXPECT_TRUE(at::equal(f.tensor("output_norm.weight"), weights.final_norm));
  for (int64_t l = 0; l < 3; ++l) {
    const model::LayerWeights& w = weights.layers[l];
    const std::string p = "blk." + std::to_string(l) + ".";
    EXPECT_TRUE(at::equal(f.tensor(p + "attn_q.weight"), interleaved(w.q_proj, 4)));
    EXPECT_TRUE(at::equal(f.tensor(p + "attn_k.weight"), interleaved(w.k_proj, 2)));
    EXPECT_TRUE(at::equal(f.tensor(p + "attn_v.weight"), w.v_proj));
    EXPECT_TRUE(at::equal(f.tensor(p + "attn_output.weight"), w.o_proj));
    EXPECT_TRUE(at::equal(f.tensor(p + "ffn_gate.weight"), w.gate_proj));
    EXPECT_TRUE(at::equal(f.tensor(p + "ffn_up.weight"), w.up_proj));
    EXPECT_TRUE(at::equal(f.tensor(p + "ffn_down.weight"), w.down_proj));
    EXPECT_TRUE(at::equal(f.tensor(p + "attn_norm.weight"), w.input_norm));
    EXPECT_TRUE(at::equal(f.tensor(p + "ffn_norm.weight"), w.post_norm));
  }
}

// The interleaved q/k rows with llama.cpp's rotary (adjacent pairs) give the same rotated
// vectors as HF's rows with rotate_half: the permutation is the one the format needs.
TEST(Gguf, InterleavedRowsUnderPairwiseRotaryEqualHfRotateHalf) {
  const int64_t heads = 2, hd = 8, in = 6;
  const at::Tensor w = at::randn({heads * hd, in});
  const at::Tensor x = at::randn({in});
  const double angle_base = 0.37;
  const at::Tensor hf = at::mv(w, x).view({heads, hd});
  const at::Tensor gg = at::mv(interleaved(w, heads), x).view({heads, hd});
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < hd / 2; ++i) {
      const double a = angle_base * (i + 1), c = std::cos(a), s = std::sin(a);
      // HF: pair (i, i + hd/2); llama.cpp: pair (2i, 2i + 1).
      const double hf0 = hf[h][i].item<double>(), hf1 = hf[h][i + hd / 2].item<double>();
      const double gg0 = gg[h][2 * i].item<double>(), gg1 = gg[h][2 * i + 1].item<double>();
      EXPECT_NEAR(hf0 * c - hf1 * s, gg0 * c - gg1 * s, 1e-5);
      EXPECT_NEAR(hf1 * c + hf0 * s, gg1 * c + gg0 * s, 1e-5);
    }
  }
}

TEST(Gguf, RefusesWhatItCannotExport) {
  testing::ScratchDir dir("gguf-refused");
  model::ModelConfig config = testing::tiny_config(2);
  const model::ModelWeights weights = model::init_weights(config, 1);
  config.tokenizer = model::TokenizerKind::kHuggingFace;
  testing::expect_error([&] { model::save_gguf(dir.path() / "a.gguf", config, weights, "a"); },
                        ErrorCode::kInvalidArgument, {"byte tokenizer"});
  config.tokenizer = model::TokenizerKind::kByte;
  model::ModelWeights partial = weights;
  partial.layers.pop_back();
  testing::expect_error([&] { model::save_gguf(dir.path() / "b.gguf", config, partial, "b"); },
                        ErrorCode::kInvalidArgument, {"1 of 2 layers"});
}

}  // namespace
}  // namespace helios
