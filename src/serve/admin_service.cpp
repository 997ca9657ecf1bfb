// helios.v1.Admin: status, models, and the controller's operator commands.
#include "admin_service.h"

#include <cmath>
#include <spdlog/spdlog.h>

#include <cctype>
#include <chrono>
#include <thread>
#include <utility>

#include "helios/common/error.h"
#include "helios/common/exception_message.h"
#include "helios/controller/controller.h"
#include "helios/engine/serving_engine.h"

namespace helios::serve {
namespace {

void fill_model_info(const engine::ModelInstance& model, const ServerConfig& config,
                     const std::string& name, v1::ModelInfo* out) {
  const model::ModelConfig& mc = model.config();
  out->set_name(name);
  out->set_path(model.loaded().dir.string());
  out->set_total_layers(static_cast<uint32_t>(mc.num_hidden_layers));
  out->set_loaded_layers(static_cast<uint32_t>(model.transformer().loaded_layers()));
  for (const int32_t layer : model.transformer().exit_points()) {
    out->add_exit_layers(static_cast<uint32_t>(layer));
  }
  out->set_resident_weight_bytes(static_cast<uint64_t>(model.loaded().weights.resident_bytes()));
  out->set_context_length(static_cast<uint32_t>(mc.max_position_embeddings));
  out->set_vocab_size(static_cast<uint32_t>(mc.vocab_size));
  out->set_dtype(config.dtype);
  out->set_device(config.device);
  out->set_serving(true);
}

double unix_seconds(std::chrono::system_clock::time_point t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

void fill_decision(const controller::DecisionRecord& d, v1::Decision* out) {
  out->set_unix_time(unix_seconds(d.time));
  out->set_kind(std::string(controller::to_string(d.kind)));
  out->set_trigger(std::string(controller::to_string(d.trigger)));
  out->set_from_model(d.from_model);
  out->set_from_layers(static_cast<uint32_t>(d.from_layers));
  out->set_to_model(d.to_model);
  out->set_to_layers(static_cast<uint32_t>(d.to_layers));
  out->set_max_batch(static_cast<uint32_t>(d.max_batch));
  out->set_reason(d.reason);
  out->set_figures_json(d.figures.is_null() ? "{}" : d.figures.dump());
  if (d.gate) {
    const controller::GateResult& g = *d.gate;
    v1::SwitchGate* gate = out->mutable_gate();
    gate->set_passed(g.pass);
    gate->set_gain(g.gain.point);
    gate->set_gain_low(g.gain.low);
    gate->set_gain_high(g.gain.high);
    gate->set_required_gain(g.required_gain);
    gate->set_cost_seconds(g.cost.seconds);
    gate->set_recompute_tokens(static_cast<uint64_t>(g.cost.recompute_tokens));
    gate->set_horizon_seconds(std::isfinite(g.cost.horizon_seconds) ? g.cost.horizon_seconds : 0);
    if (g.perplexity_ratio) {
      gate->set_perplexity_ratio(g.perplexity_ratio->point);
      gate->set_perplexity_ratio_low(g.perplexity_ratio->low);
      gate->set_perplexity_ratio_high(g.perplexity_ratio->high);
    }
    gate->set_prompts(static_cast<uint32_t>(g.prompts));
  }
}

void fill_controller(const controller::ControllerStatus& s, v1::ControllerStatus* out) {
  out->set_phase(s.phase);
  out->set_objective(std::string(controller::objective_name(s.slo.objective)));
  out->set_active_model(s.active_model);
  out->set_loaded_layers(static_cast<uint32_t>(s.loaded_layers));
  out->set_total_layers(static_cast<uint32_t>(s.total_layers));
  out->set_max_batch(static_cast<uint32_t>(s.max_batch));
  out->set_profiling_model(s.profiling_model);
  for (const auto& c : s.candidates) out->add_candidates(c);
  for (const controller::UnavailableModel& u : s.unavailable) {
    v1::UnavailableModel* m = out->add_unavailable();
    m->set_model(u.name);
    m->set_reason(u.reason);
  }
  for (size_t i = 0; i < s.table.size(); ++i) {
    const controller::ProfileRow& row = s.table[i];
    v1::ProfileRow* r = out->add_table();
    r->set_model(row.model);
    r->set_profiled_layers(static_cast<uint32_t>(row.profiled_layers));
    r->set_requests(static_cast<uint32_t>(row.requests));
    int64_t generated = 0;
    for (const int64_t n : row.generated_exits) generated += n;
    for (size_t e = 0; e < row.exit_points.size(); ++e) {
      r->add_exit_points(static_cast<uint32_t>(row.exit_points[e]));
      r->add_generated_exit_share(
          generated > 0 && e < row.generated_exits.size()
              ? static_cast<double>(row.generated_exits[e]) / static_cast<double>(generated)
              : 0.0);
      if (row.prompt_tokens > 0) {
        r->add_policy_perplexity(controller::policy_perplexity(row, row.exit_points[e]));
      }
    }
    if (row.prompt_tokens > 0) r->set_full_depth_perplexity(controller::full_depth_perplexity(row));
    r->set_prompt_tokens(static_cast<uint64_t>(row.prompt_tokens));
    r->set_evidence_prompts(static_cast<uint32_t>(row.evidence_prompts));
    r->set_evidence_seconds(row.evidence_seconds);
    r->set_evidence_peak_bytes(static_cast<uint64_t>(row.evidence_peak_bytes));
    r->set_predicted(row.predicted);
    r->set_screened(!row.screened.empty());
    r->set_screened_reason(row.screened);
    r->set_decode_tokens_per_second(row.decode_tokens_per_second);
    r->set_tpot_p95_ms(row.tpot_p95_ms);
    r->set_ttft_p95_ms(row.ttft_p95_ms);
    r->set_energy_joules_per_token(row.energy_joules_per_token);
    r->set_profiled_at_request(static_cast<uint64_t>(row.profiled_at_request));
    r->set_stale(i < s.stale.size() && s.stale[i]);
    for (const controller::Option& option : s.options) {
      if (option.model == row.model) r->set_option_json(option.to_json().dump());
    }
  }
  for (const auto& d : s.decisions) fill_decision(d, out->add_decisions());
  out->set_requests_seen(static_cast<uint64_t>(s.requests_seen));
  out->set_breaches_in_window(static_cast<uint32_t>(s.breaches_in_window));
  out->set_breach_window_tokens(static_cast<uint32_t>(s.slo.breach_window_tokens));
  out->set_breach_max(static_cast<uint32_t>(s.slo.breach_max));
  out->set_breaches_total(static_cast<uint64_t>(s.breaches_total));
  out->set_slo_json(s.slo.to_json().dump());
  out->set_config_reloads_applied(static_cast<uint64_t>(s.reloads_applied));
  out->set_config_reloads_rejected(static_cast<uint64_t>(s.reloads_rejected));
  out->set_last_reload_error(s.last_reload_error);
  out->set_peak_memory_bytes(static_cast<uint64_t>(s.peak_memory_bytes));
  out->set_evidence_reserve_bytes(static_cast<uint64_t>(s.evidence_reserve_bytes));
  out->set_weight_bytes(static_cast<uint64_t>(s.weight_bytes));
  out->set_live_p95_ttft_ms(s.live_p95_ttft_ms);
  out->set_live_p95_tpot_ms(s.live_p95_tpot_ms);
  out->set_live_prompt_perplexity(s.live_prompt_perplexity);
  out->set_live_window_requests(static_cast<uint32_t>(s.live_window_requests));
}

// Compares without an early exit on the first difference, so timing reveals nothing.
bool equal_secret(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) diff |= a[i] ^ b[i % std::max<size_t>(1, b.size())];
  return diff == 0;
}

grpc::ServerUnaryReactor* finish(grpc::CallbackServerContext* call, const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = call->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

}  // namespace

bool local_peer(std::string_view peer) {
  // gRPC peers read "ipv4:127.0.0.1:5000", "ipv6:[::1]:5000" (the brackets may come
  // %-encoded) or "unix:/path". Only the loopback addresses themselves count: other
  // 127.0.0.0/8 sources are what a service-mesh sidecar (127.0.0.6) relays remote callers from.
  if (peer.rfind("unix:", 0) == 0) return true;  // only local processes reach a Unix socket
  std::string host;
  if (peer.rfind("ipv4:", 0) == 0) {
    const std::string_view rest = peer.substr(5);
    host = rest.substr(0, rest.rfind(':'));
    return host == "127.0.0.1";
  }
  if (peer.rfind("ipv6:", 0) != 0) return false;
  std::string rest(peer.substr(5));
  for (const auto& [encoded, plain] : {std::pair{"%5B", "["}, std::pair{"%5D", "]"}}) {
    for (size_t at; (at = rest.find(encoded)) != std::string::npos;) rest.replace(at, 3, plain);
  }
  if (rest.empty() || rest.front() != '[') return false;
  const size_t close = rest.find(']');
  if (close == std::string::npos) return false;
  host = rest.substr(1, close - 1);
  for (char& c : host) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return host == "::1" || host == "::ffff:127.0.0.1";
}

std::string_view bearer_token(std::string_view value) {
  // RFC 7235: the scheme is case-insensitive and followed by one or more spaces; RFC 9110
  // allows optional whitespace (space, tab) around a field value.
  const auto is_space = [](char c) { return c == ' ' || c == '\t'; };
  while (!value.empty() && is_space(value.front())) value.remove_prefix(1);
  while (!value.empty() && is_space(value.back())) value.remove_suffix(1);
  constexpr std::string_view kScheme = "bearer";
  if (value.size() <= kScheme.size() || !is_space(value[kScheme.size()])) return {};
  for (size_t i = 0; i < kScheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(value[i])) != kScheme[i]) return {};
  }
  value.remove_prefix(kScheme.size());
  while (!value.empty() && is_space(value.front())) value.remove_prefix(1);
  return value;
}

