#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "helios/metrics/server_thread.h"

namespace helios::metrics {

// The daemon's HTTP side: GET /metrics (text/plain; version=0.0.4), /healthz, /readyz. HEAD
// works on each; other paths get 404. A handler that throws gives a 500 with its message.
//
// Limits, so that slow or hostile clients cannot starve the probes or grow memory:
//   - connections are served by up to 32 worker threads, started on demand (past them, new
//     connections wait for a free worker); the listen backlog is 128;
//   - read timeout 2 s: a client silent for 2 s mid-request is disconnected;
//   - write timeout 5 s: a client that reads nothing of a response for 5 s is disconnected;
//   - request bodies: at most 64 KiB (past it: 413, the body is read and discarded, never
//     buffered); no route takes a body (POST/PUT/PATCH/DELETE get 404 after the body is
//     streamed into nothing);
//   - keep-alive: 1 s idle, at most 20 requests per connection.
// cpp-httplib 0.11 has no whole-request deadline: a client that sends one byte every < 2 s
// keeps its worker until it stops, and a request line without a newline is buffered.
class HttpEndpoint {
 public:
  struct Handlers {
    std::function<std::string()> metrics;  // body of /metrics
    std::function<bool()> live;            // /healthz: 200 "ok\n" when true, else 503
    // /readyz: "" -> 200 "ready\n"; else 503 with the reason (a newline is added if missing).
    std::function<std::string()> not_ready;
  };

  explicit HttpEndpoint(Handlers handlers);
  ~HttpEndpoint();  // stops
  HttpEndpoint(const HttpEndpoint&) = delete;
  HttpEndpoint& operator=(const HttpEndpoint&) = delete;

  // Binds host:port (port 0 picks a free one) and serves on background threads; returns the
  // bound port. Bind failure -> Error kUnavailable naming host:port; already started -> Error
  // kFailedPrecondition. After stop() it may be started again.
  int start(const std::string& host, int port);
  void stop();  // idempotent; waits for the serving thread

  int port() const { return port_; }  // the bound port, 0 when not serving

 private:
  Handlers handlers_;
  std::mutex mutex_;  // serializes start() and stop()
  ServerThread server_;
  std::atomic<int> port_{0};
};

}  // namespace helios::metrics
