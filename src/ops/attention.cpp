#include "helios/ops/attention.h"

#include <ATen/ATen.h>

#include <limits>

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
  scores = scores.view({batch, kv_heads, group, tq, tk}) + mask;
  const at::Tensor probs = at::softmax(scores, -1).view({batch, kv_heads, group * tq, tk});
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

at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& key_cache,
                                  const at::Tensor& value_cache, const at::Tensor& block_tables,
                                  const at::Tensor& context_lens, int64_t max_context,
                                  int64_t block_size, double scale) {
#if HELIOS_WITH_CUDA
  if (detail::use_kernels(q)) {
    return cuda::paged_decode_attention(q, key_cache, value_cache, block_tables, context_lens,
                                        max_context, block_size, scale);
  }
#endif
  // Slots of positions [0, max_context) of every row; positions past a row's context point
  // at its first slot (valid memory) and are masked out.
  const auto device = q.device();
  const auto long_options = at::TensorOptions().dtype(at::kLong).device(device);
  const at::Tensor position = at::arange(max_context, long_options).unsqueeze(0);  // [1, T]
  const at::Tensor lens = context_lens.to(at::kLong).unsqueeze(1);                 // [B, 1]
  const at::Tensor valid = position.lt(lens);                                      // [B, T]
  const at::Tensor block = block_tables.to(at::kLong)
                               .gather(1, position.div(block_size, "floor").expand({q.size(0), -1})
                                              .clamp_max(block_tables.size(1) - 1));
  const at::Tensor slots = at::where(valid, block * block_size + position.remainder(block_size),
                                     block_tables.select(1, 0).to(at::kLong).unsqueeze(1) *
                                         block_size);
  const int64_t batch = q.size(0), kv_heads = key_cache.size(1);
  const at::Tensor flat = slots.reshape({-1});
  const at::Tensor keys =
      key_cache.index_select(0, flat).view({batch, max_context, kv_heads, -1});
  const at::Tensor values =
      value_cache.index_select(0, flat).view({batch, max_context, kv_heads, -1});
  const at::Tensor mask =
      at::zeros({batch, max_context}, at::TensorOptions().dtype(at::kFloat).device(device))
          .masked_fill_(valid.logical_not(), -std::numeric_limits<float>::infinity())
          .view({batch, 1, 1, 1, max_context});
  return attention(q.unsqueeze(1), keys, values, mask, scale).squeeze(1);
}

}  // namespace helios::ops
