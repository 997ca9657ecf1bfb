#include "helios/serve/daemon.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>

#include <arpa/inet.h>
#include <grpcpp/resource_quota.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <charconv>
#include <limits>
#include <functional>
#include <thread>

#include "helios/common/exception_message.h"
#include "helios/common/dtype.h"
#include "helios/common/error.h"
#include "helios/controller/controller.h"
#include "helios/engine/memory_plan.h"
#include "helios/engine/model_instance.h"
#include "helios/engine/serving_engine.h"
#include "helios/metrics/energy_meter.h"
#include "helios/metrics/http_endpoint.h"
#include "helios/metrics/registry.h"
#include "admin_service.h"
#include "helios/cpu/blas_threads.h"
#include "inference_service.h"
#include "openai_service.h"

namespace helios::serve {

// What the daemon registers with gRPC, with the context the services share.
struct Services {
  ServingContext context;
  InferenceService inference{context};
  AdminService admin{context};
};

namespace {

constexpr double kMiB = 1024.0 * 1024.0;

// The CUDA device index of model.device ("cuda" is device 0); -1 for the CPU. A malformed index
// also gives -1 here: loading the model reports it.
int gpu_index(const std::string& device) {
  if (device == "cuda") return 0;
  if (device.rfind("cuda:", 0) != 0) return -1;
  int index = -1;
  const char* end = device.data() + device.size();
  const auto [ptr, ec] = std::from_chars(device.data() + 5, end, index);
  return ec == std::errc() && ptr == end && index >= 0 ? index : -1;
}

// A config value as a gRPC channel argument (an int), saturating.
int channel_int(int64_t value) {
  return static_cast<int>(std::clamp<int64_t>(value, 0, std::numeric_limits<int>::max()));
}

// Whether a gRPC listening address is reachable only from this host: a Unix socket,
// localhost, or a loopback address ([::1], 127.0.0.0/8).
bool loopback_only(const std::string& address) {
  if (address.rfind("unix:", 0) == 0 || address.rfind("unix-abstract:", 0) == 0) return true;
  const size_t colon = address.rfind(':');
  std::string host = address.substr(0, colon == std::string::npos ? address.size() : colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  for (char& c : host) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (host == "localhost" || host == "::1" || host == "::ffff:127.0.0.1") return true;
  in_addr ipv4{};
  return host.rfind("127.", 0) == 0 && ::inet_pton(AF_INET, host.c_str(), &ipv4) == 1;
}

// Polls `done` until it holds or `until` passes; true when it held.
bool wait_until(const std::function<bool()>& done, std::chrono::steady_clock::time_point until) {
  while (!done()) {
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

}  // namespace

void check_admin_exposure(const ServerConfig& config) {
  if (!config.admin_token.empty() || !config.admin_token_file.empty() ||
      loopback_only(config.grpc_address)) {
    return;
  }
  throw Error(ErrorCode::kInvalidArgument,
              "admin.token: must be set when grpc.address (\"" + config.grpc_address +
                  "\") is reachable from other hosts: without it the Admin service (PinModel, "
                  "Unpin, ReloadConfig) would have no authentication. Set admin.token or "
                  "admin.token_file, or listen on 127.0.0.1, [::1] or localhost");
}

void read_admin_token(ServerConfig& config) {
  if (config.admin_token_file.empty()) return;
  std::ifstream in(config.admin_token_file, std::ios::binary);
  std::string token;
  if (in) {
    // A token is one line; more than 4 KiB is not a token file.
    token.resize(4096);
    in.read(token.data(), static_cast<std::streamsize>(token.size()));
    token.resize(static_cast<size_t>(in.gcount()));
  }
  if (!in && !in.eof()) {
    throw Error(ErrorCode::kInvalidArgument, "admin.token_file: cannot read " +
                                                 config.admin_token_file.string());
  }
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) {
    token.pop_back();
  }
  if (token.empty() || token.find_first_of("\r\n") != std::string::npos) {
    throw Error(ErrorCode::kInvalidArgument,
                "admin.token_file: " + config.admin_token_file.string() +
                    " must hold the token on one line (it is empty or has several lines)");
  }
  config.admin_token = std::move(token);
}

Daemon::Daemon(ServerConfig config) : config_(std::move(config)) {}

Daemon::~Daemon() {
  try {
    shutdown();
  } catch (const std::exception& e) {
    spdlog::error("shutdown: {}", exception_message(e));
  }
}

void Daemon::start() {
  check_admin_exposure(config_);
  read_admin_token(config_);
  if (const int threads = cpu::match_blas_threads(); threads > 0) {
    spdlog::info("OpenBLAS threads: {} (as ATen's intra-op pool)", threads);
  }
  started_ = std::chrono::steady_clock::now();
  registry_ = std::make_unique<metrics::Registry>();
  services_ = std::make_unique<Services>();
  services_->context.config = &config_;
  services_->context.state = &state_;
  services_->context.started = started_;
  services_->context.rejected = &registry_->counter(
      "helios_requests_rejected_total",
      "Inference calls refused before admission, by gRPC status code.", {"code"});
  // Before the controller, which charges its profiles to the same meter.
  energy_meter_ = metrics::make_energy_meter({.source = config_.energy_source,
                                              .cpu_watts_per_core = config_.cpu_watts_per_core,
                                              .gpu_index = gpu_index(config_.device)});

  if (config_.http_port >= 0) {
    http_ = std::make_unique<metrics::HttpEndpoint>(metrics::HttpEndpoint::Handlers{
        .metrics = [this] { return registry_->render(); },
        .live = [this] { return state_.load() != ServerState::kStopped; },
        .not_ready =
            [this]() -> std::string {
          switch (state_.load()) {
            case ServerState::kServing: return "";
            case ServerState::kLoading: return "loading the model";
            case ServerState::kDraining: return "draining for shutdown";
            case ServerState::kStopped: return "stopped";
          }
          return "unknown state";
        }});
    http_port_ = http_->start(config_.http_host, static_cast<int>(config_.http_port));
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(config_.grpc_address, grpc::InsecureServerCredentials(), &grpc_port_);
  builder.SetMaxReceiveMessageSize(static_cast<int>(config_.grpc_max_message_bytes));
  // The network limits of server_config.h (grpc.*): streams per connection, keepalive pings
  // the server tolerates, connection idle time and age, gRPC's memory and threads.
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             channel_int(config_.grpc_max_concurrent_streams));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             channel_int(config_.grpc_keepalive_min_ping_interval_ms));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES,
                             channel_int(config_.grpc_keepalive_max_ping_strikes));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                             channel_int(config_.grpc_max_connection_idle_ms));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                             channel_int(config_.grpc_max_connection_age_ms));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                             channel_int(config_.grpc_max_connection_age_grace_ms));
  grpc::ResourceQuota quota("helios-grpc");
  quota.Resize(static_cast<size_t>(config_.grpc_memory_quota_bytes));
  quota.SetMaxThreads(channel_int(config_.grpc_max_threads));
  builder.SetResourceQuota(quota);
  builder.RegisterService(&services_->inference);
  builder.RegisterService(&services_->admin);
  server_ = builder.BuildAndStart();
  if (!server_ || grpc_port_ == 0) {
    throw Error(ErrorCode::kUnavailable,
                "grpc.address: cannot listen on " + config_.grpc_address);
  }
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  health->SetServingStatus(false);
  if (config_.openai_port >= 0) {
    openai_ = std::make_unique<OpenAiServer>(services_->context, *registry_);
    openai_port_ = openai_->start(config_.openai_host, static_cast<int>(config_.openai_port));
  }
  spdlog::info("listening: gRPC on port {}, HTTP on {}, OpenAI API on {}", grpc_port_,
               http_ ? config_.http_host + ":" + std::to_string(http_port_) : "(disabled)",
               openai_ ? config_.openai_host + ":" + std::to_string(openai_port_) : "(disabled)");

  load_model();
  export_energy();

  state_.store(ServerState::kServing);
  health->SetServingStatus(true);
  spdlog::info("serving");
}

