#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>

#include "helios/engine/serving_engine.h"
#include "helios/serve/notify_thread.h"
#include "helios/v1/inference.grpc.pb.h"
#include "serving_context.h"

namespace helios::serve {

// The Inference service takes its request bytes raw (see parse_generate_request in
// helios/serve/request_validation.h) and writes serialized responses; to clients it is the
// plain helios.v1.Inference service.
using RawInferenceBase = v1::Inference::WithRawCallbackMethod_Generate<
    v1::Inference::WithRawCallbackMethod_Complete<v1::Inference::Service>>;

class InferenceService final : public RawInferenceBase {
 public:
  explicit InferenceService(ServingContext& context) : context_(context) {}

  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* call,
                                                       const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* Complete(grpc::CallbackServerContext* call,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;

 private:
  // Admits a request into the engine or returns why not.
  grpc::Status admit(grpc::CallbackServerContext* call, const grpc::ByteBuffer& bytes,
                     std::shared_ptr<engine::Request>& out);
  // admit() while serving: parse, the cheap refusals (a full queue, then the field checks),
  // tokenization, submission. Throws helios::Error.
  std::shared_ptr<engine::Request> prepare(grpc::CallbackServerContext* call,
                                           const grpc::ByteBuffer& bytes,
                                           const ServingContext::Served& served);

  ServingContext& context_;
  // Streams' writes, off the engine thread. Outlives the calls (gRPC shuts the server down,
  // ending every call, before its services go).
  NotifyThread notify_;
};

}  // namespace helios::serve
