// The transformer against a from-scratch reference written the way the HF Llama modeling code
// reads: explicit repeat_kv, rotate_half, per-head loops, float64 throughout.
#include <gtest/gtest.h>

#include <cmath>

#include "helios/engine/generator.h"
#include "helios/model/transformer.h"
#include "test_model.h"

namespace helios {
namespace {

using at::indexing::Slice;

at::Tensor ref_rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  return w.to(at::kDouble) * x * at::rsqrt(x.pow(2).mean(-1, true) + eps);
}

at::Tensor ref_rope(const at::Tensor& x, int64_t position, double theta) {  // x [heads, hd]
  const int64_t hd = x.size(-1);
  at::Tensor out = at::empty_like(x);
  for (int64_t i = 0; i < hd / 2; ++i) {
    const double inv_freq = 1.0 / std::pow(theta, static_cast<double>(2 * i) / hd);
    const double angle = position * inv_freq;
    const at::Tensor a = x.index({Slice(), i}), b = x.index({Slice(), i + hd / 2});
    out.index_put_({Slice(), i}, a * std::cos(angle) - b * std::sin(angle));
    out.index_put_({Slice(), i + hd / 2}, b * std::cos(angle) + a * std::sin(angle));
  }
  return out;
}

// Logits of the final layer for every position of `tokens`.
at::Tensor reference_logits(const model::ModelConfig& c, const model::ModelWeights& w,
                            const std::vector<int64_t>& tokens) {
  const int64_t T = static_cast<int64_t>(tokens.size()), hd = c.head_dim();
  const int64_t H = c.num_attention_heads, KV = c.num_key_value_heads;
  auto d = [](const at::Tensor& t) { return t.to(at::kDouble); };
  at::Tensor h = d(w.embed_tokens).index_select(0, at::tensor(tokens));
  for (const auto& layer : w.layers) {
    const at::Tensor x = ref_rms_norm(h, layer.input_norm, c.rms_norm_eps);
    at::Tensor q = at::matmul(x, d(layer.q_proj).t()).view({T, H, hd});
    at::Tensor k = at::matmul(x, d(layer.k_proj).t()).view({T, KV, hd});
    const at::Tensor v = at::matmul(x, d(layer.v_proj).t()).view({T, KV, hd});
    std::vector<at::Tensor> qs, ks;
    for (int64_t t = 0; t < T; ++t) {
      qs.push_back(ref_rope(q[t], t, c.rope_theta));
      ks.push_back(ref_rope(k[t], t, c.rope_theta));
    }
    q = at::stack(qs);
    k = at::stack(ks);
    at::Tensor attended = at::zeros({T, H, hd}, at::kDouble);
    for (int64_t head = 0; head < H; ++head) {
      const int64_t kv_head = head / (H / KV);  // repeat_kv
      for (int64_t t = 0; t < T; ++t) {
        const at::Tensor keys = k.index({Slice(0, t + 1), kv_head});
        const at::Tensor scores = at::matmul(keys, q[t][head]) / std::sqrt(double(hd));
        const at::Tensor p = at::softmax(scores, 0);
        attended[t][head] = at::matmul(p, v.index({Slice(0, t + 1), kv_head}));
      }
    }
    h = h + at::matmul(attended.view({T, H * hd}), d(layer.o_proj).t());
    const at::Tensor y = ref_rms_norm(h, layer.post_norm, c.rms_norm_eps);
    const at::Tensor gate = at::matmul(y, d(layer.gate_proj).t());
    const at::Tensor up = at::matmul(y, d(layer.up_proj).t());
    h = h + at::matmul(gate * at::sigmoid(gate) * up, d(layer.down_proj).t());
  }
  return at::matmul(ref_rms_norm(h, w.final_norm, c.rms_norm_eps), d(w.lm_head).t());
}

TEST(TransformerReference, ForwardExitsMatchesReferenceMath) {
  const auto config = testing::tiny_config(3);
  const auto weights = model::init_weights(config, 11, 0.2);
  const model::Transformer transformer(config, weights);
  const std::vector<int64_t> tokens{1, 7, 19, 3, 44, 12, 0, 9, 9, 31};
  const at::Tensor expected = reference_logits(config, weights, tokens).to(at::kFloat);
  const auto hidden = transformer.forward_exits(at::tensor(tokens).unsqueeze(0));
  const at::Tensor actual = transformer.exit_logits(hidden.back()).squeeze(0);
  EXPECT_TRUE(at::allclose(actual, expected, 1e-4, 1e-4))
      << "max abs diff " << (actual - expected).abs().max().item<float>();
}

TEST(TransformerReference, PrefillAndDecodeMatchReferenceAtEveryPosition) {
  const auto config = testing::tiny_config(3);
  const auto weights = model::init_weights(config, 12, 0.2);
  const model::Transformer transformer(config, weights);
  const std::vector<int64_t> tokens{1, 5, 8, 13, 21, 34, 4, 17, 29};
  const at::Tensor expected = reference_logits(config, weights, tokens).to(at::kFloat);

  kv::KvCache cache = engine::make_cache_for(transformer, 1, 32, /*block_size=*/4);
  kv::SequenceKv sequence;
  ASSERT_TRUE(cache.reserve(sequence, static_cast<int64_t>(tokens.size())));
  const model::ExitPolicy no_exit{2.0};
  const std::vector<int32_t> prompt{1, 5, 8, 13};
  auto out = transformer.prefill(cache, sequence, prompt, no_exit);
  EXPECT_TRUE(at::allclose(out.logits[0], expected[3], 1e-4, 1e-4));
  for (size_t t = prompt.size(); t < tokens.size(); ++t) {
    kv::SequenceKv* seqs[] = {&sequence};
    const int32_t token = static_cast<int32_t>(tokens[t]);
    out = transformer.decode(cache, seqs, std::span<const int32_t>(&token, 1), no_exit);
    EXPECT_TRUE(at::allclose(out.logits[0], expected[t], 1e-4, 1e-4)) << "position " << t;
    EXPECT_EQ(out.exits[0].exit_layer, 3);
  }
  EXPECT_EQ(sequence.length, static_cast<int64_t>(tokens.size()));
}

}  // namespace
}  // namespace helios
