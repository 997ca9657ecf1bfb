// Load generator for the helios gRPC API. Sends streaming Generate requests either open-loop
// (Poisson arrivals at --rate, independent of how fast the server answers) or closed-loop
// (--concurrency clients, each sending its next request when the previous one ends), and
// reports client-side latencies (TTFT, TPOT, end-to-end), throughput, the largest batch the
// server reached (polled via Admin.GetStatus) and, with --metrics-url, deltas of the server's
// engine counters. It talks to the daemon only over the wire, so it builds without helios_core.
#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench_common.h"
#include "helios/common/cli_errors.h"
#include "stream_call.h"
#include "helios/v1/admin.grpc.pb.h"
#include "helios/v1/inference.grpc.pb.h"

namespace {

namespace fs = std::filesystem;
namespace pb = helios::v1;
using json = nlohmann::json;
using namespace helios::bench;

struct Options {
  std::string address = "127.0.0.1:50051";
  std::string metrics_url;
  double rate = 0.0;
  int64_t concurrency = 0;
  int64_t requests = 200;
  double duration = 0.0;
  bool requests_given = false;
  bool duration_given = false;
  std::string prompts_file;
  std::string corpus;
  int64_t prompt_bytes = 96;
  int64_t max_tokens = 64;
  double temperature = 0.0;
  int64_t priority = -1;  // the request's class; -1 = unset (the server's default class)
  int64_t warmup = 0;
  uint64_t seed = 1;
  double timeout = 60.0;
  std::string json_file;

  bool open_loop() const { return rate > 0.0; }
};

// ---------------------------------------------------------------------------------------------
// Prompts

// Where request prompts come from: a fixed list (used round-robin, so every prompt is used and
// a run is reproducible) or random slices of a text corpus.
class PromptSource {
 public:
  static PromptSource from_file(const std::string& path) {
    PromptSource source;
    std::istringstream lines(read_file(path));
    std::string line;
    int64_t number = 0;
    while (std::getline(lines, line)) {
      ++number;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (std::all_of(line.begin(), line.end(), is_space)) continue;
      if (!valid_utf8(line)) {
        throw Fatal(fmt::format("{}:{}: prompt is not valid UTF-8", path, number));
      }
      source.prompts_.push_back(std::move(line));
    }
    if (source.prompts_.empty()) throw Fatal(fmt::format("{}: no prompts (all lines empty)", path));
    return source;
  }

  static PromptSource from_corpus(const std::string& root, int64_t slice_bytes, uint64_t seed) {
    PromptSource source;
    source.slice_bytes_ = static_cast<size_t>(slice_bytes);
    source.rng_.seed(seed ^ 0x9E3779B97F4A7C15ULL);
    std::error_code error;
    const auto status = fs::status(root, error);
    std::vector<fs::path> files;
    if (fs::is_regular_file(status)) {
      files.push_back(root);
    } else if (fs::is_directory(status)) {
      for (fs::recursive_directory_iterator it(root, error), end; !error && it != end;
           it.increment(error)) {
        if (it->is_regular_file() && it->path().extension() == ".txt") files.push_back(it->path());
      }
      if (error) throw Fatal(fmt::format("--corpus {}: {}", root, error.message()));
      // Directory order is unspecified; sorting keeps slices reproducible for a given seed.
      std::sort(files.begin(), files.end());
    } else {
      throw Fatal(fmt::format("--corpus {}: no such file or directory", root));
    }
    // One concatenated text: a slice may then come from any file with probability
    // proportional to its size, and the blank line keeps files from running into each other.
    std::string text;
    for (const auto& file : files) {
      text += read_file(file);
      text += "\n\n";
    }
    source.slicer_.emplace(std::move(text), "--corpus " + root);
    // Check once that a slice can be cut, so a corpus of giant words fails before the run.
    source.next();
    source.rng_.seed(seed ^ 0x9E3779B97F4A7C15ULL);
    return source;
  }

  std::string next() {
    if (!prompts_.empty()) return prompts_[next_index_++ % prompts_.size()];
    return slicer_->slice(rng_, slice_bytes_);
  }

