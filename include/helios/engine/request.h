#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "helios/common/error.h"
#include "helios/engine/finish.h"
#include "helios/engine/sampler.h"
#include "helios/model/transformer.h"

namespace helios::engine {

using Clock = std::chrono::steady_clock;

// What a client asked for, already validated and tokenized by the front end.
struct RequestSpec {
  std::string id;
  std::vector<int32_t> prompt;  // token ids, BOS included
  int64_t max_tokens = 16;
  SamplingParams sampling;
  std::vector<std::string> stop;  // stop strings, matched on the decoded text
  bool token_details = false;
  bool score_prompt = false;  // report the prompt's perplexity in Usage
  // Scheduling class: 0 is the most urgent; below SchedulerLimits::priority_levels.
  int32_t priority = 0;
  Clock::time_point deadline = Clock::time_point::max();
};

struct TokenDetail {
  int32_t id = 0;
  model::TokenExit exit;
};

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  std::string model;
  double time_to_first_token_ms = 0.0;
  double mean_exit_layer = 0.0;
  double queue_time_ms = 0.0;
  double total_time_ms = 0.0;
  int64_t preemptions = 0;
  // With RequestSpec::score_prompt: early-exit perplexity of the prompt at the loaded depth.
  double prompt_perplexity = 0.0;
  int64_t prompt_scored_tokens = 0;
  int32_t priority = 0;  // the request's scheduling class
  int64_t loaded_layers = 0;  // depth of the model that finished it
};

// What the engine has produced for a request since the consumer last looked. Updates merge:
// text and tokens append, and the final one carries the finish reason and usage.
struct Update {
  std::string text;
  std::vector<TokenDetail> tokens;
  Finish finish = Finish::kNone;
  std::string error;  // with kError
  // With kError: what kind of failure, for the status the front end returns. kInternal for an
  // engine failure; kInvalidArgument for a request the model now serving cannot run (its prompt
  // leaves no room to generate within a smaller context after a switch).
  ErrorCode error_code = ErrorCode::kInternal;
  Usage usage;  // with any finish

  bool finished() const { return finish != Finish::kNone; }
  bool empty() const { return text.empty() && tokens.empty() && !finished(); }
  void merge(Update&& later);
};

// The path from the engine thread back to whoever serves the request (a gRPC reactor). The
// engine pushes; the consumer is told through a listener and takes everything pending at once,
// so a slow reader gets fewer, larger messages instead of an unbounded backlog of them.
class ResponseChannel {
 public:
  // Called after each push, on the pushing thread, with no channel lock held.
  class Listener {
   public:
    virtual ~Listener() = default;
    virtual void on_update() = 0;
  };

  void set_listener(std::weak_ptr<Listener> listener);
  void push(Update update);
  // Moves everything pending into `out`; false when nothing was pending.
  bool take(Update& out);
  // True once a finished update was pushed (whether or not it has been taken).
  bool finished() const;

 private:
  mutable std::mutex mutex_;
  Update pending_;
  bool has_pending_ = false;
  bool finished_ = false;
  std::weak_ptr<Listener> listener_;
};

// One request as the front end and the engine share it.
class Request {
 public:
  explicit Request(RequestSpec spec);

  const RequestSpec& spec() const { return spec_; }
  Clock::time_point arrival() const { return arrival_; }
  ResponseChannel& channel() { return channel_; }

  // Thread-safe; the engine drops the request at its next step and finishes it kCancelled.
  void cancel() { cancelled_.store(true, std::memory_order_release); }
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }

 private:
  RequestSpec spec_;
  Clock::time_point arrival_;
  std::atomic<bool> cancelled_{false};
  ResponseChannel channel_;
};

}  // namespace helios::engine
