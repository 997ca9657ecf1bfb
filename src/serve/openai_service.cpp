// The OpenAI-compatible HTTP API: request admission, waiting on the engine, responses and
// server-sent events in OpenAI's shapes.
#include "openai_service.h"

#include <dirent.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "../metrics/http_server.h"
#include "helios/common/exception_message.h"
#include "helios/common/files.h"
#include "helios/common/json_limits.h"
#include "helios/controller/controller.h"
#include "helios/engine/serving_engine.h"
#include "helios/serve/request_validation.h"

namespace helios::serve {
namespace {

// Responses keep OpenAI's key order (id, object, created, model, choices, usage).
using json = nlohmann::ordered_json;
using engine::Finish;

constexpr const char* kJson = "application/json";
// How often a waiting handler looks for a client that went away.
constexpr auto kPollInterval = std::chrono::milliseconds(50);
// A client silent this long while sending a request is cut off; one that reads nothing of a
// response for this long is too (its requests are cancelled).
constexpr time_t kReadTimeoutSeconds = 30;
constexpr time_t kWriteTimeoutSeconds = 30;
// A keep-alive connection idle this long is closed (a stop waits for it at most this long).
constexpr time_t kKeepAliveSeconds = 5;
constexpr size_t kKeepAliveMaxRequests = 1000;

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void respond(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), kJson);
}

std::string sse(const json& body) {
  return "data: " + body.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

const char* finish_reason(Finish finish) {
  switch (finish) {
    case Finish::kStop: return "stop";
    case Finish::kLength: return "length";
    default: return nullptr;
  }
}

// The inode of the TCP socket from local port `local` to remote port `remote`, from the
// kernel's table of TCP sockets (/proc/net/tcp, tcp6); 0 when none.
unsigned long tcp_socket_inode(int local, int remote) {
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(table);
    std::string line;
    std::getline(in, line);  // the header
    while (std::getline(in, line)) {
      // "  sl  local_address rem_address   st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout
      // inode"
      std::istringstream fields(line);
      std::string slot, local_address, remote_address, state, queues, timer, retransmits, uid,
          timeout;
      unsigned long inode = 0;
      if (!(fields >> slot >> local_address >> remote_address >> state >> queues >> timer >>
            retransmits >> uid >> timeout >> inode)) {
        continue;
      }
      const auto port_of = [](const std::string& address) {
        const size_t colon = address.rfind(':');
        return colon == std::string::npos
                   ? -1
                   : static_cast<int>(std::strtol(address.c_str() + colon + 1, nullptr, 16));
      };
      if (port_of(local_address) == local && port_of(remote_address) == remote) return inode;
    }
  }
  return 0;
}

// The socket of the connection `req` came on. cpp-httplib 0.11 does not hand it to handlers;
// without it a handler waiting on the engine could not tell that its client went away. The
// kernel's TCP table gives the connection's socket inode from its two ports, and
// /proc/self/fd the descriptor holding that inode: no other thread's descriptor is touched
// (their connections are being accepted and closed concurrently). -1 when not found.
int connection_socket(const httplib::Request& req) {
  const unsigned long inode = tcp_socket_inode(req.local_port, req.remote_port);
  if (inode == 0) return -1;
  const std::string wanted = "socket:[" + std::to_string(inode) + "]";
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int found = -1;
  while (const dirent* entry = ::readdir(dir)) {
    char target[64] = {};
    const std::string path = std::string("/proc/self/fd/") + entry->d_name;
    const ssize_t length = ::readlink(path.c_str(), target, sizeof(target) - 1);
    if (length > 0 && wanted == std::string_view(target, static_cast<size_t>(length))) {
      found = std::atoi(entry->d_name);
      break;
    }
  }
  ::closedir(dir);
  return found;
}

