#include "helios/engine/generator.h"

#include <ATen/ATen.h>

#include "helios/common/error.h"

namespace helios::engine {

namespace {

struct Running {
  size_t request = 0;
  kv::SequenceKv kv;
  Sampler sampler;
  int32_t next_token = 0;
  bool done = false;
};

// Samples from a step's logits row, records the token, and decides whether the sequence ends;
// a finished sequence gives its blocks back at once.
void accept_token(Running& run, const GenerationRequest& request, const at::Tensor& logits,
                  const model::TokenExit& exit, int32_t eos, kv::KvCache& cache,
                  GenerationResult& result) {
  const int32_t token = run.sampler.sample(logits);
  result.tokens.push_back(GeneratedToken{token, exit});
  run.next_token = token;
  if (request.stop_at_eos && token == eos) {
    result.finish_reason = Finish::kStop;
    run.done = true;
  } else if (static_cast<int64_t>(result.tokens.size()) >= request.max_tokens) {
    result.finish_reason = Finish::kLength;
    run.done = true;
  }
  if (run.done) cache.release(run.kv);
}

std::vector<GenerationResult> generate_all(const model::Transformer& transformer,
                                           kv::KvCache& cache,
                                           std::span<const GenerationRequest> requests,
                                           const model::ExitPolicy& policy,
                                           std::vector<Running>& running) {
  const int32_t eos = static_cast<int32_t>(transformer.config().eos_token_id);
  std::vector<GenerationResult> results(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    const GenerationRequest& request = requests[i];
    if (request.prompt.empty()) {
      throw Error(ErrorCode::kInvalidArgument, "request " + std::to_string(i) + ": empty prompt");
    }
    request.sampling.validate();
    running.push_back(Running{i, {}, Sampler(request.sampling), 0, false});
    Running& run = running.back();
    if (request.max_tokens <= 0) {
      run.done = true;
      continue;
    }
    const int64_t longest = static_cast<int64_t>(request.prompt.size()) + request.max_tokens;
    if (!cache.reserve(run.kv, longest)) {
      throw Error(ErrorCode::kResourceExhausted,
                  "KV cache too small for request " + std::to_string(i));
    }
    const model::StepOutput step = transformer.prefill(cache, run.kv, request.prompt, policy);
    accept_token(run, request, step.logits[0], step.exits[0], eos, cache, results[i]);
  }
  while (true) {
    std::vector<Running*> batch;
    std::vector<kv::SequenceKv*> sequences;
    std::vector<int32_t> tokens;
    for (Running& run : running) {
      if (run.done) continue;
      batch.push_back(&run);
      sequences.push_back(&run.kv);
      tokens.push_back(run.next_token);
    }
    if (batch.empty()) break;
    const model::StepOutput step = transformer.decode(cache, sequences, tokens, policy);
    for (size_t b = 0; b < batch.size(); ++b) {
      Running& run = *batch[b];
      accept_token(run, requests[run.request], step.logits[b], step.exits[b], eos, cache,
                   results[run.request]);
    }
  }
  return results;
}

}  // namespace

std::vector<GenerationResult> generate_batch(const model::Transformer& transformer,
                                             kv::KvCache& cache,
                                             std::span<const GenerationRequest> requests,
                                             const model::ExitPolicy& policy) {
  policy.validate();
  std::vector<Running> running;
  running.reserve(requests.size());
  try {
    return generate_all(transformer, cache, requests, policy, running);
  } catch (...) {
    // Whatever failed (a bad request, a full cache, a sequence past the context), the blocks
    // already taken go back to the pool.
    for (Running& run : running) cache.release(run.kv);
    throw;
  }
}

}  // namespace helios::engine