grpc::Status check_admin_access(std::string_view peer, const grpc::string_ref* authorization,
                                const ServerConfig& config) {
  if (config.admin_token.empty()) {
    if (local_peer(peer)) return grpc::Status::OK;
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        "admin calls from " + std::string(peer) +
                            " are refused: without admin.token only 127.0.0.1, ::1 and Unix "
                            "socket peers may call");
  }
  if (authorization == nullptr) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "authorization: missing (send \"authorization: Bearer <admin.token>\")");
  }
  const std::string_view token =
      bearer_token(std::string_view(authorization->data(), authorization->size()));
  if (token.empty() || !equal_secret(token, config.admin_token)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "authorization: invalid bearer token");
  }
  return grpc::Status::OK;
}

grpc::Status check_admin_access(const grpc::CallbackServerContext& call,
                                const ServerConfig& config) {
  const auto& metadata = call.client_metadata();
  const auto it = metadata.find("authorization");
  return check_admin_access(call.peer(), it == metadata.end() ? nullptr : &it->second, config);
}

AdminService::~AdminService() { stop(); }

void AdminService::stop() {
  std::thread worker;
  {
    std::lock_guard lock(worker_mutex_);
    stopped_ = true;
    worker.swap(worker_);
  }
  if (worker.joinable()) worker.join();
}

