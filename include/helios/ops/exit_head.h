#pragma once

#include <ATen/core/Tensor.h>

namespace helios::ops {

// Per-row statistics of softmax(logits) that an exit decision and greedy decoding need,
// without materialising the probabilities: the argmax (int64, first index of the maximum), the
// largest probability and the entropy in nats (float32). logits: [rows, vocab], any floating
// dtype, inner dimension contiguous. One pass over the logits on CUDA. Without `entropy` the
// entropy may be left undefined (the ATen path then skips its pass over the vocabulary).
struct ExitHeadStats {
  at::Tensor argmax;    // int64 [rows]
  at::Tensor max_prob;  // float32 [rows]
  at::Tensor entropy;   // float32 [rows]
};

ExitHeadStats exit_head_stats(const at::Tensor& logits, bool entropy = true);

}  // namespace helios::ops
