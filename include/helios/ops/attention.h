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

// The sequences of one decode step, as the paged attention reads them: sequence b's
// positions live in the blocks of block_tables[b] (int32 [B, max_blocks]) and its query
// attends to keys [0, context_lens[b]) (int32 [B]); max_context = max(context_lens), given so
// no device read is needed. Built once per step and shared by every layer.
class DecodeBatch {
 public:
  DecodeBatch(at::Tensor block_tables, at::Tensor context_lens, int64_t max_context,
              int64_t block_size);

  // Rows `index` (int64, on the tables' device) of this batch: the rows still running after
  // some left at an exit point. max_context is kept (an upper bound stays valid).
  DecodeBatch select_rows(const at::Tensor& index) const;

  const at::Tensor& block_tables() const { return block_tables_; }
  const at::Tensor& context_lens() const { return context_lens_; }
  int64_t max_context() const { return max_context_; }
  int64_t block_size() const { return block_size_; }

  // For the ATen implementation: every row's slots of positions [0, max_context) (int64
  // [B, max_context]; past a row's context, its first slot) and the additive float mask
  // [B, 1, 1, 1, max_context] hiding those. Built on first use in one pass over host copies of
  // the tables (a copy from the device when they live there), then reused by each layer.
  const at::Tensor& gather_slots() const;
  const at::Tensor& padding_mask() const;

 private:
  void build_gather() const;

  at::Tensor block_tables_, context_lens_;
  int64_t max_context_, block_size_;
  mutable at::Tensor gather_slots_, padding_mask_;
};

// Decode attention over the paged cache: one query per sequence, q [B, H, hd] (rows may be
// strided, heads contiguous), over the keys/values of `batch`. Returns [B, H * hd] in q's
// dtype. CUDA: the split-K kernel of kernels/paged_attention.cu; elsewhere: a gather of each
// row's slots and attention() under the padding mask.
at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& key_cache,
                                  const at::Tensor& value_cache, const DecodeBatch& batch,
                                  double scale);

}  // namespace helios::ops
