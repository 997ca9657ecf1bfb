// Every CUDA kernel, through its op, against the same op on CPU (the ATen implementation,
// itself checked against plain references in tests/ops/). Inputs are drawn in float32,
// rounded to the tested dtype, and the CPU reference runs in float32 on the rounded inputs,
// so the tolerance covers only the kernel's own arithmetic and its output rounding:
//   float32: |diff| <= 2e-5 + 1e-5 * |ref|     (different summation order, fused multiply-add)
//   float16: |diff| <= 2e-3 + 2e-3 * |ref|     (one rounding of 11-bit significands)
//   bfloat16: |diff| <= 1.6e-2 + 1.6e-2 * |ref| (one rounding of 8-bit significands)
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "common/cuda_available.h"
#include "common/ops_reference.h"
#include "helios/ops/activation.h"
#include "helios/ops/attention.h"
#include "helios/ops/exit_head.h"
#include "helios/ops/rms_norm.h"
#include "helios/ops/rotary.h"

namespace helios::testing {
namespace {

struct Tolerance {
  double atol, rtol;
};

Tolerance tolerance_for(at::ScalarType dtype) {
  switch (dtype) {
    case at::kHalf:
      return {2e-3, 2e-3};
    case at::kBFloat16:
      return {1.6e-2, 1.6e-2};
    default:
      return {2e-5, 1e-5};
  }
}

class GpuKernels : public ::testing::TestWithParam<at::ScalarType> {
 protected:
  void SetUp() override { HELIOS_REQUIRE_CUDA(); }
  at::ScalarType dtype() const { return GetParam(); }
  // x rounded to the tested dtype, as float32 on CPU (the reference's input).
  at::Tensor rounded(const at::Tensor& x) const { return x.to(dtype()).to(at::kFloat); }
  at::Tensor on_gpu(const at::Tensor& x) const { return x.to(dtype()).to(at::kCUDA); }

