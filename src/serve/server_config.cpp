#include "helios/serve/server_config.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <set>

#include "helios/common/error.h"
#include "helios/common/json_limits.h"
#include "helios/common/json_section.h"
#include "helios/metrics/registry.h"

namespace helios::serve {
namespace {

using nlohmann::json;

[[noreturn]] void fail(const std::string& key, const std::string& what) {
  JsonSection::fail(key, what);
}

// The shared reader plus the server config's range-checked and enumerated values.
class Section : public JsonSection {
 public:
  using JsonSection::JsonSection;

  void number(const std::string& key, double& out, double min, double max) {
    double value = 0;
    if (!JsonSection::number(key, value)) return;
    if (value < min || value > max) {
      fail(path(key), "must be in [" + fmt::format("{}", min) + ", " + fmt::format("{}", max) +
                          "], got " + fmt::format("{}", value));
    }
    out = value;
  }
  void one_of(const std::string& key, std::string& out, const std::set<std::string>& allowed) {
    string(key, out);
    if (!allowed.contains(out)) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      fail(path(key), "must be one of " + list + ", got \"" + out + "\"");
    }
  }
  void buckets(const std::string& key, std::vector<double>& out) {
    const json* v = find(key);
    if (v == nullptr) return;
    if (!v->is_array()) fail(path(key), "must be a list of numbers");
    std::vector<double> bounds;
    for (const json& b : *v) {
      if (!b.is_number()) fail(path(key), "must be a list of numbers");
      bounds.push_back(b.get<double>());
    }
    metrics::validate_buckets(bounds, path(key));
    out = std::move(bounds);
  }
};

constexpr int64_t kMiB = int64_t{1} << 20;

}  // namespace