void Daemon::load_model() {
  const auto t0 = std::chrono::steady_clock::now();
  model::LoadOptions options;
  options.max_layers = config_.max_layers;
  options.dtype = parse_dtype(config_.dtype, DtypeSpelling::kTorch, "model.dtype");
  options.device = at::Device(config_.device);
  options.cuda_graphs = config_.cuda_graphs;

  engine::EngineOptions engine_options;
  engine_options.limits = config_.limits;
  engine_options.kv_block_size = config_.kv_block_size;
  engine_options.exit_policy = config_.exit_policy;
  engine_options.log_requests = config_.log_requests;
  engine_options.buckets = config_.buckets;
  if (config_.policy == "helios") {
    controller::ControllerOptions controller_options;
    controller_options.slo_file = config_.slo_file;
    controller_options.memory_budget_bytes = config_.memory_budget_bytes;
    controller_options.kv_block_size = config_.kv_block_size;
    controller_options.max_running = config_.limits.max_running;
    controller_options.load = options;
    controller_options.energy_meter = energy_meter_;
    controller_options.decisions_kept = static_cast<size_t>(config_.decisions_kept);
    controller_ = std::make_unique<controller::Controller>(controller_options, registry_.get());
    controller_->prepare();
    model_ = controller_->initial_model();
    engine_options.model_name = controller_->initial_model_name();
    engine_options.kv_blocks = controller_->initial_kv_blocks();
    engine_options.telemetry = controller_.get();
  } else {
    model_ = engine::ModelInstance::load(config_.model_path, options);
    const std::string name = config_.model_name.empty()
                                 ? config_.model_path.lexically_normal().filename().string()
                                 : config_.model_name;
    engine_options.model_name = name.empty() ? "model" : name;
    engine_options.kv_blocks = engine::kv_blocks_for_budget(
        *model_, config_.memory_budget_bytes, config_.kv_block_size, "memory.budget_mib");
  }
  engine_ = std::make_unique<engine::ServingEngine>(model_, engine_options, registry_.get());
  engine_->start();
  if (controller_) controller_->start(engine_.get());

  // Handlers may run already (they see kLoading): everything they need of the model is
  // published at once, and never changes after.
  ServingContext::Served served;
  served.engine = engine_.get();
  served.controller = controller_.get();
  const int64_t context_length = model_->config().max_position_embeddings;
  served.limits.context_length = context_length;
  served.limits.max_prompt_tokens = config_.max_prompt_tokens > 0
                                        ? std::min(config_.max_prompt_tokens, context_length)
                                        : context_length;
  served.limits.max_output_tokens =
      config_.max_output_tokens > 0 ? config_.max_output_tokens : context_length;
  served.limits.max_prompt_bytes = config_.max_prompt_bytes;
  served.limits.max_stop_strings = config_.max_stop_strings;
  served.limits.max_stop_bytes = config_.max_stop_bytes;
  served.limits.priority_levels = config_.limits.priority_levels;
  served.limits.default_priority = config_.limits.default_priority;
  services_->context.publish(served);

  const engine::EngineStats stats = engine_->stats();
  spdlog::info(
      "policy {}: model {} from {}: {}/{} layers, {:.1f} MiB weights ({} {}), loaded in {:.2f} s; "
      "KV cache {} blocks x {} tokens ({:.1f} MiB, {} full-context sequences) in a {:.0f} MiB "
      "budget",
      config_.policy, engine_options.model_name, model_->loaded().dir.string(),
      model_->transformer().loaded_layers(), model_->config().num_hidden_layers,
      model_->loaded().weights.resident_bytes() / kMiB, config_.dtype, config_.device,
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
      stats.kv_blocks_total, config_.kv_block_size, stats.kv_cache_bytes / kMiB,
      stats.kv_sequences, config_.memory_budget_bytes / kMiB);
  // Under the controller the engine and the controller hold the served model; keeping the
  // initial one here would pin its memory after a switch.
  if (controller_) model_.reset();
}

