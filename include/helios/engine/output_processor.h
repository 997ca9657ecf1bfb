#pragma once

#include <cstdint>
#include <string>

#include "helios/engine/request.h"
#include "helios/engine/sequence.h"
#include "helios/model/config.h"

namespace helios::engine {

// Turns sampled tokens into what a client receives: records each token on its sequence,
// detokenizes it (UTF-8 repaired), holds back text a stop string may still claim, and pushes
// the update through the request's channel; at the end it builds the final update with its
// Usage and writes the request_finished log line. Knows nothing of the model beyond its end
// token and context length.
class OutputProcessor {
 public:
  // One request_finished log line per finished request when `log_requests`.
  explicit OutputProcessor(bool log_requests) : log_requests_(log_requests) {}

  // Emits `token`, sampled at `exit` by `model` (whose EOS id and context length end the
  // sequence), for `sequence`. Returns kStop (EOS or a stop string), kLength (max_tokens or the
  // context is reached) or kNone (the sequence goes on).
  Finish emit_token(Sequence& sequence, int32_t token, const model::TokenExit& exit,
                    Clock::time_point now, const model::ModelConfig& model);

  // The last update of a sequence ending for `reason` (kLength flushes the text still held
  // back), with its Usage; logs it. The caller pushes it after its own bookkeeping.
  Update final_update(Sequence& sequence, Finish reason, std::string error,
                      const std::string& model_name, int64_t loaded_layers,
                      Clock::time_point now);

 private:
  void log_finished(const Sequence& sequence, const Usage& usage, Finish reason,
                    const std::string& error, int64_t loaded_layers) const;

  bool log_requests_;
};

}  // namespace helios::engine
