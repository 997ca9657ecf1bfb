// helios.v1.Inference: request validation, admission and the streaming of results.
#include "inference_service.h"

#include <spdlog/spdlog.h>

#include <cmath>

#include "helios/common/error.h"
#include "helios/common/exception_message.h"
#include "helios/serve/notify_thread.h"
#include "helios/serve/request_validation.h"

namespace helios::serve {
namespace {

using engine::Finish;

v1::FinishReason to_proto(Finish finish) {
  switch (finish) {
    case Finish::kStop: return v1::STOP;
    case Finish::kLength: return v1::LENGTH;
    case Finish::kCancelled:
    case Finish::kDeadline: return v1::CANCELLED;
    case Finish::kError: return v1::ERROR;
    case Finish::kNone: break;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

void fill_usage(const engine::Usage& usage, v1::Usage* out) {
  out->set_prompt_tokens(static_cast<uint32_t>(usage.prompt_tokens));
  out->set_completion_tokens(static_cast<uint32_t>(usage.completion_tokens));
  out->set_model(usage.model);
  out->set_time_to_first_token_ms(usage.time_to_first_token_ms);
  out->set_mean_exit_layer(usage.mean_exit_layer);
  out->set_queue_time_ms(usage.queue_time_ms);
  out->set_total_time_ms(usage.total_time_ms);
  out->set_preemptions(static_cast<uint32_t>(usage.preemptions));
  out->set_prompt_perplexity(usage.prompt_perplexity);
  out->set_prompt_scored_tokens(static_cast<uint32_t>(usage.prompt_scored_tokens));
  out->set_priority(static_cast<uint32_t>(usage.priority));
}

void fill_tokens(const std::vector<engine::TokenDetail>& tokens,
                 google::protobuf::RepeatedPtrField<v1::TokenDetail>* out) {
  for (const engine::TokenDetail& token : tokens) {
    v1::TokenDetail* detail = out->Add();
    detail->set_token_id(token.id);
    detail->set_exit_layer(static_cast<uint32_t>(token.exit.exit_layer));
    detail->set_confidence(token.exit.confidence);
    detail->set_greedy_exit(token.exit.greedy_exit);
  }
}

// How a finished request ends on the wire. Completions (stop, length) end OK. A request the
// client cancelled ends CANCELLED; one cut off by its deadline, DEADLINE_EXCEEDED; one the
// server cancelled while shutting down, UNAVAILABLE (after a last message, so the client
// still gets the text and usage); an engine failure, INTERNAL after an ERROR message.
struct Ending {
  grpc::Status status;
  bool final_message = true;
};

Ending ending_for(const engine::Update& update, bool client_cancelled) {
  switch (update.finish) {
    case Finish::kStop:
    case Finish::kLength: return {grpc::Status::OK, true};
    case Finish::kDeadline:
      return {grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "deadline exceeded"), false};
    case Finish::kCancelled:
      if (client_cancelled) {
        return {grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client"), false};
      }
      return {grpc::Status(grpc::StatusCode::UNAVAILABLE,
                           "the server shut down before the request finished"),
              true};
    case Finish::kError:
      // The engine's own failures are INTERNAL; a request it refuses after admission (its
      // prompt no longer fits the context of the model switched to) keeps its own code.
      if (update.error_code == ErrorCode::kInvalidArgument) {
        return {grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, update.error), true};
      }
      return {grpc::Status(grpc::StatusCode::INTERNAL, "engine error: " + update.error), true};
    case Finish::kNone: break;
  }
  return {grpc::Status(grpc::StatusCode::INTERNAL, "request ended without a reason"), false};
}

// Shared by both RPC shapes: listens on a request's channel, cancels the request when the call
// goes away, and keeps itself alive (self_) until gRPC is done with it. Reactions and engine
// notifications may come from different threads at once, and gRPC may run a reaction inline
// from Finish(), hence the recursive mutex.
template <typename Base>
class ChannelReactor : public Base,
                       public engine::ResponseChannel::Listener,
                       public NotifyThread::Task,
                       public std::enable_shared_from_this<ChannelReactor<Base>> {
 public:
  ChannelReactor(std::shared_ptr<engine::Request> request, engine::ServingEngine* engine,
                 std::atomic<int64_t>& open_calls, NotifyThread& notify)
      : request_(std::move(request)), engine_(engine), open_calls_(open_calls), notify_(notify) {
    open_calls_.fetch_add(1);
  }

  void begin() {
    self_ = this->shared_from_this();
    request_->channel().set_listener(this->weak_from_this());
  }

  // On the engine thread (or whichever pushed): the write happens on the notify thread.
  void on_update() override {
    if (!notify_.post(this->shared_from_this())) run();
  }

  void run() override {
    std::lock_guard lock(mutex_);
    pump();
  }

  void OnCancel() override {
    {
      std::lock_guard lock(mutex_);
      client_cancelled_ = true;
    }
    request_->cancel();
    engine_->wake();
  }

  void OnDone() override {
    std::shared_ptr<ChannelReactor> keep;
    {
      std::lock_guard lock(mutex_);
      done_ = true;
      keep.swap(self_);
    }
    open_calls_.fetch_sub(1);
    // `keep` releases this reactor on return unless the engine still holds it mid-notify.
  }

 protected:
  // Called with mutex_ held whenever something may have changed.
  virtual void pump() = 0;

  std::recursive_mutex mutex_;
  std::shared_ptr<engine::Request> request_;
  engine::ServingEngine* engine_;
  std::atomic<int64_t>& open_calls_;
  NotifyThread& notify_;
  std::shared_ptr<ChannelReactor> self_;
  bool client_cancelled_ = false;
  bool finish_called_ = false;
  bool done_ = false;
};

void serialize(const google::protobuf::Message& message, grpc::ByteBuffer* out) {
  grpc::Slice slice(message.SerializeAsString());
  *out = grpc::ByteBuffer(&slice, 1);
}

class GenerateReactor final : public ChannelReactor<grpc::ServerWriteReactor<grpc::ByteBuffer>> {
 public:
  using ChannelReactor::ChannelReactor;

  void OnWriteDone(bool ok) override {
    std::lock_guard lock(mutex_);
    writing_ = false;
    if (!ok) {
      // The client is gone: stop generating for it.
      broken_ = true;
      request_->cancel();
      engine_->wake();
    }
    pump();
  }

 private:
  void pump() override {
    if (done_ || finish_called_ || writing_) return;
    engine::Update update;
    if (!request_->channel().take(update)) return;
    if (!update.finished()) {
      if (broken_ || (update.text.empty() && update.tokens.empty())) return;
      fill(update);
      writing_ = true;
      StartWrite(&buffer_);
      return;
    }
    const Ending ending = ending_for(update, client_cancelled_ || broken_);
    finish_called_ = true;
    if (ending.final_message && !broken_) {
      fill(update);
      message_.set_finish_reason(to_proto(update.finish));
      fill_usage(update.usage, message_.mutable_usage());
      if (update.finish == Finish::kError) message_.set_error(update.error);
      serialize(message_, &buffer_);
      StartWriteAndFinish(&buffer_, grpc::WriteOptions(), ending.status);
    } else {
      Finish(ending.status);
    }
  }

  void fill(engine::Update& update) {
    message_.Clear();
    message_.set_request_id(request_->spec().id);
    message_.set_text(std::move(update.text));
    fill_tokens(update.tokens, message_.mutable_tokens());
    serialize(message_, &buffer_);
  }

  v1::GenerateResponse message_;
  grpc::ByteBuffer buffer_;
  bool writing_ = false;
  bool broken_ = false;
};

class CompleteReactor final : public ChannelReactor<grpc::ServerUnaryReactor> {
 public:
  CompleteReactor(std::shared_ptr<engine::Request> request, engine::ServingEngine* engine,
                  std::atomic<int64_t>& open_calls, NotifyThread& notify,
                  grpc::ByteBuffer* response)
      : ChannelReactor(std::move(request), engine, open_calls, notify), response_(response) {
    message_.set_request_id(request_->spec().id);
  }

 private:
  void pump() override {
    if (done_ || finish_called_) return;
    engine::Update update;
    if (!request_->channel().take(update)) return;
    message_.mutable_text()->append(update.text);
    fill_tokens(update.tokens, message_.mutable_tokens());
    if (!update.finished()) return;
    const Ending ending = ending_for(update, client_cancelled_);
    message_.set_finish_reason(to_proto(update.finish));
    fill_usage(update.usage, message_.mutable_usage());
    if (update.finish == Finish::kError) message_.set_error(update.error);
    if (ending.status.ok()) serialize(message_, response_);
    finish_called_ = true;
    Finish(ending.status);
  }

  v1::CompleteResponse message_;
  grpc::ByteBuffer* response_;
};

// A Generate call refused before admission: finishes at once with the status.
class FailedWriteReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  explicit FailedWriteReactor(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

// The request's bytes in one piece.
std::string flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) {
    throw Error(ErrorCode::kInvalidArgument, "request: unreadable message");
  }
  std::string bytes;
  bytes.reserve(buffer.Length());
  for (const grpc::Slice& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return bytes;
}

}  // namespace

std::shared_ptr<engine::Request> InferenceService::prepare(grpc::CallbackServerContext* call,
                                                           const grpc::ByteBuffer& bytes,
                                                           const ServingContext::Served& served) {
  const v1::GenerateRequest request = parse_generate_request(flatten(bytes));
  engine::ServingEngine& engine = *served.engine;
  // Refused before any real work: the engine checks again when the request is submitted (the
  // queue may fill in between), but a flood of requests it would refuse is never tokenized.
  engine.refuse_if_queue_full(requested_priority(request, served.limits));
  engine::RequestSpec spec =
      validate_request(request, served.limits, engine.model()->tokenizer());
  if (spec.id.empty()) spec.id = server_request_id("req");
  if (const auto deadline = call->deadline();
      deadline != std::chrono::system_clock::time_point::max()) {
    const auto remaining = deadline - std::chrono::system_clock::now();
    spec.deadline = engine::Clock::now() +
                    std::chrono::duration_cast<engine::Clock::duration>(remaining);
  }
  auto admitted = std::make_shared<engine::Request>(std::move(spec));
  engine.submit(admitted);
  return admitted;
}

grpc::Status InferenceService::admit(grpc::CallbackServerContext* call,
                                     const grpc::ByteBuffer& bytes,
                                     std::shared_ptr<engine::Request>& out) {
  grpc::Status status;
  switch (context_.state->load()) {
    case ServerState::kLoading:
      status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "the model is still loading");
      break;
    case ServerState::kDraining:
    case ServerState::kStopped:
      status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down");
      break;
    case ServerState::kServing:
      try {
        out = prepare(call, bytes, *context_.served());
      } catch (const Error& e) {
        status = to_status(e);
      } catch (const std::exception& e) {
        status = grpc::Status(grpc::StatusCode::INTERNAL, exception_message(e));
      }
      break;
  }
  if (!status.ok()) {
    out.reset();
    if (context_.rejected != nullptr) {
      context_.rejected->labels({std::to_string(static_cast<int>(status.error_code()))}).inc();
    }
    spdlog::debug("request rejected: {} ({})", status.error_message(),
                  static_cast<int>(status.error_code()));
  }
  return status;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* InferenceService::Generate(
    grpc::CallbackServerContext* call, const grpc::ByteBuffer* request) {
  std::shared_ptr<engine::Request> admitted;
  const grpc::Status status = admit(call, *request, admitted);
  if (!status.ok()) return new FailedWriteReactor(status);
  auto reactor = std::make_shared<GenerateReactor>(admitted, context_.served()->engine,
                                                   context_.open_calls, notify_);
  reactor->begin();
  return reactor.get();
}

grpc::ServerUnaryReactor* InferenceService::Complete(grpc::CallbackServerContext* call,
                                                     const grpc::ByteBuffer* request,
                                                     grpc::ByteBuffer* response) {
  std::shared_ptr<engine::Request> admitted;
  const grpc::Status status = admit(call, *request, admitted);
  if (!status.ok()) {
    grpc::ServerUnaryReactor* reactor = call->DefaultReactor();
    reactor->Finish(status);
    return reactor;
  }
  auto reactor = std::make_shared<CompleteReactor>(admitted, context_.served()->engine,
                                                   context_.open_calls, notify_, response);
  reactor->begin();
  return reactor.get();
}

}  // namespace helios::serve