grpc::ServerUnaryReactor* AdminService::run_controller_action(
    grpc::CallbackServerContext* call, std::function<void(controller::Controller&)> body) {
  const ServingContext::Served* served = context_.served();
  if (served == nullptr) {
    return finish(call, grpc::Status(grpc::StatusCode::UNAVAILABLE, "the model is still loading"));
  }
  if (served->controller == nullptr) {
    return finish(call, grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                     "controller.policy: the server runs the \"static\" policy; "
                                     "pinning and SLO reloads need \"helios\""));
  }
  std::lock_guard lock(worker_mutex_);
  if (stopped_) {
    return finish(call,
                  grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
  }
  if (worker_busy_) {
    return finish(call, grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                     "an admin action is already running; retry once it has "
                                     "finished"));
  }
  // Not busy: the last action's thread has cleared the flag and at most finishes its call.
  if (worker_.joinable()) worker_.join();
  worker_busy_ = true;
  grpc::ServerUnaryReactor* reactor = call->DefaultReactor();
  context_.open_calls.fetch_add(1);
  worker_ = std::thread([this, reactor, controller = served->controller, body = std::move(body)] {
    grpc::Status status = grpc::Status::OK;
    try {
      body(*controller);
    } catch (const Error& e) {
      status = to_status(e);
    } catch (const std::exception& e) {
      status = grpc::Status(grpc::StatusCode::INTERNAL, exception_message(e));
    }
    // Free before the client hears back, so that its next action is not refused; the next
    // action joins this thread, which only finishes the call.
    {
      std::lock_guard lock(worker_mutex_);
      worker_busy_ = false;
    }
    reactor->Finish(status);
    context_.open_calls.fetch_sub(1);
  });
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::GetStatus(grpc::CallbackServerContext* call,
                                                  const v1::GetStatusRequest*,
                                                  v1::GetStatusResponse* response) {
  if (grpc::Status access = check_admin_access(*call, *context_.config); !access.ok()) {
    return finish(call, access);
  }
  const ServerState state = context_.state->load();
  response->set_version(HELIOS_VERSION);
  switch (state) {
    case ServerState::kLoading: response->set_state(v1::SERVER_STATE_LOADING); break;
    case ServerState::kServing: response->set_state(v1::SERVER_STATE_SERVING); break;
    case ServerState::kDraining:
    case ServerState::kStopped: response->set_state(v1::SERVER_STATE_DRAINING); break;
  }
  response->set_uptime_seconds(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - context_.started).count());
  response->set_memory_budget_bytes(static_cast<uint64_t>(context_.config->memory_budget_bytes));
  response->set_exit_threshold(context_.config->exit_policy.threshold);
  response->set_kv_block_size(static_cast<uint32_t>(context_.config->kv_block_size));
  response->set_policy(context_.config->policy);
  const ServingContext::Served* served = context_.served();
  if (engine::ServingEngine* engine = served != nullptr ? served->engine : nullptr) {
    const engine::EngineStats stats = engine->stats();
    response->set_running_requests(static_cast<uint32_t>(stats.running));
    response->set_waiting_requests(static_cast<uint32_t>(stats.waiting));
    response->set_kv_blocks_total(static_cast<uint64_t>(stats.kv_blocks_total));
    response->set_kv_blocks_used(static_cast<uint64_t>(stats.kv_blocks_used));
    response->set_kv_cache_bytes(static_cast<uint64_t>(stats.kv_cache_bytes));
    response->set_kv_capacity_sequences(static_cast<uint64_t>(stats.kv_sequences));
    response->set_requests_finished(static_cast<uint64_t>(stats.finished));
    response->set_steps(static_cast<uint64_t>(stats.steps));
    response->set_preemptions(static_cast<uint64_t>(stats.preemptions));
    fill_model_info(*engine->model(), *context_.config, stats.model_name,
                    response->mutable_model());
    for (const engine::MemberStats& member : stats.members) {
      v1::ResidentModel* out = response->add_resident();
      out->set_model(member.name);
      out->set_loaded_layers(static_cast<uint32_t>(member.loaded_layers));
      out->set_weight_bytes(static_cast<uint64_t>(member.weight_bytes));
      out->set_kv_blocks_total(static_cast<uint64_t>(member.kv_blocks_total));
      out->set_kv_blocks_used(static_cast<uint64_t>(member.kv_blocks_used));
      out->set_kv_cache_bytes(static_cast<uint64_t>(member.kv_cache_bytes));
      out->set_kv_capacity_sequences(static_cast<uint64_t>(member.kv_sequences));
      out->set_running_requests(static_cast<uint32_t>(member.running));
      out->set_waiting_requests(static_cast<uint32_t>(member.waiting));
      out->set_routed_requests(static_cast<uint64_t>(member.routed));
    }
    response->set_routed_requests(static_cast<uint64_t>(stats.routed));
    response->set_router_seconds(stats.router_seconds);
  }
  if (served != nullptr && served->controller != nullptr) {
    const controller::ControllerStatus status = served->controller->status();
    response->set_exit_threshold(status.slo.exit_threshold);
    fill_controller(status, response->mutable_controller());
  }
  return finish(call, grpc::Status::OK);
}