void Daemon::export_energy() {
  const std::vector<std::string> source = {energy_meter_->source()};
  metrics::Counter& total =
      registry_
          ->counter("helios_energy_joules_total",
                    "Energy consumed since the daemon started. source=\"nvml\" is the GPU's own "
                    "counter and covers the whole GPU (other processes included); "
                    "source=\"cpu_estimate\" is an estimate: process CPU seconds x "
                    "energy.cpu_watts_per_core.",
                    {"source"})
          .labels(source);
  metrics::Gauge& per_token =
      registry_
          ->gauge("helios_energy_joules_per_generated_token",
                  "helios_energy_joules_total over the tokens generated since the daemon "
                  "started (0 before the first). source=\"nvml\": the whole GPU's counter; "
                  "source=\"cpu_estimate\": an estimate, process CPU seconds x "
                  "energy.cpu_watts_per_core.",
                  {"source"})
          .labels(source);
  // The engine registered it; absent only if the engine kept no metrics.
  metrics::Family<metrics::Counter>* tokens =
      registry_->find_counter("helios_generation_tokens_total");
  registry_->on_collect(
      [meter = energy_meter_, &total, &per_token, tokens] {
        // The counter itself holds what was counted (a hook must keep no state of its own:
        // the registry runs copies of it). The meter never decreases, so the counter follows
        // it by non-negative steps.
        const double joules = meter->joules();
        total.inc(std::max(0.0, joules - total.value()));
        const double generated = tokens != nullptr ? tokens->get().value() : 0.0;
        per_token.set(generated > 0 ? total.value() / generated : 0.0);
      });
}