// True once the client closed its side of the connection (or it broke).
bool client_gone(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, POLLRDHUP, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

// Wakes a handler when any of its requests' channels has something.
class Waiter final : public engine::ResponseChannel::Listener {
 public:
  void on_update() override {
    {
      std::lock_guard lock(mutex_);
      signalled_ = true;
    }
    ready_.notify_all();
  }
  void wait() {
    std::unique_lock lock(mutex_);
    ready_.wait_for(lock, kPollInterval, [this] { return signalled_; });
    signalled_ = false;
  }

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  bool signalled_ = false;
};

// The engine requests of one HTTP request (one per prompt) and what each has produced.
struct Batch {
  std::vector<std::shared_ptr<engine::Request>> requests;
  std::vector<engine::Update> results;  // merged so far
  std::vector<bool> done;
  std::shared_ptr<Waiter> waiter = std::make_shared<Waiter>();
  engine::ServingEngine* engine = nullptr;

  void cancel() {
    for (const auto& request : requests) request->cancel();
    if (engine != nullptr) engine->wake();
  }
  bool all_done() const {
    return std::all_of(done.begin(), done.end(), [](bool d) { return d; });
  }
  // Takes what each channel has: the new part per request (empty updates where nothing came).
  std::vector<engine::Update> take() {
    std::vector<engine::Update> fresh(requests.size());
    for (size_t i = 0; i < requests.size(); ++i) {
      if (done[i] || !requests[i]->channel().take(fresh[i])) continue;
      if (fresh[i].finished()) done[i] = true;
    }
    return fresh;
  }
};

json extension_of(const engine::Update& final, const std::vector<int32_t>& exit_layers,
                  size_t index, bool scored) {
  const engine::Usage& u = final.usage;
  return {{"index", index},
          {"model", u.model},
          {"loaded_layers", u.loaded_layers},
          {"exit_layers", exit_layers},
          {"mean_exit_layer", u.mean_exit_layer},
          {"time_to_first_token_ms", u.time_to_first_token_ms},
          {"queue_time_ms", u.queue_time_ms},
          {"total_time_ms", u.total_time_ms},
          {"preemptions", u.preemptions},
          {"priority", u.priority},
          {"prompt_perplexity",
           scored && u.prompt_scored_tokens > 0 ? json(u.prompt_perplexity) : json()}};
}

json usage_of(const std::vector<engine::Update>& finals) {
  int64_t prompt = 0, completion = 0;
  for (const engine::Update& f : finals) {
    prompt += f.usage.prompt_tokens;
    completion += f.usage.completion_tokens;
  }
  return {{"prompt_tokens", prompt},
          {"completion_tokens", completion},
          {"total_tokens", prompt + completion}};
}

// The error a request that finished without completing answers with.
std::optional<ApiError> failure_of(const engine::Update& final) {
  switch (final.finish) {
    case Finish::kStop:
    case Finish::kLength: return std::nullopt;
    case Finish::kError:
      if (final.error_code == ErrorCode::kInvalidArgument)
        return ApiError(400, final.error, field_of_message(final.error));
      return ApiError(500, "engine error: " + final.error);
    case Finish::kDeadline: return ApiError(504, "deadline exceeded");
    default: return ApiError(503, "the server shut down before the request finished");
  }
}

}  // namespace

OpenAiServer::OpenAiServer(ServingContext& context, metrics::Registry& registry)
    : context_(context),
      responses_(&registry.counter("helios_openai_responses_total",
                                   "Responses of the OpenAI-compatible API, by endpoint and HTTP "
                                   "status.",
                                   {"endpoint", "status"})) {}

OpenAiServer::~OpenAiServer() {
  stop();
}

void OpenAiServer::count(const char* endpoint, int status) {
  responses_->labels({endpoint, std::to_string(status)}).inc();
}

void OpenAiServer::authorize(const httplib::Request& req) const {
  const std::vector<std::string>& keys = context_.config->openai_api_keys;
  if (keys.empty()) return;
  const std::string header = req.get_header_value("Authorization");
  constexpr std::string_view kBearer = "Bearer ";
  if (header.size() > kBearer.size() && header.compare(0, kBearer.size(), kBearer) == 0) {
    const std::string_view key = std::string_view(header).substr(kBearer.size());
    bool match = false;
    for (const std::string& k : keys) {
      // Every byte compared whatever the first difference, so timing tells nothing.
      unsigned diff = k.size() == key.size() ? 0u : 1u;
      for (size_t i = 0; i < key.size(); ++i) {
        diff |= static_cast<unsigned>(static_cast<unsigned char>(key[i]) ^
                                      static_cast<unsigned char>(k[i % k.size()]));
      }
      match |= diff == 0;
    }
    if (match) return;
    throw ApiError(401, "Incorrect API key provided.", {}, "invalid_api_key",
                   "invalid_request_error");
  }
  throw ApiError(401,
                 "You didn't provide an API key: send it as Authorization: Bearer KEY "
                 "(openai.api_keys).",
                 {}, "invalid_api_key", "invalid_request_error");
}

const ServingContext::Served& OpenAiServer::ready() const {
  switch (context_.state->load()) {
    case ServerState::kLoading: throw ApiError(503, "the model is still loading");
    case ServerState::kDraining:
    case ServerState::kStopped: throw ApiError(503, "the server is shutting down");
    case ServerState::kServing: break;
  }
  return *context_.served();
}

