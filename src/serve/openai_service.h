#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "helios/metrics/registry.h"
#include "helios/metrics/server_thread.h"
#include "helios/serve/openai_api.h"
#include "serving_context.h"

namespace httplib {
struct Request;
struct Response;
}  // namespace httplib

namespace helios::serve {

// The OpenAI-compatible HTTP API (openai.host:openai.port): POST /v1/completions,
// POST /v1/chat/completions, GET /v1/models and /v1/models/{id}. Requests go through the same
// validation, limits, engine, metrics and request_finished events as the gRPC Inference
// service; responses and server-sent events are shaped as OpenAI's, with helios's own figures
// in a "helios" extension field (README: OpenAI-compatible API).
//
// Each connection holds a worker thread while it is served (a streaming completion for its
// whole stream); openai.max_connections bound them. A client that disconnects has its requests
// cancelled within about 50 ms: the engine frees their blocks at its next step.
class OpenAiServer {
 public:
  OpenAiServer(ServingContext& context, metrics::Registry& registry);
  ~OpenAiServer();  // stops
  OpenAiServer(const OpenAiServer&) = delete;
  OpenAiServer& operator=(const OpenAiServer&) = delete;

  // Binds host:port (0 picks a free port) and serves on background threads; returns the port.
  // Throws Error(kUnavailable) naming openai.port when it cannot bind.
  int start(const std::string& host, int port);
  // Stops accepting and waits for the connections being served (the daemon drains the engine
  // first, so their requests have finished).
  void stop();

 private:
  void completions(const httplib::Request& req, httplib::Response& res, bool chat);
  void models(const httplib::Request& req, httplib::Response& res, const std::string* id);
  // Throws ApiError 401 when keys are configured and the request carries none of them.
  void authorize(const httplib::Request& req) const;
  // The published engine and limits; throws ApiError 503 while loading or draining.
  const ServingContext::Served& ready() const;
  // The model ids a request may name, with whether each is resident now (and at what depth).
  struct ModelEntry {
    std::string id;
    bool resident = false;
    int64_t loaded_layers = 0;
  };
  std::vector<ModelEntry> model_entries(const ServingContext::Served& served) const;
  // Whether `id` is one of model_entries(), reading the controller only when no resident model
  // has that name.
  bool lists(const ServingContext::Served& served, const std::string& id) const;
  // The chat format of the model serving now (its tokenizer_config.json chat_template).
  std::optional<ChatFormat> chat_format(const std::filesystem::path& model_dir);
  void count(const char* endpoint, int status);

  ServingContext& context_;
  metrics::Family<metrics::Counter>* responses_;  // by endpoint and HTTP status
  std::mutex formats_mutex_;
  std::map<std::filesystem::path, std::optional<ChatFormat>> formats_;
  std::mutex mutex_;  // start / stop
  metrics::ServerThread server_;
};

}  // namespace helios::serve
