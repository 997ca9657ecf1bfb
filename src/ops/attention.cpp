#include "helios/ops/attention.h"

#include <ATen/ATen.h>

#include <limits>
#include <utility>

#include "cuda_dispatch.h"

namespace helios::ops {

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& mask, double scale) {
  const int64_t batch = q.size(0), tq = q.size(1), heads = q.size(2), hd = q.size(3);
  const int64_t kv_heads = k.size(2), tk = k.size(1), group = heads / kv_heads;
  const at::Tensor qh = q.reshape({batch, tq, kv_heads, group, hd})
                            .permute({0, 2, 3, 1, 4})
                            .reshape({batch, kv_heads, group * tq, hd});
  const at::Tensor kh = k.permute({0, 2, 3, 1});  // [B, KVH, hd, Tk]
  const at::Tensor vh = v.permute({0, 2, 1, 3});  // [B, KVH, Tk, hd]
  at::Tensor scores = at::matmul(qh, kh).mul_(scale);
  // Softmax in float32 whatever the dtype (as HF does), probabilities back in v's dtype.
  scores = scores.view({batch, kv_heads, group, tq, tk}).to(at::kFloat) + mask;
  const at::Tensor probs =
      at::softmax(scores, -1).to(v.scalar_type()).view({batch, kv_heads, group * tq, tk});
  return at::matmul(probs, vh)
      .view({batch, kv_heads, group, tq, hd})
      .permute({0, 3, 1, 2, 4})
      .reshape({batch, tq, heads * hd});
}

void write_kv(at::Tensor& key_cache, at::Tensor& value_cache, const at::Tensor& k,
              const at::Tensor& v, const at::Tensor& slots) {
#if HELIOS_WITH_CUDA
  if (detail::use_kernels(key_cache)) {
    cuda::write_kv(key_cache, value_cache, k, v, slots);
    return;
  }
#endif
  const int64_t rows = k.size(0);
  key_cache.index_copy_(0, slots, k.reshape({rows, key_cache.size(1), key_cache.size(2)}));
  value_cache.index_copy_(0, slots, v.reshape({rows, value_cache.size(1), value_cache.size(2)}));
}

DecodeBatch::DecodeBatch(at::Tensor block_tables, at::Tensor context_lens, int64_t max_context,
                         int64_t block_size)
    : block_tables_(std::move(block_tables)),
      context_lens_(std::move(context_lens)),
      max_context_(max_context),
      block_size_(block_size) {}

DecodeBatch DecodeBatch::select_rows(const at::Tensor& index) const {
  DecodeBatch rows(block_tables_.index_select(0, index), context_lens_.index_select(0, index),
                   max_context_, block_size_);
  if (gather_slots_.defined()) {
    rows.gather_slots_ = gather_slots_.index_select(0, index);
    rows.padding_mask_ = padding_mask_.index_select(0, index);
  }
  return rows;
}

const at::Tensor& DecodeBatch::gather_slots() const {
  if (!gather_slots_.defined()) build_gather();
  return gather_slots_;
}

const at::Tensor& DecodeBatch::padding_mask() const {
  if (!padding_mask_.defined()) build_gather();
  return padding_mask_;
}

// One pass over the (host copies of the) tables: row b's slot of each position [0, max_context),
// its first slot past its length, and the mask hiding those.
void DecodeBatch::build_gather() const {
  const at::Tensor tables = block_tables_.to(at::kCPU, at::kInt).contiguous();
  const at::Tensor lengths = context_lens_.to(at::kCPU, at::kInt).contiguous();
  const int64_t rows = tables.size(0), max_blocks = tables.size(1), bs = block_size_;
  const int64_t longest = max_context_;
  at::Tensor slots = at::empty({rows, longest}, at::TensorOptions().dtype(at::kLong));
  at::Tensor mask = at::zeros({rows, longest}, at::TensorOptions().dtype(at::kFloat));
  const int32_t* t = tables.data_ptr<int32_t>();
  const int32_t* len = lengths.data_ptr<int32_t>();
  int64_t* s = slots.data_ptr<int64_t>();
  float* m = mask.data_ptr<float>();
  for (int64_t b = 0; b < rows; ++b) {
    const int32_t* table = t + b * max_blocks;
    for (int64_t p = 0; p < longest; ++p) {
      const bool valid = p < len[b];
      s[b * longest + p] = valid ? table[p / bs] * bs + p % bs : table[0] * bs;
      if (!valid) m[b * longest + p] = -std::numeric_limits<float>::infinity();
    }
  }
  const auto device = block_tables_.device();
  gather_slots_ = slots.to(device);
  padding_mask_ = mask.view({rows, 1, 1, 1, longest}).to(device);
}

at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& key_cache,
                                  const at::Tensor& value_cache, const DecodeBatch& batch,
                                  double scale) {
#if HELIOS_WITH_CUDA
  if (detail::use_kernels(q)) {
    return cuda::paged_decode_attention(q, key_cache, value_cache, batch.block_tables(),
                                        batch.context_lens(), batch.max_context(),
                                        batch.block_size(), scale);
  }
#endif
  const int64_t rows = q.size(0), kv_heads = key_cache.size(1);
  const at::Tensor flat = batch.gather_slots().reshape({-1});
  const at::Tensor keys =
      key_cache.index_select(0, flat).view({rows, batch.max_context(), kv_heads, -1});
  const at::Tensor values =
      value_cache.index_select(0, flat).view({rows, batch.max_context(), kv_heads, -1});
  return attention(q.unsqueeze(1), keys, values, batch.padding_mask(), scale).squeeze(1);
}

}  // namespace helios::ops
