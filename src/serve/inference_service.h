#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>

#include "helios/engine/serving_engine.h"
#include "helios/v1/inference.grpc.pb.h"
#include "serving_context.h"

namespace helios::serve {

// Validates a GenerateRequest against the server's limits and tokenizes it. Throws
// helios::Error(kInvalidArgument) naming the offending field.
engine::RequestSpec build_request_spec(const v1::GenerateRequest& request,
                                       const ServingContext& context,
                                       const engine::ModelInstance& model,
                                       std::chrono::system_clock::time_point deadline);

// Parses a serialized GenerateRequest without protobuf's UTF-8 check on string fields, so
// that a prompt with invalid UTF-8 reaches validation (and gets INVALID_ARGUMENT naming the
// field) instead of failing inside gRPC with a status that names nothing.
grpc::Status parse_generate_request(const grpc::ByteBuffer& buffer, v1::GenerateRequest& out);

// The Inference service takes its request bytes raw (see parse_generate_request) and writes
// serialized responses; to clients it is the plain helios.v1.Inference service.
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

  ServingContext& context_;
};

}  // namespace helios::serve