  std::string describe() const {
    if (!prompts_.empty()) return fmt::format("{} prompts from file", prompts_.size());
    return fmt::format("corpus slices of <= {} bytes ({} bytes of text)", slice_bytes_,
                       slicer_->text().size());
  }

 private:
  std::vector<std::string> prompts_;
  size_t next_index_ = 0;
  std::optional<TextSlicer> slicer_;
  size_t slice_bytes_ = 0;
  std::mt19937_64 rng_;
};

// ---------------------------------------------------------------------------------------------
// One request

struct Sample {
  Clock::time_point sent;
  Clock::time_point first_token;
  Clock::time_point last_token;
  Clock::time_point finished;
  bool has_first_token = false;
  bool has_usage = false;
  uint32_t prompt_tokens = 0;
  uint32_t completion_tokens = 0;
  double mean_exit_layer = 0.0;
  pb::FinishReason finish = pb::FINISH_REASON_UNSPECIFIED;
  grpc::StatusCode code = grpc::StatusCode::UNKNOWN;
  std::string error;

  void record(const StreamOutcome& o) {
    finished = Clock::now();
    sent = o.sent;
    first_token = o.first_token;
    last_token = o.last_token;
    has_first_token = o.has_first_token;
    has_usage = o.has_usage;
    prompt_tokens = o.usage.prompt_tokens();
    completion_tokens = o.usage.completion_tokens();
    mean_exit_layer = o.usage.mean_exit_layer();
    finish = o.finish;
    code = o.status.error_code();
    error = o.error;
  }

  // A completion: the RPC ended OK with a normal finish. The server ends every other outcome
  // with a non-OK status, but an OK stream without STOP/LENGTH would still not be a success.
  bool ok() const {
    return code == grpc::StatusCode::OK && (finish == pb::STOP || finish == pb::LENGTH);
  }
};

// How a failed request is counted: its status code, or for the (unexpected) OK stream that did
// not finish normally, the finish reason it carried.
std::string failure_key(const Sample& s) {
  if (s.code != grpc::StatusCode::OK) return status_name(s.code);
  return "OK/" + pb::FinishReason_Name(s.finish);
}

// ---------------------------------------------------------------------------------------------
// The request driver: one thread issues requests; completions arrive on gRPC's threads.

class Run {
 public:
  Run(const Options& options, pb::Inference::Stub* stub, PromptSource* prompts)
      : options_(options), stub_(stub), prompts_(prompts), arrivals_(options.seed) {}

  struct Result {
    std::deque<Sample> samples;  // deque: pointers to samples stay valid while it grows
    double wall_seconds = 0.0;
    int64_t max_in_flight = 0;
    double max_arrival_lag_ms = 0.0;  // open loop: how late the generator sent vs. schedule
  };

  // Sends requests until `count` were sent (count < 0: no limit) or `duration_s` passed
  // (<= 0: no limit), then waits for every request to end.
  Result run(int64_t count, double duration_s) {
    Result result;
    const auto start = Clock::now();
    const auto stop_at = duration_s > 0 ? start + std::chrono::duration_cast<Clock::duration>(
                                                      std::chrono::duration<double>(duration_s))
                                        : Clock::time_point::max();
    std::exponential_distribution<double> gap(options_.open_loop() ? options_.rate : 1.0);
    auto next_arrival = start;  // the first request goes out at once
    int64_t sent = 0;
    while (count < 0 || sent < count) {
      if (options_.open_loop()) {
        if (next_arrival >= stop_at) break;
        std::this_thread::sleep_until(next_arrival);
        const double lag =
            std::chrono::duration<double, std::milli>(Clock::now() - next_arrival).count();
        result.max_arrival_lag_ms = std::max(result.max_arrival_lag_ms, lag);
        // The schedule is fixed in advance (open loop): a late send does not delay the next.
        next_arrival += std::chrono::duration_cast<Clock::duration>(
            std::chrono::duration<double>(gap(arrivals_)));
      } else {
        std::unique_lock lock(mutex_);
        const bool free =
            changed_.wait_until(lock, stop_at, [&] { return in_flight_ < options_.concurrency; });
        if (!free) break;
      }
      if (Clock::now() >= stop_at) break;
      launch(result, sent++);
    }
    {
      std::unique_lock lock(mutex_);
      changed_.wait(lock, [&] { return in_flight_ == 0; });
      result.max_in_flight = max_in_flight_;
      max_in_flight_ = 0;
    }
    Clock::time_point last = start;
    for (const auto& s : result.samples) last = std::max(last, s.finished);
    result.wall_seconds = std::chrono::duration<double>(last - start).count();
    return result;
  }

