#pragma once

#include <ATen/core/Tensor.h>

namespace helios::ops {

// The SwiGLU gate of a Llama MLP: silu(gate) * up, rounded as HF does (silu's result in the
// dtype, then the product). gate and up: [rows, inter], same dtype and device, inner dimension
// contiguous. One elementwise kernel on CUDA.
at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up);

}  // namespace helios::ops
