#include "replay.h"

#include <fmt/format.h>

#include <atomic>
#include <condition_variable>
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
  std::string energy_source;

 private:
  void loop() {
    auto next = Clock::now();
    auto next_scrape = next;
    std::unique_lock lock(mutex_);
    while (!stopping_) {
      lock.unlock();
      poll_status();
      if (Clock::now() >= next_scrape) {
        scrape();
        next_scrape += std::chrono::seconds(1);
      }
      next += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(period_));
      if (next < Clock::now()) next = Clock::now();  // no burst of catch-up polls
      lock.lock();
      wake_.wait_until(lock, next, [this] { return stopping_; });
    }
    lock.unlock();
    scrape();  // the counters at the end of the run
  }

  void poll_status() {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
    pb::GetStatusResponse s;
    if (!admin_->GetStatus(&context, pb::GetStatusRequest(), &s).ok()) return;
    status.push_back({{"t", seconds_since(start_, Clock::now())},
                      {"running", s.running_requests()},
                      {"waiting", s.waiting_requests()},
                      {"kv_blocks_used", s.kv_blocks_used()},
                      {"kv_blocks_total", s.kv_blocks_total()},
                      {"kv_capacity_sequences", s.kv_capacity_sequences()},
                      {"model", s.model().name()},
                      {"loaded_layers", s.model().loaded_layers()},
                      {"total_layers", s.model().total_layers()}});
  }

  void scrape() {
    MetricSamples m;
    try {
      m = fetch_metrics(metrics_);
    } catch (const Fatal&) {
      return;  // a missed scrape leaves a gap; the next one covers the interval
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
                        {"preemptions", value("helios_preemptions_total")}});
  }

  pb::Admin::Stub* admin_;
  MetricsEndpoint metrics_;
  Clock::time_point start_;
  double period_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
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

json replay(const ReplayOptions& options) {
  const Workload workload = load_workload(options.workload);
  const MetricsEndpoint metrics = parse_metrics_url(options.metrics_url);
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

  std::mutex mutex;
  std::condition_variable all_done;
  size_t finished = 0;
  std::vector<json> records(workload.requests.size());
  const Clock::time_point start = Clock::now();
  Sampler sampler(admin.get(), metrics, start, options.sample_seconds);
  double max_lag_ms = 0;

  for (size_t i = 0; i < workload.requests.size(); ++i) {
    const WorkloadRequest& r = workload.requests[i];
    const auto due = start + std::chrono::duration_cast<Clock::duration>(
                                 std::chrono::duration<double>(r.at_seconds));
    std::this_thread::sleep_until(due);
    max_lag_ms = std::max(max_lag_ms, ms(Clock::now() - due));
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
                                  if (++finished == records.size()) all_done.notify_all();
                                });
    call->start(inference.get());
  }
  {
    std::unique_lock lock(mutex);
    all_done.wait(lock, [&] { return finished == records.size(); });
  }
  const double wall = seconds_since(start, Clock::now());
  sampler.stop();
  return {{"label", options.label},
          {"address", options.address},
          {"workload", workload.header},
          {"wall_s", wall},
          {"max_arrival_lag_ms", max_lag_ms},
          {"energy_source", sampler.energy_source},
          {"requests", records},
          {"status_samples", sampler.status},
          {"counter_samples", sampler.counters}};
}

}  // namespace helios::bench
