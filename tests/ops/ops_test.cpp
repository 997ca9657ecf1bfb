// The ops of include/helios/ops/ on CPU (their ATen implementations) against the
// straightforward references of common/ops_reference.h. The CUDA kernels are checked against
// these same CPU ops in tests/gpu/.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "common/ops_reference.h"
#include "helios/ops/activation.h"
#include "helios/ops/attention.h"
#include "helios/ops/exit_head.h"
#include "helios/ops/rms_norm.h"
#include "helios/ops/rotary.h"

namespace helios::testing {
namespace {

void expect_close(const at::Tensor& actual, const at::Tensor& expected, double atol, double rtol) {
  ASSERT_EQ(actual.sizes(), expected.sizes());
  const at::Tensor a = actual.to(at::kDouble), e = expected.to(at::kDouble);
  const double worst = ((a - e).abs() - rtol * e.abs()).max().item<double>();
  EXPECT_LE(worst, atol) << "max |diff| " << (a - e).abs().max().item<double>();
}

TEST(Ops, RmsNormMatchesTheReference) {
  at::manual_seed(1);
  const at::Tensor x = at::randn({5, 96}) * 3.0;
  const at::Tensor w = at::rand({96}) + 0.5;
  expect_close(ops::rms_norm(x, w, 1e-5), reference_rms_norm(x, w, 1e-5), 1e-6, 1e-5);
}

TEST(Ops, AddRmsNormUpdatesTheResidualAndNormalisesTheSum) {
  at::manual_seed(2);
  at::Tensor residual = at::randn({7, 40});
  const at::Tensor x = at::randn({7, 40});
  const at::Tensor w = at::rand({40}) + 0.5;
  const at::Tensor sum = residual + x;
  const at::Tensor out = ops::add_rms_norm(residual, x, w, 1e-6);
  EXPECT_TRUE(at::equal(residual, sum));
  expect_close(out, reference_rms_norm(sum, w, 1e-6), 1e-6, 1e-5);
}

TEST(Ops, SiluMulIsGateOverOnePlusExpOfMinusGateTimesUp) {
  at::manual_seed(3);
  const at::Tensor gate = at::randn({4, 384}) * 4.0;
  const at::Tensor up = at::randn({4, 384});
  const at::Tensor g = gate.to(at::kDouble);
  expect_close(ops::silu_mul(gate, up), g / (1.0 + (-g).exp()) * up.to(at::kDouble), 1e-6, 1e-5);
}

TEST(Ops, RotaryOfStridedViewsMatchesTheReference) {
  constexpr double kTheta = 10000.0;
  const int64_t heads = 4, kv_heads = 2, hd = 40, tokens = 6;
  const ops::RotaryEmbedding rotary(hd, kTheta, 64, at::kCPU);
  at::manual_seed(4);
  // q|k|v of a fused projection: token rows (heads + 2 * kv_heads) * hd apart.
  const at::Tensor fused = at::randn({tokens, (heads + 2 * kv_heads) * hd});
  at::Tensor q = fused.narrow(1, 0, heads * hd).view({tokens, heads, hd});
  at::Tensor k = fused.narrow(1, heads * hd, kv_heads * hd).view({tokens, kv_heads, hd});
  const at::Tensor v_before = fused.narrow(1, (heads + kv_heads) * hd, kv_heads * hd).clone();
  const at::Tensor positions = at::tensor(std::vector<int64_t>{0, 1, 7, 20, 33, 63}, at::kLong);
  const at::Tensor q_expected = reference_rotary(q, positions, kTheta);
  const at::Tensor k_expected = reference_rotary(k, positions, kTheta);
  rotary.rotate(q, k, positions);
  expect_close(q, q_expected, 1e-5, 1e-5);
  expect_close(k, k_expected, 1e-5, 1e-5);
  EXPECT_TRUE(at::equal(fused.narrow(1, (heads + kv_heads) * hd, kv_heads * hd), v_before));
}

TEST(Ops, WriteKvPutsEachRowAtItsSlot) {
  at::Tensor keys = at::zeros({32, 2, 8}), values = at::zeros({32, 2, 8});
  const at::Tensor k = at::randn({3, 16}), v = at::randn({3, 16});
  const at::Tensor slots = at::tensor(std::vector<int64_t>{5, 30, 17}, at::kLong);
  ops::write_kv(keys, values, k, v, slots);
  at::Tensor expected_k = at::zeros({32, 2, 8}), expected_v = at::zeros({32, 2, 8});
  for (int64_t i = 0; i < 3; ++i) {
    const int64_t s = slots[i].item<int64_t>();
    expected_k[s].copy_(k[i].view({2, 8}));
    expected_v[s].copy_(v[i].view({2, 8}));
  }
  EXPECT_TRUE(at::equal(keys, expected_k));
  EXPECT_TRUE(at::equal(values, expected_v));
}

TEST(Ops, PagedDecodeAttentionMatchesDenseAttentionPerSequence) {
  // Contexts shorter than a block, spanning blocks, and one long; GQA with groups of 2.
  const std::vector<int64_t> lengths{1, 15, 16, 17, 70};
  const int64_t heads = 4, kv_heads = 2, hd = 40, block = 16;
  const PagedCase c = make_paged_case(lengths, kv_heads, hd, block, 5);
  const at::Tensor q = at::randn({static_cast<int64_t>(lengths.size()), heads, hd});
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  const ops::DecodeBatch batch(c.block_tables, c.context_lens, c.max_context, block);
  const at::Tensor expected = reference_decode_attention(q, c, scale);
  expect_close(ops::paged_decode_attention(q, c.key_cache, c.value_cache, batch, scale), expected,
               1e-5, 1e-5);
  // Rows selected after the gather was built (rows leaving at an exit) keep their results.
  const at::Tensor rows = at::tensor(std::vector<int64_t>{4, 1}, at::kLong);
  expect_close(ops::paged_decode_attention(q.index_select(0, rows), c.key_cache, c.value_cache,
                                           batch.select_rows(rows), scale),
               expected.index_select(0, rows), 1e-5, 1e-5);
}

TEST(Ops, ExitHeadStatsAreArgmaxMaxProbabilityAndEntropy) {
  const int64_t vocab = 258;
  at::manual_seed(6);
  at::Tensor logits = at::randn({4, vocab}) * 3.0;
  logits[1].zero_();                                        // uniform
  logits[2][17] = 1000.0;                                   // one-hot in float32
  logits[3].fill_(-std::numeric_limits<float>::infinity());  // masked except two entries
  logits[3][3] = 2.0;
  logits[3][200] = 2.0;
  const ops::ExitHeadStats stats = ops::exit_head_stats(logits);
  const at::Tensor p = at::softmax(logits.to(at::kDouble), -1);
  const at::Tensor plogp = (p * p.log()).nan_to_num(0.0);
  expect_close(stats.max_prob, std::get<0>(p.max(-1)), 1e-6, 1e-5);
  expect_close(stats.entropy, -plogp.sum(-1), 1e-5, 1e-5);
  EXPECT_NEAR(stats.entropy[1].item<double>(), std::log(static_cast<double>(vocab)), 1e-5);
  EXPECT_EQ(stats.max_prob[2].item<float>(), 1.0f);
  EXPECT_NEAR(stats.entropy[3].item<double>(), std::log(2.0), 1e-6);
  EXPECT_EQ(stats.argmax[0].item<int64_t>(), logits[0].argmax().item<int64_t>());
  EXPECT_EQ(stats.argmax[2].item<int64_t>(), 17);
  EXPECT_EQ(stats.argmax[3].item<int64_t>(), 3);  // the first of two equal maxima
}

}  // namespace
}  // namespace helios::testing
