#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "helios/engine/finish.h"
#include "helios/engine/memory_plan.h"
#include "helios/engine/sampler.h"
#include "helios/kv/kv_cache.h"
#include "helios/model/transformer.h"

namespace helios::engine {

struct GenerationRequest {
  std::vector<int32_t> prompt;  // token ids, BOS included if the caller wants one
  int64_t max_tokens = 64;
  SamplingParams sampling;
  bool stop_at_eos = true;
};

struct GeneratedToken {
  int32_t id = 0;
  model::TokenExit exit;
};

struct GenerationResult {
  std::vector<GeneratedToken> tokens;
  Finish finish_reason = Finish::kLength;  // kStop (EOS) or kLength
};

// Generates for a fixed batch: each prompt is prefilled, then every unfinished sequence
// decodes one token per step in one batched forward. Finished sequences leave the batch and
// free their blocks. The cache must hold every sequence at its longest; throws
// helios::Error(kResourceExhausted) otherwise.
std::vector<GenerationResult> generate_batch(const model::Transformer& transformer,
                                             kv::KvCache& cache,
                                             std::span<const GenerationRequest> requests,
                                             const model::ExitPolicy& policy);

}  // namespace helios::engine