  void finished() {
    std::lock_guard lock(mutex_);
    --in_flight_;
    changed_.notify_all();
  }

 private:
  void launch(Result& result, int64_t index) {
    pb::GenerateRequest request;
    request.set_prompt(prompts_->next());
    request.set_max_tokens(static_cast<uint32_t>(options_.max_tokens));
    request.set_temperature(static_cast<float>(options_.temperature));
    if (options_.priority >= 0) request.set_priority(static_cast<uint32_t>(options_.priority));
    // A per-request sampler seed makes sampled runs (temperature > 0) reproducible.
    request.set_seed(options_.seed * 1000003ULL + static_cast<uint64_t>(index));
    Sample* sample = nullptr;
    {
      std::lock_guard lock(mutex_);
      sample = &result.samples.emplace_back();
      ++in_flight_;
      max_in_flight_ = std::max(max_in_flight_, in_flight_);
    }
    // Owned by gRPC until it ends: deleted before the driver is told, so no call outlives
    // the run it belongs to.
    auto* call = new StreamCall(std::move(request), options_.timeout,
                                [this, sample](StreamCall* self, const StreamOutcome& o) {
                                  sample->record(o);
                                  delete self;
                                  finished();
                                });
    call->start(stub_);
  }

  const Options& options_;
  pb::Inference::Stub* stub_;
  PromptSource* prompts_;
  std::mt19937_64 arrivals_;
  std::mutex mutex_;
  std::condition_variable changed_;
  int64_t in_flight_ = 0;
  int64_t max_in_flight_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Server-side observation: Admin.GetStatus polling and /metrics

std::string state_name(pb::ServerState state) {
  return pb::ServerState_Name(state);
}

// Polls GetStatus every 20 ms on its own thread and keeps the largest batch seen. The poll
// rate bounds what it can see: a peak shorter than 20 ms may be missed.
class StatusPoller {
 public:
  explicit StatusPoller(pb::Admin::Stub* stub) : stub_(stub) {
    thread_ = std::thread([this] { loop(); });
  }
  ~StatusPoller() { stop(); }

  void stop() {
    stopping_ = true;
    if (thread_.joinable()) thread_.join();
  }

  uint32_t max_running = 0;
  uint32_t max_waiting = 0;
  std::optional<double> max_kv_usage;
  int64_t polls = 0;
  int64_t failures = 0;

 private:
  void loop() {
    constexpr auto kPeriod = std::chrono::milliseconds(20);
    auto next = Clock::now();
    while (!stopping_) {
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
      pb::GetStatusResponse status;
      ++polls;
      if (stub_->GetStatus(&context, pb::GetStatusRequest(), &status).ok()) {
        max_running = std::max(max_running, status.running_requests());
        max_waiting = std::max(max_waiting, status.waiting_requests());
        if (status.kv_blocks_total() > 0) {
          const double usage = static_cast<double>(status.kv_blocks_used()) /
                               static_cast<double>(status.kv_blocks_total());
          max_kv_usage = std::max(max_kv_usage.value_or(0.0), usage);
        }
      } else {
        ++failures;
      }
      next += kPeriod;
      // A slow poll does not trigger a burst of catch-up polls.
      if (next < Clock::now()) next = Clock::now();
      std::this_thread::sleep_until(next);
    }
  }