  void expect_close(const at::Tensor& gpu, const at::Tensor& cpu, const std::string& what,
                    double scale = 1.0) const {
    ASSERT_TRUE(gpu.is_cuda()) << what;
    const at::Tensor a = gpu.to(at::kCPU).to(at::kDouble), e = cpu.to(at::kDouble);
    ASSERT_EQ(a.sizes(), e.sizes()) << what;
    const Tolerance t = tolerance_for(dtype());
    const at::Tensor excess = (a - e).abs() - (t.atol * scale + t.rtol * e.abs());
    EXPECT_LE(excess.max().item<double>(), 0.0)
        << what << ": max |diff| " << (a - e).abs().max().item<double>() << " ("
        << at::toString(dtype()) << ")";
  }
};

TEST_P(GpuKernels, RmsNorm) {
  at::manual_seed(11);
  for (const int64_t cols : {40, 128, 4096, 4098}) {  // scalar and vector paths
    const at::Tensor x = at::randn({9, cols}) * 2.0, w = at::rand({cols}) + 0.5;
    const at::Tensor expected = ops::rms_norm(rounded(x), rounded(w), 1e-5);
    expect_close(ops::rms_norm(on_gpu(x), on_gpu(w), 1e-5), expected,
                 "rms_norm cols=" + std::to_string(cols));
  }
}

TEST_P(GpuKernels, AddRmsNorm) {
  at::manual_seed(12);
  const at::Tensor r = at::randn({17, 2048}), x = at::randn({17, 2048}), w = at::rand({2048}) + 0.5;
  at::Tensor r_cpu = rounded(r);
  at::Tensor r_gpu = on_gpu(r);
  // The reference rounds the sum to the dtype first, as the kernel stores it.
  r_cpu = (r_cpu + rounded(x)).to(dtype()).to(at::kFloat);
  const at::Tensor expected = ops::rms_norm(r_cpu, rounded(w), 1e-6);
  const at::Tensor out = ops::add_rms_norm(r_gpu, on_gpu(x), on_gpu(w), 1e-6);
  expect_close(r_gpu, r_cpu, "add_rms_norm residual");
  expect_close(out, expected, "add_rms_norm output");
}

TEST_P(GpuKernels, RotaryOnStridedQueryAndKey) {
  const int64_t heads = 32, kv_heads = 8, hd = 128, tokens = 19;
  const ops::RotaryEmbedding cpu(hd, 500000.0, 4096, at::kCPU);
  const ops::RotaryEmbedding gpu(hd, 500000.0, 4096, at::kCUDA);
  at::manual_seed(13);
  const at::Tensor fused = at::randn({tokens, (heads + 2 * kv_heads) * hd});
  const at::Tensor positions = at::randint(0, 4096, {tokens}, at::kLong);
  auto views = [&](const at::Tensor& f) {
    return std::pair{f.narrow(1, 0, heads * hd).view({tokens, heads, hd}),
                     f.narrow(1, heads * hd, kv_heads * hd).view({tokens, kv_heads, hd})};
  };
  const at::Tensor f_cpu = rounded(fused), f_gpu = on_gpu(fused);
  auto [q_cpu, k_cpu] = views(f_cpu);
  auto [q_gpu, k_gpu] = views(f_gpu);
  const at::Tensor q_view = q_gpu, k_view = k_gpu;
  cpu.rotate(q_cpu, k_cpu, positions);
  gpu.rotate(q_gpu, k_gpu, positions.to(at::kCUDA));
  // In place on CUDA: the views of the fused buffer are what was rotated.
  EXPECT_TRUE(q_gpu.is_same(q_view) && k_gpu.is_same(k_view));
  expect_close(q_gpu, q_cpu, "rotary q");
  expect_close(k_gpu, k_cpu, "rotary k");
  expect_close(f_gpu.narrow(1, (heads + kv_heads) * hd, kv_heads * hd),
               f_cpu.narrow(1, (heads + kv_heads) * hd, kv_heads * hd), "v left alone");
}

TEST_P(GpuKernels, SiluMulFromAFusedGateUpOutput) {
  at::manual_seed(14);
  const int64_t rows = 33, inter = 1000;
  const at::Tensor fused = at::randn({rows, 2 * inter}) * 3.0;
  const at::Tensor f_cpu = rounded(fused), f_gpu = on_gpu(fused);
  const at::Tensor expected = ops::silu_mul(f_cpu.narrow(1, 0, inter), f_cpu.narrow(1, inter, inter));
  expect_close(ops::silu_mul(f_gpu.narrow(1, 0, inter), f_gpu.narrow(1, inter, inter)), expected,
               "silu_mul");
}

TEST_P(GpuKernels, WriteKvAndItsNegativeSlotSkip) {
  at::manual_seed(15);
  const int64_t slots = 64, kv_heads = 8, hd = 128;
  const at::Tensor k = at::randn({4, kv_heads * hd}), v = at::randn({4, kv_heads * hd});
  at::Tensor keys = at::zeros({slots, kv_heads, hd}, at::TensorOptions().dtype(dtype()).device(at::kCUDA));
  at::Tensor values = at::zeros_like(keys);
  const at::Tensor index = at::tensor(std::vector<int64_t>{3, 63, -1, 20}, at::kLong);
  ops::write_kv(keys, values, on_gpu(k), on_gpu(v), index.to(at::kCUDA));
  at::Tensor expected_k = at::zeros({slots, kv_heads, hd}), expected_v = at::zeros_like(expected_k);
  for (const int64_t i : {0, 1, 3}) {
    expected_k[index[i].item<int64_t>()].copy_(rounded(k[i]).view({kv_heads, hd}));
    expected_v[index[i].item<int64_t>()].copy_(rounded(v[i]).view({kv_heads, hd}));
  }
  // A copy: exact in every dtype.
  EXPECT_TRUE(at::equal(keys.to(at::kCPU).to(at::kFloat), expected_k));
  EXPECT_TRUE(at::equal(values.to(at::kCPU).to(at::kFloat), expected_v));
}

TEST_P(GpuKernels, PagedDecodeAttentionShortAndSplitContexts) {
  // Lengths within one partition (256 tokens), spanning several, and batch rows of both kinds;
  // head dims of the zoo (32, 40) and of Llama (64, 128); groups 1, 2, 4.
  struct Shape {
    int64_t heads, kv_heads, hd;
  };
  for (const Shape s : {Shape{4, 2, 32}, Shape{4, 2, 40}, Shape{8, 8, 64}, Shape{32, 8, 128}}) {
    const std::vector<int64_t> lengths{1, 15, 16, 255, 256, 257, 700, 2049};
    PagedCase c = make_paged_case(lengths, s.kv_heads, s.hd, 16, 16);
    const int64_t batch = static_cast<int64_t>(lengths.size());
    const at::Tensor q = at::randn({batch, s.heads, s.hd});
    c.key_cache = rounded(c.key_cache);
    c.value_cache = rounded(c.value_cache);
    const double scale = 1.0 / std::sqrt(static_cast<double>(s.hd));
    const at::Tensor expected = ops::paged_decode_attention(
        rounded(q), c.key_cache, c.value_cache,
        ops::DecodeBatch(c.block_tables, c.context_lens, c.max_context, 16), scale);
    const ops::DecodeBatch gpu_batch(c.block_tables.to(at::kCUDA), c.context_lens.to(at::kCUDA),
                                     c.max_context, 16);
    const at::Tensor out = ops::paged_decode_attention(on_gpu(q), on_gpu(c.key_cache),
                                                       on_gpu(c.value_cache), gpu_batch, scale);
    expect_close(out, expected, "paged attention hd=" + std::to_string(s.hd) +
                                    " heads=" + std::to_string(s.heads));
  }
}

TEST_P(GpuKernels, ExitHeadStatsOverALlamaVocabulary) {
  at::manual_seed(17);
  const int64_t vocab = 128256;
  at::Tensor logits = at::randn({6, vocab}) * 4.0;
  logits[1].zero_();
  logits[2][5] = 60.0;
  logits[3].fill_(-std::numeric_limits<float>::infinity());
  logits[3][7] = 1.0;
  logits[3][99999] = 1.0;
  const at::Tensor l_cpu = rounded(logits);
  const ops::ExitHeadStats expected = ops::exit_head_stats(l_cpu);
  const ops::ExitHeadStats stats = ops::exit_head_stats(on_gpu(logits));
  EXPECT_TRUE(at::equal(stats.argmax.to(at::kCPU), expected.argmax));
  // Probabilities and entropies are computed in float32 from the rounded logits on both
  // sides: the float32 tolerance holds for every dtype.
  const Tolerance t = tolerance_for(at::kFloat);
  for (const auto& [gpu, cpu, what] :
       {std::tuple{stats.max_prob, expected.max_prob, "max_prob"},
        std::tuple{stats.entropy, expected.entropy, "entropy"}}) {
    const at::Tensor diff = (gpu.to(at::kCPU).to(at::kDouble) - cpu.to(at::kDouble)).abs();
    EXPECT_LE((diff - (10 * t.atol + t.rtol * cpu.to(at::kDouble).abs())).max().item<double>(), 0.0)
        << what << " max |diff| " << diff.max().item<double>();
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GpuKernels,
                         ::testing::Values(at::kFloat, at::kHalf, at::kBFloat16),
                         [](const auto& info) { return std::string(at::toString(info.param)); });

}  // namespace
}  // namespace helios::testing
