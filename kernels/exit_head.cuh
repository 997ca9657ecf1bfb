#pragma once

// Statistics of the exit head's softmax, one row of logits at a time, read once and never
// written back as probabilities: with m = max(x), S = sum exp(x - m),
//   argmax   = the first index holding m
//   max_prob = 1 / S
//   entropy  = log(S) - sum((x - m) * exp(x - m)) / S   (nats)
// An online (max, S, T) merge lets every thread fold its slice in one pass.

#include <cuda_runtime.h>

#include <cstdint>

namespace helios::kernels {

// logits: [rows, vocab] with rows stride elements apart; outputs: [rows] each (any may be
// null). Returns cudaErrorInvalidValue for a null logits pointer, rows < 0, vocab <= 0 or
// stride < vocab.
template <typename T>
cudaError_t launch_exit_head_stats(const T* logits, int64_t stride, int rows, int vocab,
                                   int* argmax, float* max_prob, float* entropy,
                                   cudaStream_t stream);

}  // namespace helios::kernels
