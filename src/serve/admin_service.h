#pragma once

#include <grpcpp/grpcpp.h>

#include "helios/v1/admin.grpc.pb.h"
#include "serving_context.h"

namespace helios::serve {

// Admin calls need the configured bearer token, or come from a loopback peer when none is set.
grpc::Status check_admin_access(const grpc::CallbackServerContext& call,
                                const ServerConfig& config);

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

}  // namespace helios::serve
