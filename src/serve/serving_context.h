#pragma once

#include <grpcpp/support/status.h>

#include <atomic>
#include <chrono>
#include <cstdint>

#include "helios/common/error.h"
#include "helios/metrics/registry.h"
#include "helios/serve/daemon.h"
#include "helios/serve/server_config.h"

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

}  // namespace helios::serve
