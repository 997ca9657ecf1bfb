#pragma once

#include <ATen/core/Tensor.h>

namespace helios::ops {

// HF LlamaRMSNorm: x * rsqrt(mean(x^2, -1) + eps) * weight, computed in float32 and returned
// in x's dtype.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

}  // namespace helios::ops
