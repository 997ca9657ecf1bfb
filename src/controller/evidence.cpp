#include "helios/controller/evidence.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <string>

#include "helios/controller/slo_config.h"
#include "helios/model/perplexity.h"

namespace helios::controller {

void EvidenceSample::set_capacity(size_t capacity) {
  capacity_ = capacity;
  while (recent_.size() > capacity_) recent_.pop_front();
}

void EvidenceSample::add(std::span<const int32_t> ids, uint64_t tokenizer,
                         std::chrono::steady_clock::time_point arrived) {
  if (capacity_ == 0 || ids.size() < 2) return;
  const size_t kept = std::min(ids.size(), static_cast<size_t>(kEvidencePromptTokens));
  recent_.push_back({std::vector<int32_t>(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(kept)),
                     tokenizer, arrived});
  while (recent_.size() > capacity_) recent_.pop_front();
}

const std::vector<EvidencePrompt>& EvidenceSample::pass_sample() {
  if (!frozen_ || frozen_->empty()) {
    frozen_.emplace(recent_.begin(), recent_.end());
    frozen_at_ = std::chrono::steady_clock::now();
  }
  return *frozen_;
}

std::pair<double, double> EvidenceSample::frozen_ages() const {
  const auto at = frozen_at_;
  if (!frozen_ || frozen_->empty()) return {0.0, 0.0};
  auto oldest = frozen_->front().arrived, newest = oldest;
  for (const EvidencePrompt& prompt : *frozen_) {
    oldest = std::min(oldest, prompt.arrived);
    newest = std::max(newest, prompt.arrived);
  }
  return {std::chrono::duration<double>(at - oldest).count(),
          std::chrono::duration<double>(at - newest).count()};
}

namespace {

// The ids of the prompts of `sample` that `tokenizer` produced (none when it is unknown).
std::vector<std::vector<int32_t>> prompts_of(std::span<const EvidencePrompt> sample,
                                             uint64_t tokenizer) {
  std::vector<std::vector<int32_t>> prompts;
  if (tokenizer == 0) return prompts;
  for (const EvidencePrompt& prompt : sample) {
    if (prompt.tokenizer == tokenizer) prompts.push_back(prompt.ids);
  }
  return prompts;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

std::optional<Evidence> score_streamed_on_sample(const std::filesystem::path& dir,
                                                 std::span<const EvidencePrompt> sample,
                                                 uint64_t tokenizer,
                                                 const model::ExitPolicy& policy,
                                                 c10::ScalarType dtype, c10::Device device) {
  const std::vector<std::vector<int32_t>> prompts = prompts_of(sample, tokenizer);
  if (prompts.empty()) return std::nullopt;
  const auto start = std::chrono::steady_clock::now();
  model::StreamedScores streamed =
      model::score_prompts_streamed(dir, prompts, policy, dtype, device, /*batch=*/1);
  Evidence out;
  out.scores = std::move(streamed.scores);
  out.per_prompt = std::move(streamed.per_batch);
  out.prompts = static_cast<int64_t>(prompts.size());
  out.exit_points = std::move(streamed.exit_points);
  out.peak_bytes = streamed.peak_weight_bytes + streamed.hidden_bytes;
  // A few prompts spread over the sample, continued as the server would decode them.
  std::vector<std::vector<int32_t>> continued;
  const size_t count = std::min(prompts.size(), static_cast<size_t>(kEvidenceContinuationPrompts));
  for (size_t i = 0; i < count; ++i) continued.push_back(prompts[i * prompts.size() / count]);
  const model::StreamedContinuation continuation =
      model::continue_streamed(dir, continued, policy, kEvidenceContinuationTokens,
                               kEvidenceContinuationContext, dtype, device);
  // The continuations hold their K/V cache beside the same fixed tensors and one layer, after
  // the scoring's hidden states are gone.
  out.peak_bytes = std::max(out.peak_bytes, streamed.peak_weight_bytes + continuation.cache_bytes);
  out.generated_exits = continuation.exit_histogram;
  out.generated_tokens = continuation.tokens;
  out.seconds = seconds_since(start);
  return out;
}

int64_t streamed_scoring_bytes(const model::ModelConfig& config,
                               const engine::ModelFootprint& footprint, int64_t prompts,
                               int64_t element_size) {
  const int64_t tokens = std::min(kEvidencePromptTokens, config.max_position_embeddings);
  const int64_t hidden = config.hidden_size, vocab = config.vocab_size;
  // One prompt through one layer: the q/k/v/o projections and residuals, the SwiGLU block,
  // and float32 attention scores with their softmax.
  const auto forward = [&](int64_t rows, int64_t time) {
    return rows * time * (6 * hidden + 3 * config.intermediate_size) * element_size +
           2 * rows * config.num_attention_heads * time * time * 4;
  };
  // The exit head's float32 logits and log-softmax for one prompt's positions.
  const int64_t head = 2 * tokens * vocab * 4;
  // The continuations run after the scoring (its hidden states are gone by then): their K/V
  // cache and held states, plus the transient of their first step, the contexts through one
  // layer.
  const int64_t continuations =
      model::continuation_cache_bytes(config, kEvidenceContinuationPrompts,
                                      kEvidenceContinuationTokens, kEvidenceContinuationContext,
                                      element_size) +
      forward(kEvidenceContinuationPrompts, kEvidenceContinuationContext);
  const int64_t scoring =
      prompts * tokens * hidden * element_size + std::max(forward(1, tokens), head);
  return footprint.fixed_bytes + footprint.layer_bytes + std::max(scoring, continuations);
}

std::optional<Evidence> score_on_sample(const model::Transformer& transformer,
                                        std::span<const EvidencePrompt> sample, uint64_t tokenizer,
                                        const model::ExitPolicy& policy) {
  const std::vector<std::vector<int32_t>> prompts = prompts_of(sample, tokenizer);
  if (prompts.empty()) return std::nullopt;
  const auto start = std::chrono::steady_clock::now();
  Evidence out;
  // One prompt per batch, for the per-prompt scores a paired comparison needs.
  out.scores = model::score_prompts(transformer, prompts, policy, /*batch=*/1, &out.per_prompt);
  out.prompts = static_cast<int64_t>(prompts.size());
  out.seconds = seconds_since(start);
  return out;
}

namespace {

constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ULL;

uint64_t fnv1a(uint64_t hash, const char* bytes, size_t size) {
  for (size_t i = 0; i < size; ++i) {
    hash ^= static_cast<unsigned char>(bytes[i]);
    hash *= 0x100000001b3ULL;  // FNV-1a prime
  }
  return hash;
}

}  // namespace

uint64_t evidence_key(uint64_t pass, uint64_t tokenizer) {
  uint64_t hash = fnv1a(kFnvOffset, reinterpret_cast<const char*>(&pass), sizeof pass);
  hash = fnv1a(hash, reinterpret_cast<const char*>(&tokenizer), sizeof tokenizer);
  return hash == 0 ? 1 : hash;
}

uint64_t tokenizer_fingerprint(const model::ModelConfig& config,
                               const std::filesystem::path& model_dir) {
  if (config.tokenizer == model::TokenizerKind::kByte) {
    const std::string key = "helios byte tokenizer, bos " + std::to_string(config.bos_token_id);
    const uint64_t hash = fnv1a(kFnvOffset, key.data(), key.size());
    return hash == 0 ? 1 : hash;
  }
  constexpr uint64_t kMaxBytes = uint64_t{256} << 20;
  const std::filesystem::path path = model_dir / "tokenizer.json";
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec || size > kMaxBytes) return 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) return 0;
  uint64_t hash = kFnvOffset;
  char buffer[1 << 16];
  while (in) {
    in.read(buffer, sizeof buffer);
    hash = fnv1a(hash, buffer, static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) return 0;
  return hash == 0 ? 1 : hash;
}

}  // namespace helios::controller
