#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace helios::ops {

// Grouped-query attention of q over k/v under an additive float mask, scores scaled by
// `scale`: q [B, Tq, H, hd], k/v [B, Tk, KVH, hd], mask broadcastable to [B, KVH, H/KVH, Tq, Tk].
// Returns [B, Tq, H * hd]. Query head h reads kv head h / (H / KVH) (HF repeat_kv order); no
// K/V copy is made per query head. Dense ATen math on every device (prefill and training).
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& mask, double scale);

// Writes k/v rows ([N, KVH, hd] or [N, KVH * hd], rows may be strided) into one layer's paged
// cache ([slots, KVH, hd]) at int64 `slots` [N]; a negative slot skips its row (CUDA only;
// on CPU every slot must be valid).
void write_kv(at::Tensor& key_cache, at::Tensor& value_cache, const at::Tensor& k,
              const at::Tensor& v, const at::Tensor& slots);

// Decode attention over the paged cache: one query per sequence, q [B, H, hd] (rows may be
// strided, heads contiguous), attending to keys [0, context_lens[b]) of sequence b, whose
// positions live in the blocks of block_tables[b] (int32 [B, max_blocks]); context_lens int32
// [B], max_context = max(context_lens) (passed so no device read is needed). Returns
// [B, H * hd] in q's dtype. CUDA: the split-K kernel of kernels/paged_attention.cu; CPU: a
// gather of each row's slots and attention() under a padding mask.
at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& key_cache,
                                  const at::Tensor& value_cache, const at::Tensor& block_tables,
                                  const at::Tensor& context_lens, int64_t max_context,
                                  int64_t block_size, double scale);

}  // namespace helios::ops
