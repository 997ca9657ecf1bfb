#pragma once

// Writes new keys/values into the paged KV cache. The cache of one layer is
// [num_slots, kv_heads, head_dim] (num_slots = blocks * block_size); a token's slot is
// block_table[p / block_size] * block_size + p % block_size, computed by the caller. Used for
// the tokens of a decode step, for prefill chunks, and for the layers an exited token skipped
// (their keys/values projected from its frozen hidden state).

#include <cuda_runtime.h>

#include <cstdint>

namespace helios::kernels {

// k, v: [tokens, kv_heads * head_dim] with rows k_stride / v_stride elements apart;
// slots: int64 [tokens]; a negative slot skips its token (padding rows). Slots must be
// < num_slots (not checked on device). Returns cudaErrorInvalidValue for null pointers,
// tokens < 0, kv_heads <= 0 or head_dim <= 0.
template <typename T>
cudaError_t launch_write_kv(T* key_cache, T* value_cache, const T* k, int64_t k_stride,
                            const T* v, int64_t v_stride, const int64_t* slots, int tokens,
                            int kv_heads, int head_dim, cudaStream_t stream);

}  // namespace helios::kernels