ServerConfig ServerConfig::from_json(const json& root, const std::filesystem::path& base_dir) {
  if (!root.is_object()) fail("config", "must be a JSON object");
  static const std::set<std::string> kSections = {"grpc",      "http",       "model",
                                                  "memory",    "scheduler",  "early_exit",
                                                  "shutdown",  "metrics",    "logging",
                                                  "controller", "energy",    "admin",
                                                  "openai"};
  for (const auto& [key, value] : root.items()) {
    if (!kSections.contains(key)) fail(key, "unknown section");
  }
  ServerConfig c;

  Section grpc(root, "grpc");
  grpc.string("address", c.grpc_address);
  grpc.integer("max_message_bytes", c.grpc_max_message_bytes, 1024, int64_t{1} << 30);
  grpc.integer("max_concurrent_streams", c.grpc_max_concurrent_streams, 1, 65535);
  double quota_mib = static_cast<double>(c.grpc_memory_quota_bytes) / kMiB;
  grpc.number("memory_quota_mib", quota_mib, 16.0, 1 << 20);
  c.grpc_memory_quota_bytes = static_cast<int64_t>(quota_mib * kMiB);
  grpc.integer("max_threads", c.grpc_max_threads, 2, 4096);
  grpc.integer("keepalive_min_ping_interval_ms", c.grpc_keepalive_min_ping_interval_ms, 0,
               int64_t{1} << 31);
  grpc.integer("keepalive_max_ping_strikes", c.grpc_keepalive_max_ping_strikes, 0, 1000);
  grpc.integer("max_connection_idle_ms", c.grpc_max_connection_idle_ms, 1000, int64_t{1} << 31);
  grpc.integer("max_connection_age_ms", c.grpc_max_connection_age_ms, 1000, int64_t{1} << 31);
  grpc.integer("max_connection_age_grace_ms", c.grpc_max_connection_age_grace_ms, 0,
               int64_t{1} << 31);
  grpc.check_unknown();

  Section http(root, "http");
  http.string("host", c.http_host);
  http.integer("port", c.http_port, -1, 65535);
  http.check_unknown();

  Section openai(root, "openai");
  openai.string("host", c.openai_host);
  openai.integer("port", c.openai_port, -1, 65535);
  if (const json* keys = openai.find("api_keys"); keys != nullptr && !keys->is_null()) {
    if (!keys->is_array()) fail("openai.api_keys", "must be an array of strings");
    for (size_t i = 0; i < keys->size(); ++i) {
      const json& key = (*keys)[i];
      const std::string name = "openai.api_keys[" + std::to_string(i) + "]";
      if (!key.is_string() || key.get_ref<const std::string&>().empty()) {
        fail(name, "must be a non-empty string");
      }
      for (const char ch : key.get_ref<const std::string&>()) {
        if (static_cast<unsigned char>(ch) <= 0x20 || ch == 0x7f) {
          fail(name, "must not contain spaces or control characters");
        }
      }
      c.openai_api_keys.push_back(key.get<std::string>());
    }
  }
  openai.integer("max_connections", c.openai_max_connections, 1, 4096);
  openai.integer("max_body_bytes", c.openai_max_body_bytes, 1024, int64_t{1} << 30);
  openai.check_unknown();

  Section model(root, "model");
  std::string path;
  model.string("path", path);
  if (!path.empty()) {
    c.model_path = std::filesystem::path(path).is_absolute() ? std::filesystem::path(path)
                                                             : base_dir / path;
  }
  model.string("name", c.model_name);
  model.integer("max_layers", c.max_layers, 0, 4096);
  model.one_of("dtype", c.dtype, {"float32", "float16", "bfloat16"});
  model.string("device", c.device);
  model.boolean("cuda_graphs", c.cuda_graphs);
  model.check_unknown();

  Section memory(root, "memory");
  double budget_mib = static_cast<double>(c.memory_budget_bytes) / kMiB;
  memory.number("budget_mib", budget_mib, 1.0, 1 << 24);
  c.memory_budget_bytes = static_cast<int64_t>(budget_mib * kMiB);
  memory.integer("kv_block_size", c.kv_block_size, 1, 1024);
  memory.check_unknown();

  Section scheduler(root, "scheduler");
  scheduler.integer("max_running_requests", c.limits.max_running, 1, 4096);
  scheduler.integer("max_batch_tokens", c.limits.max_batch_tokens, 1, 1 << 20);
  // 0 would refuse every request with RESOURCE_EXHAUSTED: a server that serves nothing.
  scheduler.integer("max_queued_requests", c.limits.max_queued, 1, 1 << 20);
  scheduler.integer("max_prompt_tokens", c.max_prompt_tokens, 0, 1 << 24);
  scheduler.integer("max_output_tokens", c.max_output_tokens, 0, 1 << 24);
  scheduler.integer("max_stop_strings", c.max_stop_strings, 0, 64);
  scheduler.integer("max_stop_bytes", c.max_stop_bytes, 1, 1024);
  scheduler.integer("max_prompt_bytes", c.max_prompt_bytes, 1, int64_t{1} << 30);
  scheduler.integer("priority_levels", c.limits.priority_levels, 1, 64);
  scheduler.integer("default_priority", c.limits.default_priority, 0, 63);
  scheduler.check_unknown();

  Section exit(root, "early_exit");
  exit.number("threshold", c.exit_policy.threshold, 0.0, 1e9);
  std::string metric = "max_prob";
  exit.one_of("metric", metric, {"max_prob", "entropy"});
  c.exit_policy.metric =
      metric == "entropy" ? model::ConfidenceMetric::kEntropy : model::ConfidenceMetric::kMaxProb;
  exit.check_unknown();

  Section shutdown(root, "shutdown");
  shutdown.number("drain_timeout_seconds", c.drain_timeout_seconds, 0.0, 86400.0);
  shutdown.check_unknown();

  Section metrics(root, "metrics");
  metrics.buckets("time_to_first_token_buckets_seconds", c.buckets.time_to_first_token);
  metrics.buckets("inter_token_latency_buckets_seconds", c.buckets.inter_token);
  metrics.buckets("request_duration_buckets_seconds", c.buckets.request);
  metrics.buckets("queue_time_buckets_seconds", c.buckets.queue);
  metrics.buckets("batch_size_buckets", c.buckets.batch_size);
  metrics.check_unknown();

  Section logging(root, "logging");
  logging.one_of("level", c.log_level, {"trace", "debug", "info", "warn", "error"});
  logging.one_of("format", c.log_format, {"text", "json"});
  logging.boolean("requests", c.log_requests);
  logging.check_unknown();

  Section controller(root, "controller");
  controller.one_of("policy", c.policy, {"static", "helios"});
  std::string slo;
  controller.string("slo_file", slo);
  if (!slo.empty()) {
    c.slo_file = std::filesystem::path(slo).is_absolute() ? std::filesystem::path(slo)
                                                          : base_dir / slo;
  }
  controller.integer("decisions_kept", c.decisions_kept, 1, 10000);
  controller.check_unknown();

  Section energy(root, "energy");
  energy.one_of("source", c.energy_source, {"auto", "nvml", "cpu_estimate"});
  energy.number("cpu_watts_per_core", c.cpu_watts_per_core, 0.0, 10000.0);
  energy.check_unknown();

  Section admin(root, "admin");
  admin.string("token", c.admin_token);
  std::string token_file;
  if (admin.string("token_file", token_file) && !token_file.empty()) {  // "": unset
    if (!c.admin_token.empty()) {
      JsonSection::fail("admin.token_file", "set admin.token or admin.token_file, not both");
    }
    c.admin_token_file = std::filesystem::path(token_file).is_absolute()
                             ? std::filesystem::path(token_file)
                             : base_dir / token_file;
  }
  admin.check_unknown();

  c.validate();
  return c;
}

ServerConfig ServerConfig::parse(std::string_view text, const std::filesystem::path& base_dir,
                                 std::string_view source) {
  const json root = parse_json(text, source, {.comments = true});
  try {
    return from_json(root, base_dir);
  } catch (const Error& e) {
    throw Error(e.code(), std::string(source) + ": " + e.what());
  }
}

ServerConfig ServerConfig::from_file(const std::filesystem::path& path) {
  return parse(read_json_file(path), path.parent_path(), path.string());
}