std::vector<OpenAiServer::ModelEntry> OpenAiServer::model_entries(
    const ServingContext::Served& served) const {
  std::vector<ModelEntry> entries;
  const engine::EngineStats stats = served.engine->stats();
  for (const engine::MemberStats& member : stats.members) {
    entries.push_back({member.name, true, member.loaded_layers});
  }
  if (served.controller != nullptr) {
    for (const std::string& name : served.controller->status().candidates) {
      const bool listed = std::any_of(entries.begin(), entries.end(),
                                      [&](const ModelEntry& e) { return e.id == name; });
      if (!listed) entries.push_back({name, false, 0});
    }
  }
  return entries;
}

bool OpenAiServer::lists(const ServingContext::Served& served, const std::string& id) const {
  // The resident models first: the controller's status (the repository's candidates) is a
  // copy of its whole state, read only for a request naming a model that does not serve.
  for (const engine::MemberStats& member : served.engine->stats().members) {
    if (member.name == id) return true;
  }
  if (served.controller == nullptr) return false;
  const std::vector<std::string> candidates = served.controller->status().candidates;
  return std::find(candidates.begin(), candidates.end(), id) != candidates.end();
}

std::optional<ChatFormat> OpenAiServer::chat_format(const std::filesystem::path& model_dir) {
  std::lock_guard lock(formats_mutex_);
  if (const auto it = formats_.find(model_dir); it != formats_.end()) return it->second;
  std::optional<ChatFormat> format;
  const auto path = model_dir / "tokenizer_config.json";
  std::error_code ec;
  if (std::filesystem::is_regular_file(path, ec)) {
    try {
      const nlohmann::json config = parse_json(read_json_file(path), path.string());
      if (config.is_object() && config.contains("chat_template") &&
          config.at("chat_template").is_string()) {
        format = detect_chat_format(config.at("chat_template").get_ref<const std::string&>());
      }
    } catch (const std::exception& e) {
      spdlog::warn("{}: {}", path.string(), exception_message(e));
    }
  }
  formats_.emplace(model_dir, format);
  return format;
}

void OpenAiServer::models(const httplib::Request& req, httplib::Response& res,
                          const std::string* id) {
  const char* endpoint = "/v1/models";
  try {
    authorize(req);
    const ServingContext::Served& served = ready();
    const int64_t created = std::chrono::duration_cast<std::chrono::seconds>(
                                std::chrono::system_clock::now().time_since_epoch() -
                                (std::chrono::steady_clock::now() - context_.started))
                                .count();
    json data = json::array();
    for (const ModelEntry& entry : model_entries(served)) {
      json model = {{"id", entry.id},
                    {"object", "model"},
                    {"created", created},
                    {"owned_by", "helios"},
                    {"helios", {{"resident", entry.resident}}}};
      if (entry.resident) model["helios"]["loaded_layers"] = entry.loaded_layers;
      if (id != nullptr && entry.id == *id) {
        respond(res, 200, model);
        count(endpoint, 200);
        return;
      }
      data.push_back(std::move(model));
    }
    if (id != nullptr) {
      throw ApiError(404, "The model '" + id->substr(0, 128) + "' does not exist", "model",
                     "model_not_found");
    }
    respond(res, 200, {{"object", "list"}, {"data", std::move(data)}});
    count(endpoint, 200);
  } catch (const ApiError& e) {
    respond(res, e.status, e.body());
    count(endpoint, e.status);
  }
}

