#include "helios/ops/rms_norm.h"

#include <ATen/ATen.h>

#include "cuda_dispatch.h"

namespace helios::ops {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
#if HELIOS_WITH_CUDA
  if (detail::use_kernels(x)) return cuda::rms_norm(x, weight, eps);
#endif
  const at::Tensor x32 = x.to(at::kFloat);
  const at::Tensor variance = x32.pow(2).mean(-1, /*keepdim=*/true);
  const at::Tensor normed = x32 * at::rsqrt(variance + eps);
  // HF casts back to the input dtype before the weight multiply.
  return weight * normed.to(x.scalar_type());
}

at::Tensor add_rms_norm(at::Tensor& residual, const at::Tensor& x, const at::Tensor& weight,
                        double eps) {
#if HELIOS_WITH_CUDA
  if (detail::use_kernels(residual)) return cuda::add_rms_norm(residual, x, weight, eps);
#endif
  residual.add_(x);
  return rms_norm(residual, weight, eps);
}

}  // namespace helios::ops
