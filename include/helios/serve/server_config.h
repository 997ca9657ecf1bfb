#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "helios/engine/serving_engine.h"

namespace helios::serve {

// `helios serve --config FILE`: every key is optional and documented in the README. Unknown
// keys are errors (a typo must not silently leave a default in place).
struct ServerConfig {
  // grpc
  std::string grpc_address = "127.0.0.1:50051";  // host:port; port 0 picks a free one
  int64_t grpc_max_message_bytes = 4 << 20;
  // http: /metrics, /healthz, /readyz
  std::string http_host = "127.0.0.1";
  int64_t http_port = 9464;  // 0 picks a free one; -1 disables the endpoint
  // openai: the OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models)
  std::string openai_host = "127.0.0.1";
  int64_t openai_port = -1;  // 0 picks a free one; -1 (the default) disables it
  // Bearer keys a client must present (Authorization: Bearer KEY); empty = no key asked.
  std::vector<std::string> openai_api_keys;
  // Connections served at once: each holds a thread from its first byte until it closes (a
  // streaming completion holds it for the whole stream); past this they wait to be accepted.
  int64_t openai_max_connections = 256;
  // A request body past this gets 413 before it is parsed.
  int64_t openai_max_body_bytes = int64_t{4} << 20;
  // model
  std::filesystem::path model_path;  // relative paths are relative to the config file
  std::string model_name;            // defaults to the directory name
  int64_t max_layers = 0;            // 0 = every layer
  std::string dtype = "float32";     // float32 | float16 | bfloat16
  std::string device = "cpu";        // cpu | cuda | cuda:N
  bool cuda_graphs = true;           // decode through CUDA graphs on a GPU (HELIOS_CUDA builds)
  // memory
  int64_t memory_budget_bytes = int64_t{256} << 20;  // weights + KV cache
  int64_t kv_block_size = 16;
  // scheduler
  engine::SchedulerLimits limits;
  int64_t max_prompt_tokens = 0;  // 0 = the model's context
  int64_t max_output_tokens = 0;  // 0 = the model's context
  int64_t max_stop_strings = 8;
  int64_t max_stop_bytes = 64;
  // early exit
  model::ExitPolicy exit_policy;
  // shutdown
  double drain_timeout_seconds = 30.0;
  // metrics
  engine::MetricBuckets buckets;
  // logging
  std::string log_level = "info";
  std::string log_format = "text";  // text | json (one JSON object per line)
  bool log_requests = true;         // one line per finished request
  // controller: "static" serves model.path fully loaded (the baseline); "helios" lets the
  // controller pick the model and depth from the SLO file's repository.
  std::string policy = "static";
  std::filesystem::path slo_file;  // required with policy "helios"; relative to the config file
  int64_t decisions_kept = 32;     // controller decisions GetStatus reports
  // energy: what helios_energy_joules_total and the controller's energy per token read.
  // "auto" measures with NVML when serving on a GPU that reports energy, else estimates from
  // process CPU time x cpu_watts_per_core; "nvml" refuses to start without the measurement.
  std::string energy_source = "auto";  // auto | nvml | cpu_estimate
  double cpu_watts_per_core = 10.0;
  // admin: bearer token the Admin service requires; empty = loopback peers only
  std::string admin_token;
  // admin.token_file: a file holding the token (a mounted Secret), read when the daemon starts;
  // relative to the config file. Exclusive with admin.token.
  std::filesystem::path admin_token_file;
  // Network limits of the gRPC server (grpc.*). A client past them: a stream over
  // max_concurrent_streams waits for a free one (HTTP/2 SETTINGS); a client pinging more often
  // than keepalive_min_ping_interval_ms without data gets GOAWAY after keepalive_max_ping_strikes;
  // a connection idle for max_connection_idle_ms or older than max_connection_age_ms gets GOAWAY
  // (calls in flight get max_connection_age_grace_ms to finish); past memory_quota_bytes gRPC
  // shrinks flow-control windows and refuses new streams.
  int64_t grpc_max_concurrent_streams = 128;                 // per connection
  int64_t grpc_memory_quota_bytes = int64_t{512} << 20;       // all of gRPC's buffers
  int64_t grpc_max_threads = 32;                              // gRPC's resource-quota threads
  int64_t grpc_keepalive_min_ping_interval_ms = 10'000;       // 10 s
  int64_t grpc_keepalive_max_ping_strikes = 2;
  int64_t grpc_max_connection_idle_ms = 10 * 60'000;          // 10 min
  int64_t grpc_max_connection_age_ms = 30 * 60'000;           // 30 min
  int64_t grpc_max_connection_age_grace_ms = 10 * 60'000;     // 10 min
  // scheduler.max_prompt_bytes: a longer prompt gets INVALID_ARGUMENT naming `prompt` before it
  // is tokenized.
  int64_t max_prompt_bytes = int64_t{1} << 20;  // 1 MiB

  // Throws helios::Error(kInvalidArgument) naming the key (e.g. "scheduler.max_batch_tokens").
  static ServerConfig from_json(const nlohmann::json& json, const std::filesystem::path& base_dir);
  // Parses `text` (JSON with comments, nested at most kMaxJsonDepth deep); every error is
  // prefixed with `source`. A relative model.path or controller.slo_file resolves against
  // `base_dir`.
  static ServerConfig parse(std::string_view text, const std::filesystem::path& base_dir,
                            std::string_view source);
  // Reads (at most kMaxJsonConfigBytes) and parses `path`.
  static ServerConfig from_file(const std::filesystem::path& path);
  void validate() const;
  nlohmann::json to_json() const;
};

}  // namespace helios::serve
