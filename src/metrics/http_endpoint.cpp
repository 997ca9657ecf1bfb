#include "helios/metrics/http_endpoint.h"

#include "http_server.h"
#include <spdlog/spdlog.h>

#include <utility>

#include "helios/common/error.h"

namespace helios::metrics {
namespace {

// The limits that keep slow or hostile clients from starving the probes (each documented in
// http_endpoint.h):
// A connection holds a worker from its first byte until it closes. Workers start on demand up
// to this many and are kept; past it, accepted connections wait for a free worker.
constexpr size_t kMaxServerThreads = 32;
// A client that sends nothing for this long (mid request line, headers or body) is cut off.
constexpr time_t kReadTimeoutSeconds = 2;
// A client that reads nothing of a response for this long is cut off.
constexpr time_t kWriteTimeoutSeconds = 5;
// The endpoint serves GETs: a request body past this gets 413 and is discarded unread into
// memory (with Content-Length); a chunked body is streamed and dropped.
constexpr size_t kMaxPayloadBytes = 64 * 1024;
// A keep-alive connection idle this long is closed, and after this many requests.
constexpr time_t kKeepAliveSeconds = 1;
constexpr size_t kKeepAliveMaxRequests = 20;

constexpr const char* kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";
constexpr const char* kTextContentType = "text/plain; charset=utf-8";

// Runs `fn`, turning anything it throws into a 500 carrying the message, so a broken collect
// hook shows up in the scrape rather than taking the daemon down.
template <typename Fn>
httplib::Server::Handler guarded(std::string path, Fn fn) {
  return [path = std::move(path), fn = std::move(fn)](const httplib::Request&,
                                                      httplib::Response& res) {
    std::string message;
    try {
      fn(res);
      return;
    } catch (const std::bad_function_call&) {
      message = "no handler configured";
    } catch (const std::exception& e) {
      message = e.what();
    } catch (...) {
      message = "unknown error";
    }
    spdlog::warn("{}: {}", path, message);
    res.status = 500;
    res.set_content(path + ": " + message + "\n", kTextContentType);
  };
}

}  // namespace

HttpEndpoint::HttpEndpoint(Handlers handlers) : handlers_(std::move(handlers)) {}

HttpEndpoint::~HttpEndpoint() {
  stop();
}

int HttpEndpoint::start(const std::string& host, int port) {
  std::lock_guard lock(mutex_);
  if (server_.serving()) {
    throw Error(ErrorCode::kFailedPrecondition,
                "metrics endpoint already serving on port " + std::to_string(port_.load()));
  }
  if (port < 0 || port > 65535) {
    throw Error(ErrorCode::kInvalidArgument,
                "metrics endpoint: port " + std::to_string(port) + " is out of range");
  }
  auto server = std::make_unique<httplib::Server>();
  server->new_task_queue = [] { return new ConnectionPool(kMaxServerThreads); };
  server->set_read_timeout(kReadTimeoutSeconds, 0);
  server->set_write_timeout(kWriteTimeoutSeconds, 0);
  server->set_payload_max_length(kMaxPayloadBytes);
  server->set_keep_alive_max_count(kKeepAliveMaxRequests);
  apply_common_settings(*server);
  // A keep-alive connection holds a pool thread, and stop() waits for it, until it idles out;
  // scrapes come seconds apart, so a long keep-alive buys nothing.
  server->set_keep_alive_timeout(kKeepAliveSeconds);

  server->Get("/metrics", guarded("/metrics", [this](httplib::Response& res) {
                res.set_content(handlers_.metrics(), kMetricsContentType);
              }));
  server->Get("/healthz", guarded("/healthz", [this](httplib::Response& res) {
                if (handlers_.live()) {
                  res.set_content("ok\n", kTextContentType);
                } else {
                  res.status = 503;
                  res.set_content("not live\n", kTextContentType);
                }
              }));
  server->Get("/readyz", guarded("/readyz", [this](httplib::Response& res) {
                std::string reason = handlers_.not_ready();
                if (reason.empty()) {
                  res.set_content("ready\n", kTextContentType);
                } else {
                  if (reason.back() != '\n') reason += '\n';
                  res.status = 503;
                  res.set_content(reason, kTextContentType);
                }
              }));
  // Nothing here takes a body. httplib would buffer one whole before routing (a chunked body
  // past kMaxPayloadBytes too); streaming it into nothing keeps memory flat, and the 404 says
  // what the error handler says for any unknown route.
  const auto drop_body = [](const httplib::Request&, httplib::Response& res,
                            const httplib::ContentReader& read) {
    // A failed read set 413 (past kMaxPayloadBytes) or 400 already.
    if (read([](const char*, size_t) { return true; })) res.status = 404;
  };
  server->Post(".*", drop_body);
  server->Put(".*", drop_body);
  server->Patch(".*", drop_body);
  server->Delete(".*", drop_body);
  // Runs for every status >= 400; fills in a body only where a handler left none (the 404s).
  server->set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (res.body.empty()) {
      res.set_content(std::to_string(res.status) + " " + req.path + "\n", kTextContentType);
    }
  });

  const int bound = server_.start(std::move(server), host, port, "metrics endpoint");
  port_ = bound;
  return bound;
}

void HttpEndpoint::stop() {
  std::lock_guard lock(mutex_);
  server_.stop();
  port_ = 0;
}

}  // namespace helios::metrics
