#include "helios/ops/rms_norm.h"

#include <ATen/ATen.h>

namespace helios::ops {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const at::Tensor x32 = x.to(at::kFloat);
  const at::Tensor variance = x32.pow(2).mean(-1, /*keepdim=*/true);
  const at::Tensor normed = x32 * at::rsqrt(variance + eps);
  // HF casts back to the input dtype before the weight multiply.
  return weight * normed.to(x.scalar_type());
}

}  // namespace helios::ops
