#pragma once

// Straightforward references and random inputs for the ops tests (CPU and CUDA): each
// reference spells out the math the op documents, in float64, one row or head at a time.

#include <ATen/ATen.h>

#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

namespace helios::testing {

// A paged cache holding `lengths[b]` random keys/values per sequence in blocks scattered in
// a shuffled order, plus the contiguous copy of each sequence's keys/values.
struct PagedCase {
  int64_t block_size = 16;
  at::Tensor key_cache, value_cache;  // [slots, kv_heads, hd] float32
  at::Tensor block_tables;            // int32 [batch, max_blocks]
  at::Tensor context_lens;            // int32 [batch]
  std::vector<at::Tensor> keys, values;  // per sequence [len, kv_heads, hd]
  int64_t max_context = 0;
};

inline PagedCase make_paged_case(const std::vector<int64_t>& lengths, int64_t kv_heads,
                                 int64_t head_dim, int64_t block_size, uint64_t seed) {
  PagedCase c;
  c.block_size = block_size;
  std::vector<int64_t> blocks_of;
  int64_t total_blocks = 1;  // block 0 stays unused, so no table entry is trivially 0
  int64_t max_blocks = 1;
  for (const int64_t len : lengths) {
    const int64_t blocks = (len + block_size - 1) / block_size;
    blocks_of.push_back(blocks);
    total_blocks += blocks;
    max_blocks = std::max(max_blocks, blocks);
    c.max_context = std::max(c.max_context, len);
  }
  std::vector<int32_t> order(total_blocks - 1);
  std::iota(order.begin(), order.end(), 1);
  std::mt19937 rng(static_cast<unsigned>(seed));
  std::shuffle(order.begin(), order.end(), rng);
  at::manual_seed(seed);
  c.key_cache = at::randn({total_blocks * block_size, kv_heads, head_dim});
  c.value_cache = at::randn({total_blocks * block_size, kv_heads, head_dim});
  std::vector<int32_t> tables(lengths.size() * max_blocks, 0);
  size_t next = 0;
  for (size_t b = 0; b < lengths.size(); ++b) {
    std::vector<int64_t> slots;
    for (int64_t i = 0; i < blocks_of[b]; ++i) tables[b * max_blocks + i] = order[next++];
    for (int64_t p = 0; p < lengths[b]; ++p) {
      slots.push_back(tables[b * max_blocks + p / block_size] * block_size + p % block_size);
    }
    const at::Tensor index = at::tensor(slots, at::kLong);
    c.keys.push_back(c.key_cache.index_select(0, index));
    c.values.push_back(c.value_cache.index_select(0, index));
  }
  c.block_tables =
      at::tensor(tables, at::kInt).view({static_cast<int64_t>(lengths.size()), max_blocks});
  std::vector<int32_t> lens(lengths.begin(), lengths.end());
  c.context_lens = at::tensor(lens, at::kInt);
  return c;
}

// Decode attention of q [batch, heads, hd] over each sequence's contiguous keys/values.
inline at::Tensor reference_decode_attention(const at::Tensor& q, const PagedCase& c,
                                             double scale) {
  const int64_t batch = q.size(0), heads = q.size(1), hd = q.size(2);
  const int64_t group = heads / c.key_cache.size(1);
  at::Tensor out = at::empty({batch, heads * hd}, at::kDouble);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      const at::Tensor k = c.keys[b].select(1, h / group).to(at::kDouble);  // [len, hd]
      const at::Tensor v = c.values[b].select(1, h / group).to(at::kDouble);
      const at::Tensor scores = k.matmul(q[b][h].to(at::kDouble)) * scale;
      const at::Tensor p = at::softmax(scores, 0);
      out[b].narrow(0, h * hd, hd).copy_(p.matmul(v));
    }
  }
  return out.to(at::kFloat);
}

// RMSNorm as HF computes it, in float64 then rounded like the op (normed value to the dtype,
// then times the weight).
inline at::Tensor reference_rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const at::Tensor x64 = x.to(at::kDouble);
  const at::Tensor normed = x64 * at::rsqrt(x64.pow(2).mean(-1, true) + eps);
  return (normed.to(x.scalar_type()).to(at::kDouble) * weight.to(at::kDouble)).to(at::kFloat);
}

// Rotary (rotate_half) of x [N, heads, hd] at positions, angles from theta, in float64.
inline at::Tensor reference_rotary(const at::Tensor& x, const at::Tensor& positions,
                                   double theta) {
  const int64_t hd = x.size(2), half = hd / 2;
  at::Tensor out = x.to(at::kDouble).clone();
  const at::Tensor x64 = x.to(at::kDouble);
  for (int64_t n = 0; n < x.size(0); ++n) {
    const double pos = static_cast<double>(positions[n].item<int64_t>());
    for (int64_t i = 0; i < half; ++i) {
      const double inv_freq =
          1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(hd));
      const double c = std::cos(pos * inv_freq), s = std::sin(pos * inv_freq);
      const at::Tensor a = x64.select(0, n).select(1, i);
      const at::Tensor b = x64.select(0, n).select(1, i + half);
      out.select(0, n).select(1, i).copy_(a * c - b * s);
      out.select(0, n).select(1, i + half).copy_(b * c + a * s);
    }
  }
  return out.to(at::kFloat);
}

}  // namespace helios::testing