void Daemon::shutdown() {
  if (state_.load() == ServerState::kDraining) {
    // Asked again while draining: stop waiting for the requests in flight.
    force_.store(true);
  }
  std::lock_guard lock(shutdown_mutex_);
  if (shut_down_) return;
  shut_down_ = true;
  state_.store(ServerState::kDraining);
  if (server_) server_->GetHealthCheckService()->SetServingStatus(false);
  const auto t0 = std::chrono::steady_clock::now();
  // No model switches while draining: the served model finishes what is in flight.
  if (controller_) controller_->stop();
  if (engine_) {
    engine_->close();
    const auto drain_until =
        t0 + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                 std::chrono::duration<double>(config_.drain_timeout_seconds));
    spdlog::info("draining {} requests in flight (timeout {} s)", engine_->in_flight(),
                 config_.drain_timeout_seconds);
    const auto drained = [this] { return engine_->in_flight() == 0; };
    wait_until([&] { return drained() || force_.load(); }, drain_until);
    if (!drained()) {
      spdlog::warn("drain timeout: cancelling {} requests", engine_->in_flight());
      engine_->cancel_all();
      wait_until(drained, std::chrono::steady_clock::now() + std::chrono::seconds(5));
    }
  }
  // Lets the reactors write their last messages. gRPC's own Shutdown(deadline) would wait out
  // the whole deadline while any client keeps a connection open, so wait for our calls here
  // and then shut down at once (cancelling only watches and the like).
  if (services_) {
    wait_until([this] { return services_->context.open_calls.load() == 0; },
               std::chrono::steady_clock::now() + std::chrono::seconds(5));
    // An admin action still running (a long load) is waited for: its thread uses the
    // controller, which goes away with the daemon.
    services_->admin.stop();
  }
  if (server_) server_->Shutdown(std::chrono::system_clock::now());
  if (engine_) engine_->stop();
  // Its handlers returned once the engine finished their requests.
  if (openai_) openai_->stop();
  state_.store(ServerState::kStopped);
  if (http_) http_->stop();
  if (server_) server_->Wait();
  spdlog::info("stopped after {:.2f} s of draining",
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

}  // namespace helios::serve
