#pragma once

// The SwiGLU gate of a Llama MLP: out = T(T(silu(gate)) * up), silu(g) = g / (1 + exp(-g)),
// evaluated in float32 (HF rounds silu's result to the dtype before the multiply).

#include <cuda_runtime.h>

#include <cstdint>

namespace helios::kernels {

// gate, up: [rows, cols] with rows in_stride elements apart (a fused gate|up GEMM output
// [rows, 2 * cols] passes up = gate + cols and in_stride = 2 * cols); out: [rows, cols]
// contiguous. Returns cudaErrorInvalidValue for null pointers, rows < 0, cols <= 0 or
// in_stride < cols.
template <typename T>
cudaError_t launch_silu_mul(const T* gate, const T* up, int64_t in_stride, T* out, int rows,
                            int cols, cudaStream_t stream);

}  // namespace helios::kernels
