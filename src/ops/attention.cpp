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

DecodeBatch::DecodeBatch(at::Tensor block_tables, at::Tensor context_lens, int64_t max_context,
                         int64_t block_size, at::Tensor gather_slots, at::Tensor padding_mask)
    : DecodeBatch(std::move(block_tables), std::move(context_lens), max_context, block_size) {
  gather_slots_ = std::move(gather_slots);
  padding_mask_ = std::move(padding_mask);
}

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

void DecodeBatch::build_gather() const {
  const auto device = block_tables_.device();
  const int64_t rows = block_tables_.size(0);
  const at::Tensor position =
      at::arange(max_context_, at::TensorOptions().dtype(at::kLong).device(device)).unsqueeze(0);
  const at::Tensor valid = position.lt(context_lens_.to(at::kLong).unsqueeze(1));  // [B, T]
  const at::Tensor tables = block_tables_.to(at::kLong);
  const at::Tensor block =
      tables.gather(1, position.div(block_size_, "floor").expand({rows, -1})
                           .clamp_max(tables.size(1) - 1));
  gather_slots_ = at::where(valid, block * block_size_ + position.remainder(block_size_),
                            tables.select(1, 0).unsqueeze(1) * block_size_);
  padding_mask_ =
      at::zeros({rows, max_context_}, at::TensorOptions().dtype(at::kFloat).device(device))
          .masked_fill_(valid.logical_not(), -std::numeric_limits<float>::infinity())
          .view({rows, 1, 1, 1, max_context_});
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
