#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>

#include "helios/common/error.h"
#include "helios/controller/controller.h"
#include "helios/engine/serving_engine.h"
#include "helios/serve/daemon.h"
#include "helios/serve/server_config.h"
#include "helios/v1/admin.grpc.pb.h"
#include "helios/v1/inference.grpc.pb.h"

namespace helios::serve {

// What the gRPC handlers need to see of the daemon. The engine pointer is set once the model
// is loaded; handlers read the state first and only touch the engine when it is kServing or
// kDraining (it outlives the gRPC server).
struct ServingContext {
  const ServerConfig* config = nullptr;
  std::atomic<ServerState>* state = nullptr;
  std::atomic<engine::ServingEngine*> engine{nullptr};
  std::chrono::steady_clock::time_point started;
  int64_t max_prompt_tokens = 0;  // resolved against the model's context
  int64_t max_output_tokens = 0;
  metrics::Family<metrics::Counter>* rejected = nullptr;  // by gRPC status code
  std::atomic<int64_t> open_calls{0};  // Generate/Complete calls gRPC has not finished with
  controller::Controller* controller = nullptr;  // with policy "helios"; outlives the server
};

// Maps a helios::Error onto the gRPC status code of the same meaning.
grpc::Status to_status(const Error& error);

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

// Admin calls need the configured bearer token, or come from a loopback peer when none is set.
grpc::Status check_admin_access(const grpc::CallbackServerContext& call, const ServerConfig& config);

class AdminService final : public v1::Admin::CallbackService {
 public:
  explicit AdminService(ServingContext& context) : context_(context) {}

  grpc::ServerUnaryReactor* GetStatus(grpc::CallbackServerContext* call,
                                      const v1::GetStatusRequest* request,
                                      v1::GetStatusResponse* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* call,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* PinModel(grpc::CallbackServerContext* call,
                                     const v1::PinModelRequest* request,
                                     v1::PinModelResponse* response) override;
  grpc::ServerUnaryReactor* Unpin(grpc::CallbackServerContext* call,
                                  const v1::UnpinRequest* request,
                                  v1::UnpinResponse* response) override;
  grpc::ServerUnaryReactor* ReloadConfig(grpc::CallbackServerContext* call,
                                         const v1::ReloadConfigRequest* request,
                                         v1::ReloadConfigResponse* response) override;

 private:
  ServingContext& context_;
};

// What the daemon registers with gRPC, with the context the services share.
struct Services {
  ServingContext context;
  InferenceService inference{context};
  AdminService admin{context};
};

}  // namespace helios::serve
