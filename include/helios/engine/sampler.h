#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <random>

namespace helios::engine {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy (argmax); must be >= 0
  float top_p = 1.0f;        // nucleus mass in (0, 1]
  int32_t top_k = 0;         // 0 = no top-k cut
  uint64_t seed = 0;

  bool greedy() const { return temperature <= 0.0f; }
  // Throws helios::Error(kInvalidArgument) naming the field.
  void validate() const;
};

// Draws one token per call from a row of logits. Each sequence owns one Sampler, seeded from
// its params, so a sequence's draws do not depend on what else is in the batch.
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // `logits`: 1-D float tensor [vocab] on the CPU. Greedy: argmax (lowest id on ties).
  int32_t sample(const at::Tensor& logits);
  const SamplingParams& params() const { return params_; }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

}  // namespace helios::engine
