#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "helios/engine/request.h"
#include "helios/engine/sampler.h"
#include "helios/engine/stop_matcher.h"
#include "helios/kv/kv_cache.h"
#include "helios/model/transformer.h"
#include "helios/tokenizer/stream_decoder.h"
#include "helios/tokenizer/tokenizer.h"

namespace helios::engine {

// One request inside the engine: its tokens, its place in the KV cache, its sampler and text
// state, and what it has done so far. Owned by the scheduler; only the engine thread touches it.
struct Sequence {
  Sequence(std::shared_ptr<Request> request, std::shared_ptr<const tokenizer::Tokenizer> tokenizer);

  // Positions that must be in the cache before the next decode: the prompt, or after a
  // preemption everything but the last sampled token (which the next decode feeds).
  int64_t prefill_target() const {
    return generated == 0 ? prompt_length : static_cast<int64_t>(tokens.size()) - 1;
  }
  int64_t prefill_remaining() const { return prefill_target() - kv.length; }
  bool decoding() const { return generated > 0 && kv.length == prefill_target(); }
  bool finished() const { return finish != Finish::kNone; }

  // The exit layer each position of [begin, begin + count) is recomputed with: generated
  // positions keep the exits they were decoded with, so the cache holds exactly what it held
  // before a preemption; prompt positions run every loaded layer (0). Empty when the chunk is
  // all prompt (an ordinary prefill).
  std::vector<int32_t> replay_exits(int64_t begin, int64_t count) const;

  // First admission into the batch at `now`, under model epoch `epoch`; `score` asks for the
  // prompt to be scored at every exit point (the client asked, or the telemetry sample).
  void admit(Clock::time_point now, uint64_t epoch, bool score);
  // Appends a sampled token and what its exit was.
  void record_token(int32_t token, const model::TokenExit& exit, Clock::time_point now);
  // A prefill that will not finish as one (preemption, model switch) drops its partial
  // scores, which would mislead; a prompt whose client asked for the score is scored again by
  // the recomputed prefill (which, before any token was generated, covers only the prompt).
  void restart_prompt_scoring();
  // Another model's layers never produced the recorded exits: a recompute on it runs at full
  // depth, and records that, so a later preemption replays the cache this recompute builds.
  void forget_exits();

  std::shared_ptr<Request> request;
  // The member of the engine's resident set that serves it (an index into the set, which the
  // router chose at arrival): its pool holds `kv`, its model runs every forward.
  int32_t lane = 0;
  kv::SequenceKv kv;
  Sampler sampler;
  std::vector<int32_t> tokens;  // prompt, then generated
  int64_t prompt_length;
  // Exit layer of each decoded position (position prompt_length + i), kept for recompute.
  std::vector<int32_t> decoded_exits;
  int64_t generated = 0;
  double exit_layer_sum = 0.0;
  // The decoder's tokenizer, kept alive across a model switch (the text continues with it).
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer;
  tokenizer::StreamDecoder decoder;
  StopMatcher stop;
  bool admitted = false;
  Clock::time_point admitted_at, first_token_at, last_token_at;
  int64_t preemptions = 0;
  Finish finish = Finish::kNone;
  // Telemetry.
  uint64_t admitted_epoch = 0;
  bool score_prompt = false;  // until its prompt has been prefilled once, uninterrupted
  std::optional<model::ExitScores> prompt_scores;
  std::vector<int64_t> exit_counts;  // by exit layer
  int64_t greedy_exits = 0;
};

}  // namespace helios::engine