void OpenAiServer::completions(const httplib::Request& req, httplib::Response& res, bool chat) {
  const char* endpoint = chat ? "/v1/chat/completions" : "/v1/completions";
  auto batch = std::make_shared<Batch>();
  OpenAiRequest parsed;
  const std::string id = server_request_id(chat ? "chatcmpl" : "cmpl");
  try {
    authorize(req);
    const ServingContext::Served& served = ready();
    parsed = parse_openai_request(req.body, chat);
    if (!lists(served, parsed.model)) {
      throw ApiError(404,
                     "The model '" + parsed.model.substr(0, 128) +
                         "' does not exist (GET /v1/models lists the models served)",
                     "model", "model_not_found");
    }
    engine::ServingEngine& engine = *served.engine;
    const auto model = engine.model();
    if (chat) {
      const std::optional<ChatFormat> format = chat_format(model->loaded().dir);
      if (!format) {
        throw ApiError(400,
                       "messages: the model serving (" + engine.stats().model_name +
                           ") has no chat template helios can render (a tokenizer_config.json "
                           "chat_template in ChatML); use /v1/completions",
                       "messages");
      }
      const RenderedChat rendered = render_chat(parsed.messages, *format);
      v1::GenerateRequest& request = parsed.prompts.front();
      request.set_prompt(rendered.prompt);
      request.add_stop(rendered.stop);
      if (request.max_tokens() == 0) {
        request.set_max_tokens(static_cast<uint32_t>(std::min<int64_t>(
            served.limits.max_output_tokens, std::numeric_limits<uint32_t>::max())));
      }
    }
    batch->engine = &engine;
    const bool list = parsed.prompts.size() > 1;
    for (size_t i = 0; i < parsed.prompts.size(); ++i) {
      const v1::GenerateRequest& request = parsed.prompts[i];
      engine.refuse_if_queue_full(requested_priority(request, served.limits));
      engine::RequestSpec spec;
      try {
        spec = validate_request(request, served.limits, model->tokenizer());
      } catch (const Error& e) {
        std::string message = e.what();
        if (list && message.rfind("prompt:", 0) == 0) {
          message = fmt::format("prompt[{}]:{}", i, message.substr(7));
        }
        throw ApiError(400, message, field_of_message(e.what()));
      }
      spec.id = list ? fmt::format("{}-{}", id, i) : id;
      auto admitted = std::make_shared<engine::Request>(std::move(spec));
      admitted->channel().set_listener(batch->waiter);
      engine.submit(admitted);
      batch->requests.push_back(std::move(admitted));
    }
  } catch (const ApiError& e) {
    batch->cancel();
    respond(res, e.status, e.body());
    count(endpoint, e.status);
    return;
  } catch (const Error& e) {
    batch->cancel();
    const ApiError api = to_api_error(e);
    respond(res, api.status, api.body());
    count(endpoint, api.status);
    return;
  } catch (const std::exception& e) {
    batch->cancel();
    const ApiError api(500, exception_message(e));
    respond(res, api.status, api.body());
    count(endpoint, api.status);
    return;
  }
  batch->results.resize(batch->requests.size());
  batch->done.assign(batch->requests.size(), false);
  const int fd = connection_socket(req);
  const int64_t created = unix_now();
  const std::string model_name = parsed.model;
  const bool scored = parsed.prompts.front().score_prompt();
  std::vector<std::vector<int32_t>> exits(batch->requests.size());
  const auto record = [&exits](size_t i, const engine::Update& update) {
    for (const engine::TokenDetail& t : update.tokens) exits[i].push_back(t.exit.exit_layer);
  };

  if (!parsed.stream) {
    while (!batch->all_done()) {
      batch->waiter->wait();
      std::vector<engine::Update> fresh = batch->take();
      for (size_t i = 0; i < fresh.size(); ++i) {
        record(i, fresh[i]);
        batch->results[i].merge(std::move(fresh[i]));
      }
      if (!batch->all_done() && client_gone(fd)) {
        batch->cancel();
        spdlog::debug("{}: client went away; requests cancelled", id);
        res.status = 499;
        count(endpoint, 499);
        return;
      }
    }
    for (const engine::Update& final : batch->results) {
      if (const std::optional<ApiError> failure = failure_of(final)) {
        respond(res, failure->status, failure->body());
        count(endpoint, failure->status);
        return;
      }
    }
    json choices = json::array(), extension = json::array();
    for (size_t i = 0; i < batch->results.size(); ++i) {
      const engine::Update& final = batch->results[i];
      // OpenAI's key order.
      json choice =
          chat ? json{{"index", i}, {"message", {{"role", "assistant"}, {"content", final.text}}}}
               : json{{"text", final.text}, {"index", i}};
      choice["logprobs"] = nullptr;
      choice["finish_reason"] = finish_reason(final.finish);
      choices.push_back(std::move(choice));
      extension.push_back(extension_of(final, exits[i], i, scored));
    }
    respond(res, 200,
            {{"id", id},
             {"object", chat ? "chat.completion" : "text_completion"},
             {"created", created},
             {"model", model_name},
             {"choices", std::move(choices)},
             {"usage", usage_of(batch->results)},
             {"helios", {{"choices", std::move(extension)}}}});
    count(endpoint, 200);
    return;
  }

  // Streaming: every piece of text as it comes, a last chunk per choice with its finish reason
  // and helios's figures, the usage when asked, then [DONE].
  count(endpoint, 200);
  const bool include_usage = parsed.include_usage;
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [batch, fd, id, created, model_name, chat, include_usage, scored, exits = std::move(exits)](
          size_t, httplib::DataSink& sink) mutable {
        const auto chunk = [&](json choices) {
          json body = {{"id", id},
                       {"object", chat ? "chat.completion.chunk" : "text_completion"},
                       {"created", created},
                       {"model", model_name},
                       {"choices", std::move(choices)}};
          if (include_usage) body["usage"] = nullptr;
          return body;
        };
        const auto write = [&](const std::string& text) {
          return sink.write(text.data(), text.size());
        };
        if (chat) {
          // OpenAI's first chat chunk carries the role.
          if (!write(sse(chunk(json::array({{{"index", 0},
                                             {"delta", {{"role", "assistant"}, {"content", ""}}},
                                             {"logprobs", nullptr},
                                             {"finish_reason", nullptr}}}))))) {
            batch->cancel();
            return false;
          }
        }
        while (!batch->all_done()) {
          batch->waiter->wait();
          std::vector<engine::Update> fresh = batch->take();
          for (size_t i = 0; i < fresh.size(); ++i) {
            engine::Update& update = fresh[i];
            for (const engine::TokenDetail& t : update.tokens)
              exits[i].push_back(t.exit.exit_layer);
            if (update.empty()) continue;
            const bool finished = update.finished();
            if (finished) {
              if (const std::optional<ApiError> failure = failure_of(update)) {
                batch->cancel();
                write(sse(failure->body()));
                write("data: [DONE]\n\n");
                sink.done();
                return true;
              }
            }
            if (update.text.empty() && !finished) continue;
            json choice =
                chat ? json{{"index", i},
                            {"delta",
                             update.text.empty() ? json::object() : json{{"content", update.text}}}}
                     : json{{"text", update.text}, {"index", i}};
            choice["logprobs"] = nullptr;
            choice["finish_reason"] = finished ? json(finish_reason(update.finish)) : json();
            json body = chunk(json::array({std::move(choice)}));
            if (finished) {
              body["helios"] = {
                  {"choices", json::array({extension_of(update, exits[i], i, scored)})}};
              batch->results[i] = std::move(update);
            }
            if (!write(sse(body))) {
              batch->cancel();
              return false;
            }
          }
          if (!batch->all_done() && client_gone(fd)) {
            batch->cancel();
            return false;
          }
        }
        if (include_usage) {
          json body = chunk(json::array());
          body["usage"] = usage_of(batch->results);
          if (!write(sse(body))) return false;
        }
        write("data: [DONE]\n\n");
        sink.done();
        return true;
      },
      [batch](bool success) {
        if (!success) batch->cancel();
      });
}

