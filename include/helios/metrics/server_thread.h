#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

namespace httplib {
class Server;
}

namespace helios::metrics {

// An httplib::Server listening on a thread of its own: what the metrics endpoint and the
// OpenAI-compatible API share. Not thread-safe: its owner serialises start() and stop().
class ServerThread {
 public:
  ServerThread();
  ~ServerThread();  // stops
  ServerThread(const ServerThread&) = delete;
  ServerThread& operator=(const ServerThread&) = delete;

  // Binds host:port (port 0 picks a free one) and serves `server` until stop(); returns the
  // bound port once the listen loop runs (so that a stop() right after cannot be lost). A bind
  // failure throws Error(kUnavailable) "<what>: cannot bind host:port".
  int start(std::unique_ptr<httplib::Server> server, const std::string& host, int port,
            const std::string& what);
  // Idempotent; waits for the listen loop, which waits for the connections being served.
  void stop();
  bool serving() const { return server_ != nullptr; }

 private:
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  std::atomic<bool> listen_exited_{false};
};

// The settings every helios HTTP server takes: SO_REUSEADDR without httplib's SO_REUSEPORT (a
// second daemon must not bind the same port and take half the traffic; a restart still may
// while old connections sit in TIME_WAIT), and HTTP/2's preface (method PRI, the one other
// method httplib reads a body for) refused with 400 before it is read.
void apply_common_settings(httplib::Server& server);

}  // namespace helios::metrics
