#include "helios/engine/output_processor.h"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "helios/common/logging.h"
#include "helios/tokenizer/utf8.h"
#include "durations.h"

namespace helios::engine {

Finish OutputProcessor::emit_token(Sequence& sequence, int32_t token,
                                   const model::TokenExit& exit, Clock::time_point now,
                                   const model::ModelConfig& model) {
  const RequestSpec& spec = sequence.request->spec();
  sequence.record_token(token, exit, now);
  Update update;
  if (spec.token_details) update.tokens.push_back(TokenDetail{token, exit});
  if (token == static_cast<int32_t>(model.eos_token_id)) {
    sequence.request->channel().push(std::move(update));
    return Finish::kStop;
  }
  // A model may emit bytes that are not UTF-8; clients get U+FFFD for them, never broken text.
  update.text = sequence.stop.push(tokenizer::replace_invalid_utf8(sequence.decoder.push(token)));
  sequence.request->channel().push(std::move(update));
  if (sequence.stop.stopped()) return Finish::kStop;
  if (sequence.generated >= spec.max_tokens ||
      static_cast<int64_t>(sequence.tokens.size()) > model.max_position_embeddings) {
    return Finish::kLength;
  }
  return Finish::kNone;
}

Update OutputProcessor::final_update(Sequence& sequence, Finish reason, std::string error,
                                     const std::string& model_name, int64_t loaded_layers,
                                     Clock::time_point now) {
  const Request& request = *sequence.request;
  Update last;
  last.finish = reason;
  last.error = std::move(error);
  if (reason == Finish::kLength) {
    // Nothing can complete a stop string any more: what was held back is text.
    last.text = sequence.stop.push(tokenizer::replace_invalid_utf8(sequence.decoder.finish()));
    last.text += sequence.stop.flush();
  }
  Usage& usage = last.usage;
  usage.model = model_name;
  usage.prompt_tokens = sequence.prompt_length;
  usage.completion_tokens = sequence.generated;
  usage.preemptions = sequence.preemptions;
  usage.loaded_layers = loaded_layers;
  usage.priority = request.spec().priority;
  usage.mean_exit_layer =
      sequence.generated > 0 ? sequence.exit_layer_sum / static_cast<double>(sequence.generated)
                             : 0.0;
  if (sequence.generated > 0) {
    usage.time_to_first_token_ms = 1e3 * seconds_between(request.arrival(), sequence.first_token_at);
  }
  usage.queue_time_ms =
      1e3 * seconds_between(request.arrival(), sequence.admitted ? sequence.admitted_at : now);
  usage.total_time_ms = 1e3 * seconds_between(request.arrival(), now);
  if (request.spec().score_prompt && sequence.prompt_scores && !sequence.score_prompt &&
      sequence.prompt_scores->tokens > 0) {
    const model::ExitScores& scores = *sequence.prompt_scores;
    usage.prompt_perplexity = scores.policy_perplexity(scores.policy_nll_sum.size() - 1);
    usage.prompt_scored_tokens = scores.tokens;
  }
  if (log_requests_) log_finished(sequence, usage, reason, last.error, loaded_layers);
  return last;
}

void OutputProcessor::log_finished(const Sequence& sequence, const Usage& usage, Finish reason,
                                   const std::string& error, int64_t loaded_layers) const {
  nlohmann::ordered_json fields = {{"id", sequence.request->spec().id},
                                   {"model", usage.model},
                                   {"layers", loaded_layers},
                                   {"finish", finish_label(reason)},
                                   {"prompt_tokens", usage.prompt_tokens},
                                   {"output_tokens", usage.completion_tokens}};
  if (usage.completion_tokens > 0) fields["ttft_ms"] = usage.time_to_first_token_ms;
  fields["queue_ms"] = usage.queue_time_ms;
  fields["total_ms"] = usage.total_time_ms;
  fields["mean_exit_layer"] = usage.mean_exit_layer;
  fields["greedy_exits"] = sequence.greedy_exits;
  fields["preemptions"] = usage.preemptions;
  fields["priority"] = usage.priority;
  if (!error.empty()) fields["error"] = error;
  logging::event(reason == Finish::kError ? spdlog::level::warn : spdlog::level::info,
                 "request_finished", fields);
}

}  // namespace helios::engine
