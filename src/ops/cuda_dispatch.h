#pragma once

// Device dispatch for the ops. Built with HELIOS_CUDA, a CUDA tensor goes to ops::cuda (the
// kernels of kernels/), each call site guarded by #if HELIOS_WITH_CUDA; anything else goes to
// the ATen implementation beside the call, which runs on any device (a CUDA libtorch build
// without HELIOS_CUDA still serves on the GPU through ATen). The kernels have no backward, so
// while autograd records (training) the ATen path runs.

#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>

#if HELIOS_WITH_CUDA
#include "cuda/ops_cuda.h"

namespace helios::ops::detail {

inline bool use_kernels(const at::Tensor& t) {
  return t.is_cuda() && !at::GradMode::is_enabled();
}

}  // namespace helios::ops::detail
#endif
