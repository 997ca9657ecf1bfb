#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "helios/engine/memory_plan.h"
#include "helios/model/exit_scores.h"
#include "helios/model/transformer.h"

// Same-prompt quality evidence for the controller: a sample of recent live prompts (token ids,
// as the engine prefilled them) on which every candidate of a profiling pass is scored
// teacher-forced, so that the candidates are compared on the same text rather than each on
// the requests that happened to arrive while it served.
namespace helios::controller {

// One sampled prompt and the tokenizer that produced its ids.
struct EvidencePrompt {
  std::vector<int32_t> ids;  // BOS included, cut to kEvidencePromptTokens
  uint64_t tokenizer = 0;    // tokenizer_fingerprint of the model that tokenized it
  std::chrono::steady_clock::time_point arrived{};  // when its request reached the server
};

// The last `capacity` sampled prompts, and the sample a profiling pass freezes so that all of
// its candidates see the same prompts.
class EvidenceSample {
 public:
  // Keeps at most `capacity` recent prompts (0: keeps none), dropping the oldest.
  void set_capacity(size_t capacity);
  size_t capacity() const { return capacity_; }
  // A prompt of fewer than two tokens predicts nothing and is not kept.
  void add(std::span<const int32_t> ids, uint64_t tokenizer,
           std::chrono::steady_clock::time_point arrived = std::chrono::steady_clock::now());
  size_t size() const { return recent_.size(); }
  // A new pass: the next pass_sample() freezes the recent prompts of that moment.
  void begin_pass() { frozen_.reset(); }
  // The pass's sample: the recent prompts as of the pass's first call (empty when none had
  // been sampled then, in which case the next call tries again).
  const std::vector<EvidencePrompt>& pass_sample();
  // Seconds from the oldest and the newest arrival of the frozen sample to the moment it was
  // frozen (0, 0 when none is): how far the pass's evidence lags the traffic.
  std::pair<double, double> frozen_ages() const;

 private:
  size_t capacity_ = 0;
  std::deque<EvidencePrompt> recent_;
  std::optional<std::vector<EvidencePrompt>> frozen_;
  std::chrono::steady_clock::time_point frozen_at_{};
};

// What scoring one candidate on the sample gave.
struct Evidence {
  model::ExitScores scores;
  std::vector<model::ExitScores> per_prompt;  // the same prompt by prompt, in sample order
  int64_t prompts = 0;  // prompts of the sample scored (those of the candidate's tokenizer)
  double seconds = 0;   // wall time of the scoring
  // Streamed scoring only: the exit points at full depth, and the most bytes held at once
  // (embeddings, final norm, head, one layer, and the prompts' hidden states or the
  // continuations' K/V cache).
  std::vector<int32_t> exit_points;
  int64_t peak_bytes = 0;
  // Streamed scoring only: where the tokens of early-exit greedy continuations of a few sample
  // prompts left (per exit point), and how many were generated.
  std::vector<int64_t> generated_exits;
  int64_t generated_tokens = 0;
};

// Scores `transformer` teacher-forced, at every exit point, on the prompts of `sample` whose
// tokenizer is `tokenizer`; nullopt when none is (or `tokenizer` is 0, unknown).
std::optional<Evidence> score_on_sample(const model::Transformer& transformer,
                                        std::span<const EvidencePrompt> sample, uint64_t tokenizer,
                                        const model::ExitPolicy& policy);

// The same for a model that is not loaded: the checkpoint in `dir` at full depth, read one
// decoder layer at a time (model::score_prompts_streamed) in `dtype` on `device`, plus
// kEvidenceContinuationPrompts continuations (model::continue_streamed) for generated_exits.
std::optional<Evidence> score_streamed_on_sample(const std::filesystem::path& dir,
                                                 std::span<const EvidencePrompt> sample,
                                                 uint64_t tokenizer,
                                                 const model::ExitPolicy& policy,
                                                 c10::ScalarType dtype, c10::Device device);

// Most bytes score_streamed_on_sample holds for a model of `config` (weights of
// `element_size` bytes per value, laid out as `footprint` says) on `prompts` prompts of up to
// kEvidencePromptTokens: the fixed tensors and one layer, every prompt's hidden states, and
// the largest transient of one prompt's layer forward or exit head (attention scores and
// logits included); or, for the continuations that follow, their K/V cache and held states
// (model::continuation_cache_bytes) and their contexts' pass through one layer, whichever is
// larger. What profile mode "sample" keeps aside of memory.budget_mib.
int64_t streamed_scoring_bytes(const model::ModelConfig& config,
                               const engine::ModelFootprint& footprint, int64_t prompts,
                               int64_t element_size);

// The key of the per-prompt evidence of profiling pass `pass` on the prompts of `tokenizer`
// (never 0): rows with equal keys were scored on the same prompts, in the same order.
uint64_t evidence_key(uint64_t pass, uint64_t tokenizer);

// A fingerprint (64-bit FNV-1a) of the tokenizer of the model in `model_dir` with `config`, so
// that prompts tokenized by one model are scored only by models that tokenize alike: for a
// byte tokenizer, of its BOS id (the ids are the bytes otherwise); for a tokenizer.json, of
// the file's bytes, 0 (unknown) when it cannot be read or is larger than 256 MiB.
uint64_t tokenizer_fingerprint(const model::ModelConfig& config,
                               const std::filesystem::path& model_dir);

}  // namespace helios::controller
