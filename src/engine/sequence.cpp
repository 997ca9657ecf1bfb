#include "helios/engine/sequence.h"

#include <algorithm>

namespace helios::engine {

Sequence::Sequence(std::shared_ptr<Request> r, std::shared_ptr<const tokenizer::Tokenizer> t)
    : request(std::move(r)),
      sampler(request->spec().sampling),
      tokens(request->spec().prompt),
      prompt_length(static_cast<int64_t>(tokens.size())),
      tokenizer(std::move(t)),
      decoder(*tokenizer),
      stop(request->spec().stop) {}

std::vector<int32_t> Sequence::replay_exits(int64_t begin, int64_t count) const {
  std::vector<int32_t> exits;
  if (begin + count <= prompt_length) return exits;
  exits.reserve(count);
  for (int64_t p = begin; p < begin + count; ++p) {
    exits.push_back(p < prompt_length ? 0 : decoded_exits[p - prompt_length]);
  }
  return exits;
}

void Sequence::admit(Clock::time_point now, uint64_t epoch, bool score) {
  admitted = true;
  admitted_at = now;
  admitted_epoch = epoch;
  if (score) {
    score_prompt = true;
    prompt_scores.emplace();
  }
}

void Sequence::record_token(int32_t token, const model::TokenExit& exit, Clock::time_point now) {
  tokens.push_back(token);
  ++generated;
  exit_layer_sum += exit.exit_layer;
  if (static_cast<size_t>(exit.exit_layer) >= exit_counts.size()) {
    exit_counts.resize(exit.exit_layer + 1, 0);
  }
  ++exit_counts[exit.exit_layer];
  if (exit.greedy_exit) ++greedy_exits;
  if (generated == 1) first_token_at = now;
  last_token_at = now;
}

void Sequence::restart_prompt_scoring() {
  if (!score_prompt) return;  // scored already, or never asked
  prompt_scores.reset();
  score_prompt = request->spec().score_prompt && generated == 0;
  if (score_prompt) prompt_scores.emplace();
}

void Sequence::forget_exits() { std::fill(decoded_exits.begin(), decoded_exits.end(), 0); }

}  // namespace helios::engine
