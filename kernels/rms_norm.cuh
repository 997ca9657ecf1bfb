#pragma once

// RMSNorm on the GPU, float32, with the math of HF LlamaRMSNorm:
//   out = x * rsqrt(mean(x^2) + eps) * weight
// computed row by row over a [rows, cols] row-major matrix. The interface takes raw device
// pointers and a stream so the kernels carry no torch dependency and can be called from any
// layer (the engine wraps them around tensors).

#include <cuda_runtime.h>

namespace helios::kernels {

// x, out: [rows, cols] row-major device arrays; weight: [cols]. `out` may alias `x`.
// Returns cudaErrorInvalidValue for null pointers, rows < 0 or cols <= 0 (rows == 0 launches
// nothing), otherwise the launch status. Asynchronous on `stream`.
cudaError_t launch_rms_norm_f32(const float* x, const float* weight, float* out, int rows, int cols,
                                float eps, cudaStream_t stream);

// The pre-norm residual step of a decoder layer in one pass over memory:
//   residual += x;  out = rms_norm(residual) * weight
// `residual` is read and updated in place; `out` may alias `x` or `residual`. Same shapes and
// error contract as launch_rms_norm_f32.
cudaError_t launch_add_rms_norm_f32(float* residual, const float* x, const float* weight,
                                    float* out, int rows, int cols, float eps, cudaStream_t stream);

}  // namespace helios::kernels
