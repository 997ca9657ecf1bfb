#include "helios/ops/exit_head.h"

#include <ATen/ATen.h>

#include "cuda_dispatch.h"

namespace helios::ops {

ExitHeadStats exit_head_stats(const at::Tensor& logits, bool entropy) {
  ExitHeadStats stats;
#if HELIOS_WITH_CUDA
  if (detail::use_kernels(logits)) {
    cuda::exit_head_stats(logits, stats.argmax, stats.max_prob, stats.entropy);
    return stats;
  }
#endif
  const at::Tensor log_probs = at::log_softmax(logits.to(at::kFloat), -1);
  auto [max_log_prob, argmax] = log_probs.max(-1);
  stats.argmax = argmax;
  stats.max_prob = max_log_prob.exp();
  // p * log p is 0 where p underflows to 0 (log p = -inf would give NaN).
  if (entropy) stats.entropy = -(log_probs.exp() * log_probs).nan_to_num(0.0).sum(-1);
  return stats;
}

}  // namespace helios::ops
