#pragma once

// RMSNorm with the math of HF LlamaRMSNorm, row by row over a [rows, cols] matrix:
//   out = T(T(x * rsqrt(mean(x^2) + eps)) * weight)
// accumulated in float32 whatever T is (float, __half, __nv_bfloat16). The interface takes raw
// device pointers and a stream, so the kernels carry no torch dependency.

#include <cuda_runtime.h>

#include <cstdint>

namespace helios::kernels {

// x: [rows, cols], rows x_stride elements apart; out: [rows, cols] contiguous; weight: [cols].
// `out` may alias `x` when x_stride == cols. Returns cudaErrorInvalidValue for null pointers,
// rows < 0, cols <= 0 or x_stride < cols (rows == 0 launches nothing), otherwise the launch
// status. Asynchronous on `stream`.
template <typename T>
cudaError_t launch_rms_norm(const T* x, int64_t x_stride, const T* weight, T* out, int rows,
                            int cols, float eps, cudaStream_t stream);

// The pre-norm residual step of a decoder layer in one pass over memory:
//   residual = T(residual + x);  out = rms_norm(residual) * weight
// residual, x, out: [rows, cols] contiguous; `residual` is updated in place; `out` may alias
// `x` or `residual`. Same error contract as launch_rms_norm.
template <typename T>
cudaError_t launch_add_rms_norm(T* residual, const T* x, const T* weight, T* out, int rows,
                                int cols, float eps, cudaStream_t stream);

}  // namespace helios::kernels
