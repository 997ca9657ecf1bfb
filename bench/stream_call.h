// One streaming Generate call driven by gRPC's callback API: no thread waits on it, so hundreds
// of streams in flight cost memory, not threads. Reactions run on gRPC's threads and only stamp
// times and copy the usage; `done` runs last, on a gRPC thread, and may delete the call.
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <string>

#include "bench_common.h"
#include "helios/v1/inference.grpc.pb.h"

namespace helios::bench {

struct StreamOutcome {
  Clock::time_point sent, first_token, last_token;
  bool has_first_token = false;
  bool has_usage = false;
  helios::v1::Usage usage;
  helios::v1::FinishReason finish = helios::v1::FINISH_REASON_UNSPECIFIED;
  std::string error;  // from the stream (finish ERROR) or the call status
  grpc::Status status;

  bool ok() const {
    return status.ok() && (finish == helios::v1::STOP || finish == helios::v1::LENGTH);
  }
};

class StreamCall final : public grpc::ClientReadReactor<helios::v1::GenerateResponse> {
 public:
  using Done = std::function<void(StreamCall* call, const StreamOutcome& outcome)>;

  StreamCall(helios::v1::GenerateRequest request, double timeout_s, Done done)
      : request_(std::move(request)), done_(std::move(done)) {
    context_.set_deadline(std::chrono::system_clock::now() +
                          std::chrono::duration_cast<std::chrono::system_clock::duration>(
                              std::chrono::duration<double>(timeout_s)));
  }

  void start(helios::v1::Inference::Stub* stub) {
    stub->async()->Generate(&context_, &request_, this);
    StartRead(&response_);
    outcome_.sent = Clock::now();
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // the stream ended; OnDone follows with the status
    const auto now = Clock::now();
    if (!response_.text().empty()) {
      if (!outcome_.has_first_token) {
        outcome_.has_first_token = true;
        outcome_.first_token = now;
      }
      outcome_.last_token = now;
    }
    if (response_.has_usage()) {
      outcome_.has_usage = true;
      outcome_.usage = response_.usage();
    }
    if (response_.finish_reason() != helios::v1::FINISH_REASON_UNSPECIFIED) {
      outcome_.finish = response_.finish_reason();
    }
    if (!response_.error().empty()) outcome_.error = response_.error();
    response_.Clear();
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    outcome_.status = status;
    if (!status.ok() && outcome_.error.empty()) outcome_.error = status.error_message();
    // `done` may delete this call: keep the callback alive on the stack while it runs.
    const Done done = std::move(done_);
    done(this, outcome_);
  }

 private:
  grpc::ClientContext context_;
  helios::v1::GenerateRequest request_;
  helios::v1::GenerateResponse response_;
  StreamOutcome outcome_;
  Done done_;
};

// "OK", "RESOURCE_EXHAUSTED", ... as gRPC spells the codes.
inline std::string status_name(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "CODE_" + std::to_string(static_cast<int>(code));
  }
}

}  // namespace helios::bench
