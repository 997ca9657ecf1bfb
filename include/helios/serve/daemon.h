#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>

#include "helios/serve/server_config.h"

namespace grpc {
class Server;
}

namespace helios::engine {
class ModelInstance;
class ServingEngine;
}  // namespace helios::engine

namespace helios::controller {
class Controller;
}

namespace helios::metrics {
class EnergyMeter;
class Registry;
class HttpEndpoint;
}  // namespace helios::metrics

namespace helios::serve {

enum class ServerState { kLoading, kServing, kDraining, kStopped };

struct Services;  // the gRPC services and the context they share (src/serve/daemon.cpp)

// Refuses a config whose Admin service would be reachable from other hosts without
// authentication: grpc.address on anything but a loopback address, localhost or a Unix socket
// (0.0.0.0, [::], a host name, an interface address) with no admin.token. Throws
// helios::Error(kInvalidArgument) naming both keys. Daemon::start() calls it first.
void check_admin_exposure(const ServerConfig& config);
// Reads admin.token_file (when set) into admin_token; the file must hold one non-empty line.
void read_admin_token(ServerConfig& config);

// The helios daemon: the HTTP endpoint, the gRPC server (Inference, Admin, health,
// reflection), the OpenAI-compatible HTTP API and the serving engine, with their lifecycle. start() brings everything up and
// returns once the model serves; shutdown() drains: health goes NOT_SERVING, new calls get
// UNAVAILABLE, requests in flight finish (or are cancelled when the drain timeout passes),
// then the servers stop.
class OpenAiServer;

class Daemon {
 public:
  explicit Daemon(ServerConfig config);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  void start();
  // Drains and stops; returns when everything has stopped. A second call while the first is
  // draining cancels what is still in flight at once.
  void shutdown();

  int grpc_port() const { return grpc_port_; }
  int http_port() const { return http_port_; }
  int openai_port() const { return openai_port_; }  // 0 when openai.port is -1
  ServerState state() const { return state_.load(); }

 private:
  void load_model();
  // Registers the energy metrics; after load_model(), for the engine's token counter.
  void export_energy();

  ServerConfig config_;
  std::atomic<ServerState> state_{ServerState::kLoading};
  std::chrono::steady_clock::time_point started_;
  std::unique_ptr<metrics::Registry> registry_;
  std::shared_ptr<metrics::EnergyMeter> energy_meter_;  // shared with the controller
  std::unique_ptr<metrics::HttpEndpoint> http_;
  std::shared_ptr<const engine::ModelInstance> model_;  // the initial model
  std::unique_ptr<controller::Controller> controller_;   // policy "helios"
  std::unique_ptr<engine::ServingEngine> engine_;
  std::unique_ptr<Services> services_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<OpenAiServer> openai_;
  int grpc_port_ = 0;
  int http_port_ = 0;
  int openai_port_ = 0;
  std::mutex shutdown_mutex_;
  std::atomic<bool> force_{false};
  bool shut_down_ = false;
};

}  // namespace helios::serve
