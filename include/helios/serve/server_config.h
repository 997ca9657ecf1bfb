#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <filesystem>
#include <string>

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

  // Throws helios::Error(kInvalidArgument) naming the key (e.g. "scheduler.max_batch_tokens").
  static ServerConfig from_json(const nlohmann::json& json, const std::filesystem::path& base_dir);
  static ServerConfig from_file(const std::filesystem::path& path);
  void validate() const;
  nlohmann::json to_json() const;
};

}  // namespace helios::serve