grpc::ServerUnaryReactor* AdminService::ListModels(grpc::CallbackServerContext* call,
                                                   const v1::ListModelsRequest*,
                                                   v1::ListModelsResponse* response) {
  if (grpc::Status access = check_admin_access(*call, *context_.config); !access.ok()) {
    return finish(call, access);
  }
  const ServingContext::Served* served = context_.served();
  if (engine::ServingEngine* engine = served != nullptr ? served->engine : nullptr) {
    // Every resident model (the set may change between the two reads: pair what matches).
    const auto models = engine->resident_models();
    const engine::EngineStats stats = engine->stats();
    for (size_t i = 0; i < models.size() && i < stats.members.size(); ++i) {
      fill_model_info(*models[i], *context_.config, stats.members[i].name, response->add_models());
    }
  }
  return finish(call, grpc::Status::OK);
}

grpc::ServerUnaryReactor* AdminService::PinModel(grpc::CallbackServerContext* call,
                                                 const v1::PinModelRequest* request,
                                                 v1::PinModelResponse* response) {
  if (grpc::Status access = check_admin_access(*call, *context_.config); !access.ok()) {
    return finish(call, access);
  }
  if (request->set_size() > 0) {
    if (!request->model().empty() || request->layers() != 0) {
      return finish(call, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                       "set: give either model (and layers) or set, not both"));
    }
    std::vector<controller::ResidentTarget> targets;
    for (const v1::PinTarget& target : request->set()) {
      if (target.model().empty()) {
        return finish(call, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                         "set.model: is required for every member"));
      }
      targets.push_back({target.model(), static_cast<int64_t>(target.layers())});
    }
    return run_controller_action(call, [targets, response](controller::Controller& c) {
      fill_decision(c.pin_set(targets), response->mutable_decision());
    });
  }
  if (request->model().empty()) {
    return finish(call, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "model: is required"));
  }
  const std::string model = request->model();
  const int64_t layers = request->layers();
  return run_controller_action(call, [model, layers, response](controller::Controller& c) {
    fill_decision(c.pin(model, layers), response->mutable_decision());
  });
}

grpc::ServerUnaryReactor* AdminService::Unpin(grpc::CallbackServerContext* call,
                                              const v1::UnpinRequest*,
                                              v1::UnpinResponse* response) {
  if (grpc::Status access = check_admin_access(*call, *context_.config); !access.ok()) {
    return finish(call, access);
  }
  return run_controller_action(call, [response](controller::Controller& c) {
    fill_decision(c.unpin(), response->mutable_decision());
  });
}

grpc::ServerUnaryReactor* AdminService::ReloadConfig(grpc::CallbackServerContext* call,
                                                     const v1::ReloadConfigRequest*,
                                                     v1::ReloadConfigResponse* response) {
  if (grpc::Status access = check_admin_access(*call, *context_.config); !access.ok()) {
    return finish(call, access);
  }
  return run_controller_action(call, [response](controller::Controller& c) {
    response->set_changed(c.reload());
    response->set_slo_json(c.status().slo.to_json().dump());
  });
}

}  // namespace helios::serve
