#include "replay.h"

#include <fmt/format.h>

#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "helios/v1/admin.grpc.pb.h"
#include "stream_call.h"
#include "workload.h"

namespace helios::bench {
namespace {

namespace pb = helios::v1;
using json = nlohmann::json;

double seconds_since(Clock::time_point start, Clock::time_point t) {
  return std::chrono::duration<double>(t - start).count();
}

// Server state every `period` (GetStatus) and counters every second (/metrics), stamped with
// the run's clock, until stopped.
class Sampler {
 public:
  Sampler(pb::Admin::Stub* admin, MetricsEndpoint metrics, Clock::time_point start, double period)
      : admin_(admin), metrics_(std::move(metrics)), start_(start), period_(period) {
    // The baseline is taken here, before the caller sends its first request: taken on the
    // sampler's thread it raced the load, and a token generated before it was missing from the
    // counters' deltas.
    poll_status();
    scrape(kScrapeTries);
    thread_ = std::thread([this] { loop(); });
  }
  ~Sampler() { stop(); }

  void stop() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  json status = json::array(), counters = json::array();
  json controller = json::object();  // evidence and peak memory figures (policy helios)
  std::string energy_source;

 private:
  void loop() {
    auto next = Clock::now();
    auto next_scrape = next;
    std::unique_lock lock(mutex_);
    while (!stopping_) {
      lock.unlock();
      // A scrape at every change of the controller's phase brackets each profiling pass in the
      // counters, within one poll period.
      if (poll_status() || Clock::now() >= next_scrape) {
        scrape();
        next_scrape = Clock::now() + std::chrono::seconds(1);
      }
      next += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(period_));
      if (next < Clock::now()) next = Clock::now();  // no burst of catch-up polls
      lock.lock();
      wake_.wait_until(lock, next, [this] { return stopping_; });
    }
    lock.unlock();
    scrape(kScrapeTries);  // the counters at the end of the run: the deltas end here
  }

  // Returns true when the controller's phase changed since the previous poll.
  bool poll_status() {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
    pb::GetStatusResponse s;
    if (!admin_->GetStatus(&context, pb::GetStatusRequest(), &s).ok()) return false;
    json sample = {{"t", seconds_since(start_, Clock::now())},
                   {"running", s.running_requests()},
                   {"waiting", s.waiting_requests()},
                   {"kv_blocks_used", s.kv_blocks_used()},
                   {"kv_blocks_total", s.kv_blocks_total()},
                   {"kv_capacity_sequences", s.kv_capacity_sequences()},
                   {"model", s.model().name()},
                   {"loaded_layers", s.model().loaded_layers()},
                   {"total_layers", s.model().total_layers()}};
    if (s.resident_size() > 1) {
      json members = json::array();
      for (const pb::ResidentModel& m : s.resident()) {
        members.push_back({{"model", m.model()},
                           {"layers", m.loaded_layers()},
                           {"running", m.running_requests()},
                           {"waiting", m.waiting_requests()},
                           {"routed", m.routed_requests()},
                           {"kv_blocks_used", m.kv_blocks_used()},
                           {"kv_blocks_total", m.kv_blocks_total()},
                           {"weight_bytes", m.weight_bytes()},
                           {"kv_cache_bytes", m.kv_cache_bytes()}});
      }
      sample["resident"] = members;
      sample["memory_budget_bytes"] = s.memory_budget_bytes();
    }
    if (s.has_controller()) {
      const pb::ControllerStatus& c = s.controller();
      sample["phase"] = c.phase();
      if (!c.profiling_model().empty()) sample["profiling_model"] = c.profiling_model();
      uint64_t evidence_peak = 0;
      for (const pb::ProfileRow& row : c.table()) {
        evidence_peak = std::max<uint64_t>(evidence_peak, row.evidence_peak_bytes());
      }
      controller["evidence_peak_bytes"] =
          std::max(controller.value("evidence_peak_bytes", uint64_t{0}), evidence_peak);
      controller["evidence_reserve_bytes"] = c.evidence_reserve_bytes();
      controller["peak_memory_bytes"] = c.peak_memory_bytes();
      if (!controller.contains("profile_mode")) controller["profile_mode"] = profile_mode(c.slo_json());
    }
    status.push_back(std::move(sample));
    const std::string now = s.has_controller() ? s.controller().phase() : "";
    const bool changed = now != phase_;
    phase_ = now;
    return changed;
  }