int OpenAiServer::start(const std::string& host, int port) {
  std::lock_guard lock(mutex_);
  if (server_.serving()) throw Error(ErrorCode::kFailedPrecondition, "openai: already serving");
  auto server = std::make_unique<httplib::Server>();
  const size_t threads = static_cast<size_t>(context_.config->openai_max_connections);
  server->new_task_queue = [threads] { return new metrics::ConnectionPool(threads); };
  server->set_read_timeout(kReadTimeoutSeconds, 0);
  server->set_write_timeout(kWriteTimeoutSeconds, 0);
  server->set_payload_max_length(static_cast<size_t>(context_.config->openai_max_body_bytes));
  server->set_keep_alive_max_count(kKeepAliveMaxRequests);
  server->set_keep_alive_timeout(kKeepAliveSeconds);
  metrics::apply_common_settings(*server);
  server->Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    completions(req, res, false);
  });
  server->Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    completions(req, res, true);
  });
  server->Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
    models(req, res, nullptr);
  });
  server->Get("/v1/models/(.+)", [this](const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.matches[1];
    models(req, res, &id);
  });
  // Every status >= 400 a handler left without a body (404, 405, 413 past
  // openai.max_body_bytes) gets OpenAI's error object.
  server->set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty() || res.status == 499) return;
    std::string message =
        std::to_string(res.status) + " " + req.method + " " + req.path.substr(0, 128);
    if (res.status == 413) {
      message = fmt::format("request body exceeds openai.max_body_bytes ({} bytes)",
                            context_.config->openai_max_body_bytes);
    } else if (res.status == 404) {
      message = "no route " + req.method + " " + req.path.substr(0, 128) +
                " (POST /v1/completions, POST /v1/chat/completions, GET /v1/models)";
    }
    respond(res, res.status, ApiError(res.status, message).body());
  });
  return server_.start(std::move(server), host, port, "openai.port");
}

void OpenAiServer::stop() {
  std::lock_guard lock(mutex_);
  server_.stop();
}

}  // namespace helios::serve
