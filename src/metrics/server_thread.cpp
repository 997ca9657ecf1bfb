#include "helios/metrics/server_thread.h"

#include <sys/socket.h>

#include <chrono>

#include "helios/common/error.h"
#include "http_server.h"

namespace helios::metrics {

ServerThread::ServerThread() = default;

ServerThread::~ServerThread() {
  stop();
}

int ServerThread::start(std::unique_ptr<httplib::Server> server, const std::string& host, int port,
                        const std::string& what) {
  const int bound =
      port == 0 ? server->bind_to_any_port(host) : (server->bind_to_port(host, port) ? port : -1);
  if (bound <= 0) {
    throw Error(ErrorCode::kUnavailable,
                what + ": cannot bind " + host + ":" + std::to_string(port));
  }
  listen_exited_ = false;
  httplib::Server* raw = server.get();
  thread_ = std::thread([this, raw] {
    raw->listen_after_bind();
    listen_exited_ = true;
  });
  // httplib's stop() does nothing until the listen loop has marked itself running; waiting for
  // that here means a stop() right after start() cannot be lost and leave join() hanging.
  while (!raw->is_running() && !listen_exited_) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  server_ = std::move(server);
  return bound;
}

void ServerThread::stop() {
  if (server_) server_->stop();
  // Waits for in-flight requests too: the listen loop shuts its thread pool down on the way out.
  if (thread_.joinable()) thread_.join();
  server_.reset();
}

void apply_common_settings(httplib::Server& server) {
  server.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  server.set_pre_routing_handler([](const httplib::Request& req, httplib::Response& res) {
    if (req.method != "PRI") return httplib::Server::HandlerResponse::Unhandled;
    res.status = 400;
    return httplib::Server::HandlerResponse::Handled;
  });
}

}  // namespace helios::metrics
