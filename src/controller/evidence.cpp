#include "helios/controller/evidence.h"

#include <algorithm>
#include <chrono>
#include <fstream>

#include "helios/controller/slo_config.h"
#include "helios/model/perplexity.h"

namespace helios::controller {

void EvidenceSample::set_capacity(size_t capacity) {
  capacity_ = capacity;
  while (recent_.size() > capacity_) recent_.pop_front();
}

void EvidenceSample::add(std::span<const int32_t> ids, uint64_t tokenizer) {
  if (capacity_ == 0 || ids.size() < 2) return;
  const size_t kept = std::min(ids.size(), static_cast<size_t>(kEvidencePromptTokens));
  recent_.push_back({std::vector<int32_t>(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(kept)),
                     tokenizer});
  while (recent_.size() > capacity_) recent_.pop_front();
}

const std::vector<EvidencePrompt>& EvidenceSample::pass_sample() {
  if (!frozen_ || frozen_->empty()) frozen_.emplace(recent_.begin(), recent_.end());
  return *frozen_;
}

std::optional<Evidence> score_on_sample(const model::Transformer& transformer,
                                        std::span<const EvidencePrompt> sample, uint64_t tokenizer,
                                        const model::ExitPolicy& policy) {
  if (tokenizer == 0) return std::nullopt;
  std::vector<std::vector<int32_t>> prompts;
  for (const EvidencePrompt& prompt : sample) {
    if (prompt.tokenizer == tokenizer) prompts.push_back(prompt.ids);
  }
  if (prompts.empty()) return std::nullopt;
  const auto start = std::chrono::steady_clock::now();
  Evidence out;
  out.scores = model::score_prompts(transformer, prompts, policy);
  out.prompts = static_cast<int64_t>(prompts.size());
  out.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

uint64_t tokenizer_fingerprint(const std::filesystem::path& model_dir) {
  constexpr uint64_t kMaxBytes = uint64_t{256} << 20;
  const std::filesystem::path path = model_dir / "tokenizer.json";
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec || size > kMaxBytes) return 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) return 0;
  uint64_t hash = 0xcbf29ce484222325ULL;  // FNV-1a offset basis
  char buffer[1 << 16];
  while (in) {
    in.read(buffer, sizeof buffer);
    for (std::streamsize i = 0; i < in.gcount(); ++i) {
      hash ^= static_cast<unsigned char>(buffer[i]);
      hash *= 0x100000001b3ULL;  // FNV-1a prime
    }
  }
  if (in.bad()) return 0;
  return hash == 0 ? 1 : hash;
}

}  // namespace helios::controller
