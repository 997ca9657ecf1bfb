#include "helios/ops/rotary.h"

#include <ATen/ATen.h>

#include "cuda_dispatch.h"

namespace helios::ops {

RotaryEmbedding::RotaryEmbedding(int64_t head_dim, double theta, int64_t max_positions,
                                 const at::Device& device)
    : head_dim_(head_dim), max_positions_(max_positions) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  // Same float32 arithmetic as the HF reference so angles agree bit for bit on CPU.
  const at::Tensor exponents =
      at::arange(0, head_dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) /
      static_cast<double>(head_dim);
  const at::Tensor inv_freq = 1.0 / at::pow(at::scalar_tensor(theta, f32), exponents);
  const at::Tensor positions = at::arange(max_positions, f32);
  const at::Tensor freqs = at::outer(positions, inv_freq);
  const at::Tensor angles = at::cat({freqs, freqs}, -1);
  cos_ = angles.cos().to(device);
  sin_ = angles.sin().to(device);
}

at::Tensor RotaryEmbedding::apply(const at::Tensor& x, const at::Tensor& positions) const {
  const at::Tensor cos = cos_.index_select(0, positions).unsqueeze(1).to(x.scalar_type());
  const at::Tensor sin = sin_.index_select(0, positions).unsqueeze(1).to(x.scalar_type());
  const int64_t half = head_dim_ / 2;
  const at::Tensor x1 = x.narrow(-1, 0, half);
  const at::Tensor x2 = x.narrow(-1, half, half);
  const at::Tensor rotated = at::cat({-x2, x1}, -1);
  return x * cos + rotated * sin;
}

void RotaryEmbedding::rotate(at::Tensor& q, at::Tensor& k, const at::Tensor& positions) const {
  const at::Tensor& any = q.defined() ? q : k;
  if (!any.defined()) return;
#if HELIOS_WITH_CUDA
  if (detail::use_kernels(any)) {
    cuda::rotary(q, k, positions, cos_, sin_);
    return;
  }
#endif
  if (q.defined()) q = apply(q, positions);
  if (k.defined()) k = apply(k, positions);
}

}  // namespace helios::ops
