#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace helios::ops {

// Rotary position embedding as HF Llama computes it (rotate_half convention, default rope
// type): inv_freq[i] = 1 / theta^(2i / head_dim), angle = position * inv_freq, and the cos/sin
// tables are the angles repeated twice along the head dimension.
class RotaryEmbedding {
 public:
  RotaryEmbedding(int64_t head_dim, double theta, int64_t max_positions, const at::Device& device);

  // x: [N, heads, head_dim]; positions: int64 [N]. Returns the rotated x (same shape, dtype).
  at::Tensor apply(const at::Tensor& x, const at::Tensor& positions) const;
  // Rotates q [N, heads, head_dim] and k [N, kv_heads, head_dim] (token rows may be strided,
  // e.g. views of a fused projection; heads contiguous); either may be undefined. On CUDA one
  // kernel rotates both in place; elsewhere q and k are replaced by rotated tensors (apply()),
  // which costs no copy back. Either way q and k hold the rotated values afterwards.
  void rotate(at::Tensor& q, at::Tensor& k, const at::Tensor& positions) const;
  int64_t max_positions() const { return max_positions_; }
  // The tables: [max_positions, head_dim] float32 on the device, row p the position's cos/sin.
  const at::Tensor& cos_table() const { return cos_; }
  const at::Tensor& sin_table() const { return sin_; }

 private:
  int64_t head_dim_;
  int64_t max_positions_;
  at::Tensor cos_;  // [max_positions, head_dim] float32
  at::Tensor sin_;
};

}  // namespace helios::ops
