#pragma once

// The CUDA implementations of the ops in include/helios/ops/, compiled only when helios is
// built with HELIOS_CUDA (a CUDA libtorch). Each wraps one kernel of kernels/ around tensors:
// checks shapes, dtypes and strides, launches on the current ATen stream of the tensor's
// device, and turns a failed launch into helios::Error(kInternal).

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace helios::ops::cuda {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
at::Tensor add_rms_norm(at::Tensor& residual, const at::Tensor& x, const at::Tensor& weight,
                        double eps);
void rotary(const at::Tensor& q, const at::Tensor& k, const at::Tensor& positions,
            const at::Tensor& cos, const at::Tensor& sin);
at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up);
void write_kv(at::Tensor& key_cache, at::Tensor& value_cache, const at::Tensor& k,
              const at::Tensor& v, const at::Tensor& slots);
at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& key_cache,
                                  const at::Tensor& value_cache, const at::Tensor& block_tables,
                                  const at::Tensor& context_lens, int64_t max_context,
                                  int64_t block_size, double scale);
void exit_head_stats(const at::Tensor& logits, at::Tensor& argmax, at::Tensor& max_prob,
                     at::Tensor& entropy);

}  // namespace helios::ops::cuda