void ServerConfig::validate() const {
  if (policy == "static" && model_path.empty()) {
    fail("model.path", "is required with controller.policy \"static\"");
  }
  if (policy == "helios") {
    if (slo_file.empty()) fail("controller.slo_file", "is required with controller.policy \"helios\"");
    if (!model_path.empty()) {
      fail("model.path", "must not be set with controller.policy \"helios\" (the controller "
                         "picks models from the SLO file's model_repository)");
    }
    if (max_layers != 0) {
      fail("model.max_layers", "must not be set with controller.policy \"helios\" (the "
                               "controller picks the depth)");
    }
  }
  const auto colon = grpc_address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == grpc_address.size()) {
    fail("grpc.address", "must be host:port, got \"" + grpc_address + "\"");
  }
  if (http_host.empty()) fail("http.host", "must not be empty");
  if (device != "cpu" && device.rfind("cuda", 0) != 0) {
    fail("model.device", "must be cpu, cuda or cuda:N, got \"" + device + "\"");
  }
  if (energy_source == "nvml" && device == "cpu") {
    fail("energy.source", "\"nvml\" needs model.device cuda or cuda:N (NVML measures a GPU)");
  }
  if (limits.default_priority >= limits.priority_levels) {
    fail("scheduler.default_priority",
         "must be below scheduler.priority_levels (" + std::to_string(limits.priority_levels) +
             ")");
  }
  if (openai_host.empty()) fail("openai.host", "must not be empty");
  if (openai_port >= 0 && http_port >= 0 && openai_port != 0 && openai_port == http_port &&
      openai_host == http_host) {
    fail("openai.port", "must differ from http.port (" + std::to_string(http_port) + ")");
  }
  if (limits.max_batch_tokens < limits.max_running) {
    // Every running sequence decodes one token per step; a smaller budget would starve some.
    fail("scheduler.max_batch_tokens",
         "must be at least scheduler.max_running_requests (" +
             std::to_string(limits.max_running) + ")");
  }
}

nlohmann::json ServerConfig::to_json() const {
  return json{
      {"grpc",
       {{"address", grpc_address},
        {"max_message_bytes", grpc_max_message_bytes},
        {"max_concurrent_streams", grpc_max_concurrent_streams},
        {"memory_quota_mib", static_cast<double>(grpc_memory_quota_bytes) / kMiB},
        {"max_threads", grpc_max_threads},
        {"keepalive_min_ping_interval_ms", grpc_keepalive_min_ping_interval_ms},
        {"keepalive_max_ping_strikes", grpc_keepalive_max_ping_strikes},
        {"max_connection_idle_ms", grpc_max_connection_idle_ms},
        {"max_connection_age_ms", grpc_max_connection_age_ms},
        {"max_connection_age_grace_ms", grpc_max_connection_age_grace_ms}}},
      {"http", {{"host", http_host}, {"port", http_port}}},
      {"openai",
       {{"host", openai_host},
        {"port", openai_port},
        {"api_keys", json::array_t(openai_api_keys.size(), "(set)")},
        {"max_connections", openai_max_connections},
        {"max_body_bytes", openai_max_body_bytes}}},
      {"model",
       {{"path", model_path.string()},
        {"name", model_name},
        {"max_layers", max_layers},
        {"dtype", dtype},
        {"device", device},
        {"cuda_graphs", cuda_graphs}}},
      {"memory",
       {{"budget_mib", static_cast<double>(memory_budget_bytes) / kMiB},
        {"kv_block_size", kv_block_size}}},
      {"scheduler",
       {{"max_running_requests", limits.max_running},
        {"max_batch_tokens", limits.max_batch_tokens},
        {"max_queued_requests", limits.max_queued},
        {"max_prompt_tokens", max_prompt_tokens},
        {"max_output_tokens", max_output_tokens},
        {"max_stop_strings", max_stop_strings},
        {"max_stop_bytes", max_stop_bytes},
        {"max_prompt_bytes", max_prompt_bytes},
        {"priority_levels", limits.priority_levels},
        {"default_priority", limits.default_priority}}},
      {"early_exit",
       {{"threshold", exit_policy.threshold},
        {"metric", exit_policy.metric == model::ConfidenceMetric::kEntropy ? "entropy"
                                                                            : "max_prob"}}},
      {"shutdown", {{"drain_timeout_seconds", drain_timeout_seconds}}},
      {"metrics",
       {{"time_to_first_token_buckets_seconds", buckets.time_to_first_token},
        {"inter_token_latency_buckets_seconds", buckets.inter_token},
        {"request_duration_buckets_seconds", buckets.request},
        {"queue_time_buckets_seconds", buckets.queue},
        {"batch_size_buckets", buckets.batch_size}}},
      {"logging", {{"level", log_level}, {"format", log_format}, {"requests", log_requests}}},
      {"controller",
       {{"policy", policy}, {"slo_file", slo_file.string()}, {"decisions_kept", decisions_kept}}},
      {"energy", {{"source", energy_source}, {"cpu_watts_per_core", cpu_watts_per_core}}},
      {"admin",
       {{"token", admin_token.empty() ? "" : "(set)"},
        {"token_file", admin_token_file.string()}}},
  };
}

}  // namespace helios::serve
