#pragma once

#include <ATen/core/Tensor.h>

namespace helios::ops {

// HF LlamaRMSNorm: x * rsqrt(mean(x^2, -1) + eps) * weight, computed in float32 and returned
// in x's dtype. x: [..., hidden]. On a CUDA tensor one fused kernel (kernels/rms_norm.cu).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// The pre-norm step of a decoder layer: residual += x (in place, in residual's dtype), then
// returns rms_norm(residual, weight, eps). residual and x: [rows, hidden], same dtype and
// device; residual contiguous. One pass over memory on CUDA.
at::Tensor add_rms_norm(at::Tensor& residual, const at::Tensor& x, const at::Tensor& weight,
                        double eps);

}  // namespace helios::ops
