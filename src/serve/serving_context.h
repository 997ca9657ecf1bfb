#pragma once

#include <grpcpp/support/status.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "helios/common/error.h"
#include "helios/metrics/registry.h"
#include "helios/serve/daemon.h"
#include "helios/serve/request_validation.h"
#include "helios/serve/server_config.h"

namespace helios::serve {

// What the gRPC handlers need to see of the daemon.
//
// Thread safety: the plain fields are set before the gRPC server starts and never change
// after. What exists only once the model has loaded (the engine, the controller, the request
// limits resolved against the model's context) comes while handlers may already run: it is
// written once into a Served and published by publish() (a release store), and handlers see
// it through served() (an acquire load): null until then, complete and immutable after.
struct ServingContext {
  struct Served {
    engine::ServingEngine* engine = nullptr;       // outlives the gRPC server
    controller::Controller* controller = nullptr;  // with policy "helios"; outlives the server
    RequestLimits limits;
  };

  const ServerConfig* config = nullptr;
  std::atomic<ServerState>* state = nullptr;
  std::chrono::steady_clock::time_point started;
  metrics::Family<metrics::Counter>* rejected = nullptr;  // by gRPC status code
  std::atomic<int64_t> open_calls{0};  // calls gRPC has not finished with (shutdown waits)

  // Once, before the state becomes kServing; a second call throws kFailedPrecondition.
  void publish(const Served& served);
  // Null until publish(); a handler that read kServing or kDraining finds it set.
  const Served* served() const { return served_.load(std::memory_order_acquire); }

 private:
  Served storage_;
  std::atomic<const Served*> served_{nullptr};
};

// A request id the server assigns, "<kind>-<hex>-<n>": a random per-process prefix and one
// counter for every front end, so ids from two runs of the daemon do not collide in logs.
std::string server_request_id(std::string_view kind);

// Maps a helios::Error onto the gRPC status code of the same meaning.
grpc::Status to_status(const Error& error);

}  // namespace helios::serve
