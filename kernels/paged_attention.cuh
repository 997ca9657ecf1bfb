#pragma once

// Decode attention over the paged KV cache: each sequence has one query token (its newest
// position) that attends to keys [0, context_len) of its own blocks, grouped-query (query head
// h uses kv head h / (q_heads / kv_heads), HF repeat_kv order). Softmax and accumulation in
// float32. Long contexts are split into partitions of kPartitionTokens processed by separate
// thread blocks (flash-decoding), then merged with a log-sum-exp reduction, so batch 1 still
// fills the GPU.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace helios::kernels {

inline constexpr int kPartitionTokens = 256;
inline constexpr int kMaxHeadDim = 256;

// Bytes of float32 scratch launch_paged_decode_attention needs for these sizes (0 when every
// context fits one partition).
std::size_t paged_decode_attention_workspace_bytes(int batch, int q_heads, int head_dim,
                                                   int max_context);

// out: [batch, q_heads * head_dim] contiguous; q: [batch, q_heads * head_dim] rows q_stride
// elements apart; key_cache/value_cache: [num_slots, kv_heads, head_dim] contiguous;
// block_tables: int32 [batch, max_blocks] row-major (entries past a sequence's blocks unused);
// context_lens: int32 [batch], each in [1, max_context] and <= max_blocks * block_size (not
// checked on device). workspace: paged_decode_attention_workspace_bytes(...) bytes of device
// memory (may be null when that is 0). scale multiplies q.k (1 / sqrt(head_dim) for Llama).
// Returns cudaErrorInvalidValue for null pointers, batch < 0, head_dim odd, <= 0 or
// > kMaxHeadDim, q_heads not a multiple of kv_heads, block_size <= 0 or max_context <= 0.
template <typename T>
cudaError_t launch_paged_decode_attention(T* out, const T* q, int64_t q_stride,
                                          const T* key_cache, const T* value_cache,
                                          const int* block_tables, int max_blocks,
                                          const int* context_lens, int max_context, int batch,
                                          int q_heads, int kv_heads, int head_dim, int block_size,
                                          float scale, float* workspace, cudaStream_t stream);

}  // namespace helios::kernels