  static json profile_mode(const std::string& slo_json) {
    try {
      return json::parse(slo_json).at("controller").at("profile_mode");
    } catch (const json::exception&) {
      return nullptr;
    }
  }

  // The first and last scrapes bound every counter delta, so they are retried; a missed one in
  // between leaves a gap that the next one covers.
  static constexpr int kScrapeTries = 3;

  void scrape(int tries = 1) {
    MetricSamples m;
    for (int attempt = 1;; ++attempt) {
      try {
        m = fetch_metrics(metrics_);
        break;
      } catch (const Fatal&) {
        if (attempt >= tries) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
    }
    auto value = [&](const char* name) {
      const auto it = m.by_name.find(name);
      return it == m.by_name.end() ? json(nullptr) : json(it->second);
    };
    for (const auto& [series, v] : m.by_series) {
      if (series.rfind("helios_energy_joules_total{", 0) == 0) {
        const size_t q = series.find('"');
        energy_source = series.substr(q + 1, series.find('"', q + 1) - q - 1);
      }
    }
    counters.push_back({{"t", seconds_since(start_, Clock::now())},
                        {"generation_tokens", value("helios_generation_tokens_total")},
                        {"energy_joules", value("helios_energy_joules_total")},
                        {"batch_size_sum", value("helios_batch_size_sum")},
                        {"batch_size_count", value("helios_batch_size_count")},
                        {"model_switches", value("helios_model_switches_total")},
                        {"layer_loads", value("helios_layer_loads_total")},
                        {"profiling_runs", value("helios_profiling_runs_total")},
                        {"preemptions", value("helios_preemptions_total")},
                        {"router_seconds", value("helios_router_seconds_total")},
                        {"engine_step_seconds", value("helios_engine_step_seconds_total")},
                        {"forward_seconds", value("helios_model_forward_seconds_total")},
                        {"evidence_seconds", value("helios_controller_evidence_seconds_total")},
                        {"memory_peak_bytes", value("helios_memory_peak_bytes")},
                        {"phase", phase_}});
  }

  pb::Admin::Stub* admin_;
  MetricsEndpoint metrics_;
  Clock::time_point start_;
  double period_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::string phase_;  // the controller's phase at the last poll ("" under static)
  std::thread thread_;
};

json request_record(const WorkloadRequest& r, size_t index, Clock::time_point start,
                    const StreamOutcome& o, Clock::time_point done) {
  json j = {{"index", index},
            {"phase", r.phase},
            {"domain", r.domain},
            {"scheduled_s", r.at_seconds},
            {"sent_s", seconds_since(start, o.sent)},
            {"done_s", seconds_since(start, done)},
            {"status", status_name(o.status.error_code())},
            {"finish", pb::FinishReason_Name(o.finish)},
            {"ok", o.ok()},
            {"e2e_ms", ms(done - o.sent)}};
  if (!o.error.empty()) j["error"] = o.error;
  if (o.has_first_token) {
    j["ttft_ms"] = ms(o.first_token - o.sent);
    const uint32_t tokens = o.has_usage ? o.usage.completion_tokens() : 0;
    if (tokens > 1) j["tpot_ms"] = ms(o.last_token - o.first_token) / (tokens - 1);
  }
  if (o.has_usage) {
    const pb::Usage& u = o.usage;
    j["model"] = u.model();
    j["prompt_tokens"] = u.prompt_tokens();
    j["output_tokens"] = u.completion_tokens();
    j["mean_exit_layer"] = u.mean_exit_layer();
    j["queue_ms"] = u.queue_time_ms();
    j["preemptions"] = u.preemptions();
    if (u.prompt_scored_tokens() > 0) {
      j["prompt_perplexity"] = u.prompt_perplexity();
      j["prompt_scored_tokens"] = u.prompt_scored_tokens();
    }
  }
  return j;
}

}  // namespace

Pin parse_pin(const std::string& text) {
  const size_t eq = text.find('=');
  auto bad = [&](const std::string& why) {
    return UsageError(fmt::format(
        "--pin {}: {} (expected PHASE=MODEL[:LAYERS], or MODEL[:LAYERS]+MODEL[:LAYERS]... for "
        "a resident set)",
        text, why));
  };
  if (eq == std::string::npos || eq == 0) throw bad("no PHASE=");
  Pin pin{.phase = text.substr(0, eq)};
  const std::string members = text.substr(eq + 1);
  for (size_t begin = 0; begin <= members.size();) {
    const size_t plus = std::min(members.find('+', begin), members.size());
    PinTarget target{.model = members.substr(begin, plus - begin)};
    const size_t colon = target.model.rfind(':');
    if (colon != std::string::npos) {
      const std::string layers = target.model.substr(colon + 1);
      target.model.resize(colon);
      size_t used = 0;
      try {
        target.layers = std::stoll(layers, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != layers.size() || target.layers < 0) {
        throw bad("LAYERS must be a whole number >= 0");
      }
    }
    if (target.model.empty()) throw bad("no MODEL");
    pin.set.push_back(std::move(target));
    begin = plus + 1;
  }
  pin.model = pin.set.front().model;
  pin.layers = pin.set.front().layers;
  if (pin.set.size() == 1) pin.set.clear();
  return pin;
}

std::string to_string(const Pin& pin) {
  if (pin.set.empty()) return fmt::format("{}={}:{}", pin.phase, pin.model, pin.layers);
  std::string out = pin.phase + "=";
  for (size_t i = 0; i < pin.set.size(); ++i) {
    out += fmt::format("{}{}:{}", i ? "+" : "", pin.set[i].model, pin.set[i].layers);
  }
  return out;
}

namespace {

// Admin.PinModel, waiting for the daemon's answer; another admin action in progress is waited
// out (RESOURCE_EXHAUSTED). Returns the record of the pin; `ok` false with the error otherwise.
json pin_model(pb::Admin::Stub* admin, const Pin& pin, Clock::time_point start) {
  json record = {{"phase", pin.phase},
                 {"model", pin.model},
                 {"layers", pin.layers},
                 {"asked_s", seconds_since(start, Clock::now())}};
  pb::PinModelRequest request;
  if (pin.set.empty()) {
    request.set_model(pin.model);
    request.set_layers(static_cast<uint32_t>(pin.layers));
  } else {
    json set = json::array();
    for (const PinTarget& target : pin.set) {
      pb::PinTarget* member = request.add_set();
      member->set_model(target.model);
      member->set_layers(static_cast<uint32_t>(target.layers));
      set.push_back({{"model", target.model}, {"layers", target.layers}});
    }
    record["set"] = set;
  }
  grpc::Status status;
  pb::PinModelResponse response;
  for (int attempt = 0; attempt < 600; ++attempt) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    status = admin->PinModel(&context, request, &response);
    if (status.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  record["returned_s"] = seconds_since(start, Clock::now());
  record["ok"] = status.ok();
  if (status.ok()) {
    record["to_model"] = response.decision().to_model();
    record["to_layers"] = response.decision().to_layers();
  } else {
    record["error"] = fmt::format("{}: {}", status_name(status.error_code()), status.error_message());
  }
  return record;
}

}  // namespace

json replay(const ReplayOptions& options) {
  const Workload workload = load_workload(options.workload);
  const MetricsEndpoint metrics = parse_metrics_url(options.metrics_url);
  if (options.concurrency < 0) throw UsageError("--concurrency must be >= 0");
  std::map<std::string, Pin> pins;
  for (const Pin& pin : options.pins) {
    bool known = false;
    for (const json& phase : workload.header.at("phases")) known |= phase.at("name") == pin.phase;
    if (!known) {
      throw UsageError(fmt::format("--pin {}: the trace has no phase {}", to_string(pin), pin.phase));
    }
    if (!pins.emplace(pin.phase, pin).second) {
      throw UsageError(fmt::format("--pin: phase {} is pinned twice", pin.phase));
    }
  }
  auto channel = grpc::CreateChannel(options.address, grpc::InsecureChannelCredentials());
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
    throw Fatal(fmt::format("cannot reach helios at {} within 10 s", options.address));
  }
  auto inference = pb::Inference::NewStub(channel);
  auto admin = pb::Admin::NewStub(channel);
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    pb::GetStatusResponse s;
    const grpc::Status status = admin->GetStatus(&context, pb::GetStatusRequest(), &s);
    if (!status.ok() || s.state() != pb::SERVER_STATE_SERVING) {
      throw Fatal(fmt::format("helios at {} is not serving: {}", options.address,
                              status.ok() ? pb::ServerState_Name(s.state()) : status.error_message()));
    }
  }

  const bool closed_loop = options.concurrency > 0;
  std::mutex mutex;
  std::condition_variable changed;
  size_t sent = 0, finished = 0, in_flight = 0, most_in_flight = 0;
  std::vector<json> records(workload.requests.size());
  json pin_records = json::array();
  std::string pin_error;
  const Clock::time_point start = Clock::now();
  Sampler sampler(admin.get(), metrics, start, options.sample_seconds);
  double max_lag_ms = 0;

  // One dispatcher sends the requests in trace order: in the open loop each at its offset, in
  // the closed loop each as soon as one of the N workers' previous request finished (the same
  // schedule as N workers taking requests in order). A pin sits in that order before its
  // phase's first request, so nothing later is sent before the daemon answered it.
  for (size_t i = 0; i < workload.requests.size(); ++i) {
    const WorkloadRequest& r = workload.requests[i];
    if (closed_loop) {
      std::unique_lock lock(mutex);
      changed.wait(lock, [&] { return in_flight < static_cast<size_t>(options.concurrency); });
    } else {
      const auto due = start + std::chrono::duration_cast<Clock::duration>(
                                   std::chrono::duration<double>(r.at_seconds));
      std::this_thread::sleep_until(due);
      max_lag_ms = std::max(max_lag_ms, ms(Clock::now() - due));
    }
    if (const auto pin = pins.find(r.phase); pin != pins.end()) {
      pin_records.push_back(pin_model(admin.get(), pin->second, start));
      if (!pin_records.back()["ok"].get<bool>()) {
        pin_error = fmt::format("pin {} failed: {}", to_string(pin->second),
                                pin_records.back()["error"].get<std::string>());
        break;
      }
      pins.erase(pin);
    }
    pb::GenerateRequest request;
    request.set_prompt(r.prompt);
    request.set_max_tokens(static_cast<uint32_t>(r.max_tokens));
    request.set_temperature(0);
    request.set_seed(i);
    request.set_score_prompt(true);
    request.set_request_id(fmt::format("{}-{}", options.label, i));
    auto* call = new StreamCall(std::move(request), options.timeout_seconds,
                                [&, i](StreamCall* self, const StreamOutcome& outcome) {
                                  json record = request_record(workload.requests[i], i, start,
                                                               outcome, Clock::now());
                                  delete self;
                                  std::lock_guard lock(mutex);
                                  records[i] = std::move(record);
                                  ++finished;
                                  --in_flight;
                                  changed.notify_all();
                                });
    {
      std::lock_guard lock(mutex);
      ++sent;
      most_in_flight = std::max(most_in_flight, ++in_flight);
    }
    call->start(inference.get());
  }
  {
    std::unique_lock lock(mutex);
    changed.wait(lock, [&] { return finished == sent; });
  }
  const double wall = seconds_since(start, Clock::now());
  sampler.stop();
  if (!pin_error.empty()) throw Fatal(options.label + ": " + pin_error);
  return {{"label", options.label},
          {"address", options.address},
          {"workload", workload.header},
          {"load", {{"mode", closed_loop ? "closed" : "open"},
                    {"concurrency", closed_loop ? json(options.concurrency) : json(nullptr)},
                    {"most_in_flight", most_in_flight}}},
          {"wall_s", wall},
          {"max_arrival_lag_ms", closed_loop ? json(nullptr) : json(max_lag_ms)},
          {"energy_source", sampler.energy_source},
          {"pins", pin_records},
          {"controller", sampler.controller},
          {"requests", records},
          {"status_samples", sampler.status},
          {"counter_samples", sampler.counters}};
}

}  // namespace helios::bench