  pb::Admin::Stub* stub_;
  std::atomic<bool> stopping_ = false;
  std::thread thread_;
};

// ---------------------------------------------------------------------------------------------
// Statistics and the report

// `format` holds the unit too ("{:.3f} s"), so an absent value is printed without one.
std::string show(const std::optional<double>& v, const char* format = "{:.2f}") {
  return v ? fmt::format(fmt::runtime(format), *v) : std::string("absent");
}

std::string show(const Summary& s) {
  if (!s.mean) return "no samples";
  return fmt::format("mean {:.2f}  p50 {:.2f}  p95 {:.2f}  p99 {:.2f}", *s.mean, *s.p50, *s.p95,
                     *s.p99);
}

struct MetricDeltas {
  std::optional<double> step_seconds, forward_seconds, steps, outside_forward_share,
      mean_batch_size;
};

MetricDeltas metric_deltas(const MetricSamples& before, const MetricSamples& after) {
  auto delta = [&](const std::string& name) { return after.delta_since(before, name); };
  MetricDeltas d;
  d.step_seconds = delta("helios_engine_step_seconds_total");
  d.forward_seconds = delta("helios_model_forward_seconds_total");
  d.steps = delta("helios_engine_steps_total");
  if (d.step_seconds && d.forward_seconds && *d.step_seconds > 0) {
    d.outside_forward_share = 1.0 - *d.forward_seconds / *d.step_seconds;
  }
  const auto batch_sum = delta("helios_batch_size_sum");
  const auto batch_count = delta("helios_batch_size_count");
  if (batch_sum && batch_count && *batch_count > 0) d.mean_batch_size = *batch_sum / *batch_count;
  return d;
}

// What the measured run observed besides the server's own description: the client's samples,
// the status polls and the deltas of the server's /metrics.
struct Observed {
  const Run::Result& result;
  const StatusPoller& poller;
  std::optional<MetricDeltas> metrics{};
  std::string metrics_error{};  // why the metrics are absent although --metrics-url was given
};

// The requests' own figures: latencies and tokens of the ok ones, the failures by kind.
struct RequestStats {
  int64_t ok = 0;
  int64_t failed = 0;
  uint64_t prompt_tokens = 0;
  uint64_t completion_tokens = 0;
  std::map<std::string, int64_t> failures;
  std::map<std::string, std::string> failure_example;
  Summary ttft, tpot, e2e;
  std::optional<double> request_rate, token_rate, mean_exit;
};

RequestStats request_stats(const Run::Result& result) {
  RequestStats r;
  std::vector<double> ttft, tpot, e2e;
  double exit_weighted = 0.0;
  uint64_t exit_tokens = 0;
  for (const auto& s : result.samples) {
    if (!s.ok()) {
      const std::string key = failure_key(s);
      ++r.failures[key];
      if (!r.failure_example.count(key)) r.failure_example[key] = s.error;
      continue;
    }
    ++r.ok;
    e2e.push_back(ms(s.finished - s.sent));
    if (s.has_first_token) ttft.push_back(ms(s.first_token - s.sent));
    r.completion_tokens += s.completion_tokens;
    r.prompt_tokens += s.prompt_tokens;
    if (s.has_first_token && s.completion_tokens >= 2) {
      tpot.push_back(ms(s.last_token - s.first_token) / (s.completion_tokens - 1));
    }
    if (s.has_usage && s.completion_tokens > 0) {
      exit_weighted += s.mean_exit_layer * s.completion_tokens;
      exit_tokens += s.completion_tokens;
    }
  }
  r.failed = static_cast<int64_t>(result.samples.size()) - r.ok;
  if (result.wall_seconds > 0) {
    r.request_rate = static_cast<double>(r.ok) / result.wall_seconds;
    r.token_rate = static_cast<double>(r.completion_tokens) / result.wall_seconds;
  }
  if (exit_tokens > 0) r.mean_exit = exit_weighted / static_cast<double>(exit_tokens);
  r.ttft = summarize(ttft);
  r.tpot = summarize(tpot);
  r.e2e = summarize(e2e);
  return r;
}

json metrics_json(const std::optional<MetricDeltas>& metrics) {
  if (!metrics) return nullptr;
  return {{"engine_step_seconds", to_json(metrics->step_seconds)},
          {"model_forward_seconds", to_json(metrics->forward_seconds)},
          {"engine_steps", to_json(metrics->steps)},
          {"outside_forward_share", to_json(metrics->outside_forward_share)},
          {"mean_batch_size", to_json(metrics->mean_batch_size)}};
}

json report_json(const Options& options, const pb::GetStatusResponse& server,
                 const PromptSource& prompts, const Observed& observed, const RequestStats& r) {
  const Run::Result& result = observed.result;
  const StatusPoller& poller = observed.poller;
  json j;
  j["mode"] = options.open_loop() ? "rate" : "concurrency";
  j["rate"] = options.open_loop() ? json(options.rate) : json(nullptr);
  j["concurrency"] = options.open_loop() ? json(nullptr) : json(options.concurrency);
  j["address"] = options.address;
  j["model"] = server.model().name();
  j["server_version"] = server.version();
  j["exit_threshold"] = server.exit_threshold();
  j["settings"] = {
      {"requests",
       options.requests_given || !options.duration_given ? json(options.requests) : json(nullptr)},
      {"duration_s", options.duration_given ? json(options.duration) : json(nullptr)},
      {"max_tokens", options.max_tokens},
      {"temperature", options.temperature},
      {"priority", options.priority >= 0 ? json(options.priority) : json(nullptr)},
      {"warmup", options.warmup},
      {"seed", options.seed},
      {"timeout_s", options.timeout},
      {"prompts", prompts.describe()}};
  json by_status = json::object();
  for (const auto& [key, n] : r.failures) {
    by_status[key] = {{"count", n}, {"example_error", r.failure_example.at(key)}};
  }
  j["requests"] = {{"sent", result.samples.size()},
                   {"ok", r.ok},
                   {"failed", r.failed},
                   {"failed_by_status", by_status}};
  j["wall_time_s"] = result.wall_seconds;
  j["request_throughput_rps"] = to_json(r.request_rate);
  j["output_token_throughput_tps"] = to_json(r.token_rate);
  j["prompt_tokens"] = r.prompt_tokens;
  j["completion_tokens"] = r.completion_tokens;
  j["ttft_ms"] = to_json(r.ttft);
  j["tpot_ms"] = to_json(r.tpot);
  j["e2e_ms"] = to_json(r.e2e);
  j["mean_exit_layer"] = to_json(r.mean_exit);
  j["client"] = {{"max_in_flight", result.max_in_flight},
                 {"max_arrival_lag_ms",
                  options.open_loop() ? json(result.max_arrival_lag_ms) : json(nullptr)}};
  j["largest_batch"] = {{"max_running_requests", poller.max_running},
                        {"max_waiting_requests", poller.max_waiting},
                        {"max_kv_usage", to_json(poller.max_kv_usage)},
                        {"polls", poller.polls},
                        {"poll_failures", poller.failures}};
  j["server_metrics"] = metrics_json(observed.metrics);
  return j;
}

// The report's closing lines: the server's engine counters over the run, or why they are absent.
std::string metrics_text(const Observed& observed) {
  const std::optional<MetricDeltas>& metrics = observed.metrics;
  if (!metrics) {
    if (observed.metrics_error.empty()) return {};
    return fmt::format("server metrics  absent: {}\n", observed.metrics_error);
  }
  std::optional<double> ms_per_step;
  if (metrics->step_seconds && metrics->steps && *metrics->steps > 0) {
    ms_per_step = *metrics->step_seconds * 1000.0 / *metrics->steps;
  }
  std::string t = "server metrics  (deltas over the measured run)\n";
  t += fmt::format("  engine steps          {}\n", show(metrics->steps, "{:.0f}"));
  t += fmt::format("  engine step time      {}", show(metrics->step_seconds, "{:.3f} s"));
  t += ms_per_step ? fmt::format(" ({:.3f} ms/step)\n", *ms_per_step) : "\n";
  t += fmt::format("  model forward time    {}\n", show(metrics->forward_seconds, "{:.3f} s"));
  std::optional<double> outside_percent;
  if (metrics->outside_forward_share) outside_percent = *metrics->outside_forward_share * 100;
  t += fmt::format("  outside forward       {}\n", show(outside_percent, "{:.1f}% of step time"));
  t += fmt::format("  mean batch size       {}\n", show(metrics->mean_batch_size));
  return t;
}

std::string report_text(const Options& options, const pb::GetStatusResponse& server,
                        const PromptSource& prompts, const Observed& observed,
                        const RequestStats& r) {
  const Run::Result& result = observed.result;
  const StatusPoller& poller = observed.poller;
  const std::string mode =
      options.open_loop()
          ? fmt::format("rate {:.2f} req/s (Poisson arrivals, seed {})", options.rate, options.seed)
          : fmt::format("concurrency {} (closed loop)", options.concurrency);
  std::string t = fmt::format("helios loadgen: {}\n", mode);
  t += fmt::format("  server        {} ({}, model {}, exit threshold {})\n", options.address,
                   server.version(), server.model().name(), server.exit_threshold());
  t += fmt::format("  settings      max_tokens {}, temperature {}, warmup {}, timeout {} s\n",
                   options.max_tokens, options.temperature, options.warmup, options.timeout);
  t += fmt::format("  prompts       {}\n", prompts.describe());
  t += fmt::format("requests        sent {}, ok {}, failed {}\n", result.samples.size(), r.ok,
                   r.failed);
  for (const auto& [key, n] : r.failures) {
    t += fmt::format("  {:<20} {} (e.g. \"{}\")\n", key, n, r.failure_example.at(key));
  }
  t += fmt::format("wall time       {:.3f} s (first send to last completion)\n",
                   result.wall_seconds);
  t += fmt::format("throughput      {}, {}\n", show(r.request_rate, "{:.2f} req/s"),
                   show(r.token_rate, "{:.1f} output tokens/s"));
  t += fmt::format("tokens          {} prompt, {} completion (ok requests)\n", r.prompt_tokens,
                   r.completion_tokens);
  t += fmt::format("TTFT (ms)       {}\n", show(r.ttft));
  t += fmt::format("TPOT (ms)       {}\n", show(r.tpot));
  t += fmt::format("E2E (ms)        {}\n", show(r.e2e));
  t += fmt::format("exit layer      mean {}\n",
                   show(r.mean_exit, "{:.2f} (weighted by completion tokens)"));
  t += fmt::format("client          max in flight {}", result.max_in_flight);
  if (options.open_loop()) {
    t += fmt::format(", max arrival lag {:.2f} ms", result.max_arrival_lag_ms);
  }
  t += "\n";
  t += fmt::format(
      "largest batch   running {}, waiting {}, kv usage {} (GetStatus every 20 ms: {} polls, "
      "{} failed)\n",
      poller.max_running, poller.max_waiting,
      poller.max_kv_usage ? fmt::format("{:.1f}%", *poller.max_kv_usage * 100) : "absent",
      poller.polls, poller.failures);
  return t + metrics_text(observed);
}

struct Report {
  json data;
  std::string text;
};

Report make_report(const Options& options, const pb::GetStatusResponse& server,
                   const PromptSource& prompts, const Observed& observed) {
  const RequestStats stats = request_stats(observed.result);
  return {report_json(options, server, prompts, observed, stats),
          report_text(options, server, prompts, observed, stats)};
}

// ---------------------------------------------------------------------------------------------

// CLI11 checks types and exclusions; the ranges are checked here, for one readable message.
void validate(const Options& o, bool rate_given, bool concurrency_given) {
  if (rate_given == concurrency_given) {
    throw UsageError("exactly one of --rate and --concurrency is required");
  }
  if (rate_given && !(o.rate > 0 && std::isfinite(o.rate))) {
    throw UsageError("--rate must be a positive number of requests/s");
  }
  if (concurrency_given && o.concurrency < 1) throw UsageError("--concurrency must be >= 1");
  if (o.requests_given && o.requests < 1) throw UsageError("--requests must be >= 1");
  if (o.duration_given && !(o.duration > 0 && std::isfinite(o.duration))) {
    throw UsageError("--duration must be a positive number of seconds");
  }
  if (o.prompts_file.empty() == o.corpus.empty()) {
    throw UsageError("exactly one of --prompts and --corpus is required");
  }
  if (o.prompt_bytes < 1) throw UsageError("--prompt-bytes must be >= 1");
  if (o.max_tokens < 1 || o.max_tokens > int64_t{UINT32_MAX}) {
    throw UsageError("--max-tokens must be >= 1");
  }
  if (!(o.temperature >= 0 && std::isfinite(o.temperature))) {
    throw UsageError("--temperature must be >= 0");
  }
  if (o.warmup < 0) throw UsageError("--warmup must be >= 0");
  if (!(o.timeout > 0 && std::isfinite(o.timeout))) {
    throw UsageError("--timeout must be a positive number of seconds");
  }
}

int run_main(const Options& options) {
  PromptSource prompts =
      options.prompts_file.empty()
          ? PromptSource::from_corpus(options.corpus, options.prompt_bytes, options.seed)
          : PromptSource::from_file(options.prompts_file);
  std::optional<MetricsEndpoint> metrics_endpoint;
  if (!options.metrics_url.empty()) metrics_endpoint = parse_metrics_url(options.metrics_url);
  if (!options.json_file.empty()) {
    const fs::path parent = fs::absolute(options.json_file).parent_path();
    if (!fs::is_directory(parent)) {
      throw Fatal(fmt::format("--json {}: directory {} does not exist", options.json_file,
                              parent.string()));
    }
  }

  grpc::ChannelArguments arguments;
  // A load generator measures the server, not a proxy that http_proxy might route it through.
  arguments.SetInt(GRPC_ARG_ENABLE_HTTP_PROXY, 0);
  const auto channel =
      grpc::CreateCustomChannel(options.address, grpc::InsecureChannelCredentials(), arguments);
  const auto admin = pb::Admin::NewStub(channel);
  const auto inference = pb::Inference::NewStub(channel);

  // Reachability first, so a wrong address fails in seconds with one line, not as N failed
  // requests. wait_for_ready lets a server that is still binding its port answer in time.
  pb::GetStatusResponse server;
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    context.set_wait_for_ready(true);
    const grpc::Status status = admin->GetStatus(&context, pb::GetStatusRequest(), &server);
    if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      throw Fatal(fmt::format("cannot reach helios at {}: no answer to GetStatus within 5 s",
                              options.address));
    }
    if (!status.ok()) {
      throw Fatal(fmt::format("cannot reach helios at {}: GetStatus failed: {} {}", options.address,
                              status_name(status.error_code()), status.error_message()));
    }
    if (server.state() != pb::SERVER_STATE_SERVING) {
      throw Fatal(fmt::format("helios at {} is not serving (state {})", options.address,
                              state_name(server.state())));
    }
  }

