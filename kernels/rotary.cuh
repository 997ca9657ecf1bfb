#pragma once

// Rotary position embedding, HF Llama convention (rotate_half, default rope type), in place:
// for a head vector x of even length D with half = D / 2 and position p,
//   x'[i]        = x[i]        * cos[p][i]        - x[i + half] * sin[p][i]
//   x'[i + half] = x[i + half] * cos[p][i + half] + x[i]        * sin[p][i + half]
// computed in float32 and stored as T. cos/sin are the float32 tables HF builds: [max_positions,
// D], the angles position * inv_freq repeated twice along D.

#include <cuda_runtime.h>

#include <cstdint>

namespace helios::kernels {

// q: [tokens, q_heads, head_dim] with token rows q_stride elements apart (heads contiguous
// inside a row); k likewise with kv_heads and k_stride. Either q or k may be null (q_heads /
// kv_heads are then ignored). positions: int64 [tokens], each in [0, max_positions) (not
// checked on device: the caller validates). Returns cudaErrorInvalidValue for odd or
// non-positive head_dim, tokens < 0, null tables/positions, or both q and k null.
template <typename T>
cudaError_t launch_rotary(T* q, int64_t q_stride, int q_heads, T* k, int64_t k_stride,
                          int kv_heads, int head_dim, const int64_t* positions, const float* cos,
                          const float* sin, int tokens, cudaStream_t stream);

}  // namespace helios::kernels
