#include "helios/ops/activation.h"

#include <ATen/ATen.h>

#include "cuda_dispatch.h"

namespace helios::ops {

at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up) {
#if HELIOS_WITH_CUDA
  if (detail::use_kernels(gate)) return cuda::silu_mul(gate, up);
#endif
  return at::silu(gate) * up;
}

}  // namespace helios::ops