  Run run(options, inference.get(), &prompts);
  // Requests: --requests if given; with only --duration, as many as fit; with neither, 200.
  const int64_t count = options.requests_given || !options.duration_given ? options.requests : -1;
  const double duration = options.duration_given ? options.duration : 0.0;
  if (options.warmup > 0) {
    fmt::print(stderr, "warming up: {} requests\n", options.warmup);
    const auto warm = run.run(options.warmup, 0.0);
    const auto warm_ok = std::count_if(warm.samples.begin(), warm.samples.end(),
                                       [](const Sample& s) { return s.ok(); });
    if (warm_ok == 0) {
      const Sample& s = warm.samples.front();
      throw Fatal(fmt::format("every warmup request failed, e.g. {}: {}", failure_key(s), s.error));
    }
  }

  // Snapshots and polling cover the measured run only, not the warmup.
  MetricSamples metrics_before;
  if (metrics_endpoint) metrics_before = fetch_metrics(*metrics_endpoint);
  fmt::print(stderr, "running: {}\n",
             count < 0      ? fmt::format("for {} s", duration)
             : duration > 0 ? fmt::format("{} requests, at most {} s", count, duration)
                            : fmt::format("{} requests", count));
  StatusPoller poller(admin.get());
  const Run::Result result = run.run(count, duration);
  poller.stop();

