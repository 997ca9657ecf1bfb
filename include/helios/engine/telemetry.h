#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "helios/engine/request.h"
#include "helios/model/exit_scores.h"

namespace helios::engine {

// What one request did, reported once when it finishes (for a controller that tunes the
// model, its depth and the exit threshold from live traffic).
struct RequestTelemetry {
  std::string id;
  std::string model;          // model name at finish
  int64_t loaded_layers = 0;  // at finish
  uint64_t model_epoch = 0;   // engine model epoch at finish
  int32_t priority = 0;       // the request's scheduling class (0 = most urgent)
  // Admitted and finished under the same epoch (no switch or resize in between), so every
  // figure below comes from one model at one depth.
  bool single_epoch = true;
  Finish finish = Finish::kNone;
  int64_t prompt_tokens = 0, generated = 0, greedy_exits = 0;
  // Index = 1-based exit layer: generated tokens that left there. Size loaded_layers + 1, or
  // more when tokens decoded before a switch left deeper than the current depth, so that the
  // counts always sum to `generated`.
  std::vector<int64_t> exit_counts;
  std::optional<model::ExitScores> prompt_scores;  // when the prompt was sampled
  // With prompt_scores: the prompt's token ids as prefilled (BOS included), so that a
  // controller can score other models on the same prompts.
  std::vector<int32_t> prompt_ids;
  double ttft_s = 0, tpot_s = 0, total_s = 0;  // tpot: mean time between generated tokens (0 when < 2)
};

// A sampled prompt, reported as soon as its prefill has scored it (before the request
// decodes, so a controller reads the prompts the server is admitting now rather than those of
// requests finishing now, which under a backlog arrived much earlier).
struct PromptTelemetry {
  std::string id;
  std::string model;          // the model that prefilled it
  int64_t loaded_layers = 0;
  uint64_t model_epoch = 0;   // engine model epoch of the prefill
  model::ExitScores scores;   // teacher-forced, every exit point up to loaded_layers
  std::vector<int32_t> ids;   // the prompt's token ids as prefilled (BOS included)
  double wait_s = 0;          // from arrival to the end of its prefill
};

// What one engine step did.
struct StepTelemetry {
  uint64_t model_epoch = 0;
  int64_t batch = 0;         // sequences run this step
  int64_t generated = 0;     // tokens sampled this step
  int64_t greedy_exits = 0;  // of those, forced out at the last loaded layer below the threshold
  std::vector<uint8_t> breaches;  // one flag per sampled token, in order (1 = greedy exit)
  int64_t running = 0, waiting = 0;
  double seconds = 0, forward_seconds = 0;
};

// Receives telemetry on the engine thread, after each step, at each scored prompt and at each
// finish: it must be
// cheap and must not call back into the engine's blocking API (switch_model's future).
class TelemetrySink {
 public:
  virtual ~TelemetrySink() = default;
  virtual void on_step(const StepTelemetry& step) = 0;
  virtual void on_request(RequestTelemetry request) = 0;
  virtual void on_prompt(PromptTelemetry prompt) = 0;
};

}  // namespace helios::engine
