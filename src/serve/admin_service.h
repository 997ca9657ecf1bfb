#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <mutex>
#include <string_view>
#include <thread>

#include "helios/serve/admin_access.h"
#include "helios/v1/admin.grpc.pb.h"
#include "serving_context.h"

namespace helios::serve {

// check_admin_access over a call's peer and metadata.
grpc::Status check_admin_access(const grpc::CallbackServerContext& call,
                                const ServerConfig& config);

// Controller actions (PinModel, Unpin, ReloadConfig) can take a while (a load), so they run off
// the gRPC threads, on one worker thread at a time: a call while one runs gets
// RESOURCE_EXHAUSTED "an admin action is already running". stop() (the daemon's shutdown, and
// the destructor) waits for the running action, so no thread outlives the controller.
class AdminService final : public v1::Admin::CallbackService {
 public:
  explicit AdminService(ServingContext& context) : context_(context) {}
  ~AdminService() override;
  // Waits for a running action; later actions get UNAVAILABLE.
  void stop();

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
  grpc::ServerUnaryReactor* run_controller_action(
      grpc::CallbackServerContext* call, std::function<void(controller::Controller&)> body);

  ServingContext& context_;
  std::mutex worker_mutex_;
  std::thread worker_;        // the running or last action's thread
  bool worker_busy_ = false;  // an action runs
  bool stopped_ = false;
};

}  // namespace helios::serve