  Observed observed{result, poller};
  if (metrics_endpoint) {
    try {
      observed.metrics = metric_deltas(metrics_before, fetch_metrics(*metrics_endpoint));
    } catch (const Fatal& e) {
      // The run itself is still worth reporting; the server metrics are then absent.
      observed.metrics_error = e.what();
    }
  }

  const Report report = make_report(options, server, prompts, observed);
  fmt::print("{}", report.text);
  std::fflush(stdout);
  if (!options.json_file.empty()) {
    std::ofstream out(options.json_file);
    out << report.data.dump(2) << "\n";
    if (!out) throw Fatal(fmt::format("--json {}: cannot write", options.json_file));
  }
  // A run where nothing succeeded measured nothing; say so in the exit status too.
  return report.data["requests"]["ok"].get<int64_t>() > 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  CLI::App app{
      "helios_loadgen: drive a helios server with streaming Generate requests and "
      "report latency, throughput and batching"};
  app.add_option("--address", options.address, "gRPC address of the server")->capture_default_str();
  app.add_option("--metrics-url", options.metrics_url,
                 "Prometheus endpoint to diff before/after the run, e.g. "
                 "http://127.0.0.1:9464/metrics");
  auto* rate = app.add_option("--rate", options.rate,
                              "Open loop: mean requests/s, Poisson (exponential gaps)");
  auto* concurrency = app.add_option("--concurrency", options.concurrency,
                                     "Closed loop: clients, each sending its next request when "
                                     "the previous one ends");
  rate->excludes(concurrency);
  auto* requests = app.add_option("--requests", options.requests,
                                  "Requests to measure (200 unless only --duration is given)");
  auto* duration = app.add_option("--duration", options.duration,
                                  "Stop sending after this many seconds (with --requests: "
                                  "whichever comes first)");
  auto* prompts = app.add_option("--prompts", options.prompts_file,
                                 "File with one prompt per line (empty lines skipped)");
  auto* corpus = app.add_option("--corpus", options.corpus,
                                "Directory of *.txt files (searched recursively) or one text "
                                "file to cut random prompts from");
  prompts->excludes(corpus);
  app.add_option("--prompt-bytes", options.prompt_bytes,
                 "With --corpus: prompt length cap in bytes (cut at word boundaries)")
      ->capture_default_str();
  app.add_option("--max-tokens", options.max_tokens, "max_tokens of every request")
      ->capture_default_str();
  app.add_option("--temperature", options.temperature, "Sampling temperature (0 = greedy)")
      ->capture_default_str();
  app.add_option("--priority", options.priority,
                 "Priority class of every request (0 = most urgent); unset: the server's default")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
  app.add_option("--warmup", options.warmup, "Requests sent first and left out of every statistic")
      ->capture_default_str();
  app.add_option("--seed", options.seed, "Seed of arrivals, corpus slices and request samplers")
      ->capture_default_str();
  app.add_option("--timeout", options.timeout, "Per-request deadline in seconds")
      ->capture_default_str();
  app.add_option("--json", options.json_file, "Also write the report as JSON to this file");

  // A parse error is one line and exits 2, like a UsageError.
  const helios::CliErrorStyle style{.prefix = "helios_loadgen: error", .parse_error_status = 2};
  return helios::run_cli(app, argc, argv, style, [&] {
    options.requests_given = requests->count() > 0;
    options.duration_given = duration->count() > 0;
    validate(options, rate->count() > 0, concurrency->count() > 0);
    return run_main(options);
  });
}
