#include "helios/controller/controller.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>

#include "helios/common/exception_message.h"
#include "helios/common/error.h"
#include "helios/common/files.h"
#include "helios/controller/config_watcher.h"
#include "helios/controller/drift.h"
#include "helios/controller/prediction.h"
#include "helios/engine/memory_plan.h"
#include "helios/engine/serving_engine.h"
#include "controller_internal.h"

namespace helios::controller {

std::string_view to_string(DecisionRecord::Kind kind) {
  switch (kind) {
    case DecisionRecord::Kind::kProfile: return "profile";
    case DecisionRecord::Kind::kSwitch: return "switch";
    case DecisionRecord::Kind::kExtend: return "extend";
    case DecisionRecord::Kind::kTruncate: return "truncate";
    case DecisionRecord::Kind::kKeep: return "keep";
    case DecisionRecord::Kind::kLimit: return "limit";
    case DecisionRecord::Kind::kPin: return "pin";
    case DecisionRecord::Kind::kUnpin: return "unpin";
    case DecisionRecord::Kind::kResident: return "resident";
  }
  return "unknown";
}

std::string_view to_string(DecisionRecord::Trigger trigger) {
  switch (trigger) {
    case DecisionRecord::Trigger::kStartup: return "startup";
    case DecisionRecord::Trigger::kProfiled: return "profiled";
    case DecisionRecord::Trigger::kBreach: return "breach";
    case DecisionRecord::Trigger::kDrift: return "drift";
    case DecisionRecord::Trigger::kInterval: return "interval";
    case DecisionRecord::Trigger::kSloChange: return "slo_change";
    case DecisionRecord::Trigger::kOperator: return "operator";
    case DecisionRecord::Trigger::kError: return "error";
  }
  return "unknown";
}

std::string Controller::phase_name(Phase phase) {
  switch (phase) {
    case Phase::kProfiling: return "profiling";
    case Phase::kServing: return "serving";
    case Phase::kPinned: return "pinned";
  }
  return "unknown";
}

Controller::Controller(ControllerOptions options, metrics::Registry* registry)
    : options_(std::move(options)), registry_(registry) {
  if (registry_ != nullptr) metrics_ = std::make_unique<Metrics>(*registry_);
  if (!options_.energy_meter) {
    options_.energy_meter = metrics::make_energy_meter({.source = "cpu_estimate"});
  }
  if (!options_.loader) options_.loader = default_model_loader(options_.load);
}

Controller::~Controller() { stop(); }

PolicyLimits Controller::limits() const { return limits_for(evidence_reserve_); }

PolicyLimits Controller::limits_for(int64_t evidence_reserve) const {
  return PolicyLimits{options_.memory_budget_bytes - evidence_reserve, options_.kv_block_size,
                      options_.max_running};
}

const Candidate* Controller::find_candidate(const std::string& name) const {
  for (const Candidate& c : repository_) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

void Controller::prepare() {
  slo_text_ = read_file(options_.slo_file);
  slo_ = SloConfig::parse(slo_text_, options_.slo_file.parent_path(), options_.slo_file.string());
  Repository repository = scan(slo_);
  std::vector<Candidate> order = repository.ranked;
  adopt(std::move(repository));
  // The first candidate that loads serves; one that fails is unavailable and the next one in
  // the shortlist's order takes its place (a broken folder must not keep the rest from serving).
  for (const Candidate& c : order) {
    try {
      std::shared_ptr<const engine::ModelInstance> model = load(c, 0);  // marks a failure
      try {
        initial_kv_blocks_ = engine::kv_blocks_for_budget(*model, limits().memory_budget_bytes,
                                                          options_.kv_block_size,
                                                          "memory.budget_mib");
      } catch (const std::exception& e) {
        mark_unavailable(c.name, exception_message(e));
        throw;
      }
      current_ = std::move(model);
      current_name_ = c.name;
      break;
    } catch (const std::exception& e) {
      spdlog::error("controller: {} cannot serve, trying the next candidate: {}", c.name,
                    exception_message(e));
    }
  }
  if (!current_) {
    std::string why;
    for (const UnavailableModel& u : unavailable_) {
      why += fmt::format("{}{}: {}", why.empty() ? "" : "; ", u.name, u.reason);
    }
    throw Error(ErrorCode::kFailedPrecondition,
                fmt::format("model_repository: no model in {} could be loaded ({})",
                            slo_.model_repository.string(), why));
  }
  // The shortlist: the first candidates_top_k of those not found unavailable.
  std::erase_if(order, [&](const Candidate& c) {
    return std::any_of(unavailable_.begin(), unavailable_.end(),
                       [&](const UnavailableModel& u) { return u.name == c.name; });
  });
  if (static_cast<int64_t>(order.size()) > slo_.candidates_top_k) {
    order.resize(static_cast<size_t>(slo_.candidates_top_k));
  }
  shortlist_ = std::move(order);
  max_batch_ = options_.max_running;
  evidence_.set_capacity(static_cast<size_t>(slo_.evidence_prompts));
  breaches_ = BreachCounter(slo_.breach_window_tokens);
  reset_windows();
  std::string names;
  for (const Candidate& c : shortlist_) names += (names.empty() ? "" : ", ") + c.name;
  spdlog::info("controller: objective {}, {} candidates in {}, shortlist [{}], profile mode {}{}",
               objective_name(slo_.objective), repository_.size(),
               slo_.model_repository.string(), names, profile_mode_name(slo_.profile_mode),
               evidence_reserve_ > 0
                   ? fmt::format(" ({:.1f} MiB of the budget kept for scoring candidates)",
                                 static_cast<double>(evidence_reserve_) / 1048576.0)
                   : std::string());
  // Readable before start(): a daemon that fails later can still report what was found.
  publish();
}

void Controller::start(engine::ServingEngine* engine) {
  engine_ = engine;
  epoch_ = engine_->stats().model_epoch;
  engine_->set_exit_threshold(slo_.exit_threshold);
  // Profiling starts with the model the engine already holds (in sample mode it is the only
  // one served: the others are scored on its prompts).
  if (slo_.profile_mode == ProfileMode::kServe) {
    for (size_t i = 1; i < shortlist_.size(); ++i) profile_queue_.push_back(shortlist_[i].name);
  }
  pass_started_ = std::chrono::steady_clock::now();
  // The table is empty at start-up: no row can screen this one out.
  begin_profile(find_candidate(current_name_));
  record(DecisionRecord{.kind = DecisionRecord::Kind::kProfile,
                        .trigger = DecisionRecord::Trigger::kStartup,
                        .to_model = current_name_,
                        .to_layers = current_->transformer().loaded_layers(),
                        .max_batch = max_batch_,
                        .reason = slo_.profile_mode == ProfileMode::kServe
                                      ? "profiling the shortlist on live requests, first candidate"
                                      : "measuring the served model on live requests, then "
                                        "scoring the shortlist on their prompts"});
  peak_memory_bytes_ = current_->loaded().weights.resident_bytes() + engine_->stats().kv_cache_bytes;
  // The model served from the start is active before any switch (dashboards read it).
  if (metrics_) metrics_->active->labels({current_name_}).set(1);
  publish();
  watcher_ = std::make_unique<ConfigWatcher>(
      options_.slo_file, options_.watch_interval, [this](const std::string& contents) {
        {
          std::lock_guard lock(mutex_);
          changed_file_ = contents;
        }
        wakeup_.notify_one();
      });
  watcher_->start();
  thread_ = std::thread([this] { run(); });
}

void Controller::stop() {
  if (watcher_) watcher_->stop();
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    // Operator calls waiting on the thread learn that it is gone.
    for (Command& command : commands_) command();
    commands_.clear();
  }
  wakeup_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void Controller::on_step(const engine::StepTelemetry& step) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    steps_in_.push_back(step);
  }
  wakeup_.notify_one();
}

void Controller::on_request(engine::RequestTelemetry request) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    requests_in_.push_back(std::move(request));
  }
  wakeup_.notify_one();
}

void Controller::on_prompt(engine::PromptTelemetry prompt) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    prompts_in_.push_back(std::move(prompt));
  }
  wakeup_.notify_one();
}

namespace {

// What a command hands back to the thread that asked for it: a value, or the code and message
// of what it threw. Exceptions do not cross threads here: the caller throws a fresh Error of
// its own (an exception object shared between threads is freed by whichever drops the last
// reference, through reference counts that thread sanitizers cannot see).
template <typename T>
struct Outcome {
  std::optional<T> value;
  ErrorCode code = ErrorCode::kInternal;
  std::string message;
};

}  // namespace

template <typename T>
T Controller::run_command(std::function<T()> body) {
  auto promise = std::make_shared<std::promise<Outcome<T>>>();
  std::future<Outcome<T>> result = promise->get_future();
  {
    std::lock_guard lock(mutex_);
    if (stopping_ || !thread_.joinable()) {
      throw Error(ErrorCode::kUnavailable, "the controller is not running");
    }
    commands_.push_back([this, promise, body = std::move(body)] {
      Outcome<T> outcome;
      if (stopping_) {
        outcome.code = ErrorCode::kUnavailable;
        outcome.message = "the controller is stopping";
      } else {
        try {
          outcome.value = body();
          publish();
        } catch (const Error& e) {
          outcome.value.reset();
          outcome.code = e.code();
          outcome.message = e.what();
        } catch (const std::exception& e) {
          outcome.value.reset();
          outcome.message = exception_message(e);
        } catch (...) {
          outcome.value.reset();
          outcome.message = "unknown exception";
        }
      }
      promise->set_value(std::move(outcome));
    });
  }
  wakeup_.notify_one();
  Outcome<T> outcome = result.get();
  if (!outcome.value) throw Error(outcome.code, outcome.message);
  return std::move(*outcome.value);
}

template bool Controller::run_command<bool>(std::function<bool()>);
template DecisionRecord Controller::run_command<DecisionRecord>(std::function<DecisionRecord()>);

void Controller::run() {
  auto published_at = std::chrono::steady_clock::now();
  while (true) {
    std::deque<engine::StepTelemetry> steps;
    std::deque<engine::RequestTelemetry> requests;
    std::deque<engine::PromptTelemetry> prompts;
    std::deque<Command> commands;
    std::optional<std::string> changed;
    {
      std::unique_lock lock(mutex_);
      wakeup_.wait_for(lock, std::chrono::milliseconds(100), [&] {
        return stopping_ || !steps_in_.empty() || !requests_in_.empty() || !prompts_in_.empty() ||
               !commands_.empty() ||
               changed_file_.has_value();
      });
      if (stopping_) return;
      steps.swap(steps_in_);
      requests.swap(requests_in_);
      prompts.swap(prompts_in_);
      commands.swap(commands_);
      changed.swap(changed_file_);
    }
    try {
      for (const auto& step : steps) handle_step(step);
      // A prompt is reported before its request finishes: prompts first.
      for (const auto& prompt : prompts) handle_prompt(prompt);
      for (const auto& request : requests) handle_request(request);
      if (changed) {
        try {
          reload_from(*changed);
        } catch (const std::exception& e) {
          // Counted and logged in reload_from; the running configuration stays.
        }
      }
      for (Command& command : commands) command();
      continue_scoring();
      check_triggers();
    } catch (const std::exception& e) {
      // A failed load or switch leaves the engine on the model it had; the next trigger retries.
      spdlog::error("controller: {}", exception_message(e));
      try {
        record(keep_decision(DecisionRecord::Kind::kKeep, DecisionRecord::Trigger::kError,
                             std::string("action failed, model kept: ") + exception_message(e)));
        if (phase_ == Phase::kProfiling) {
          phase_ = Phase::kServing;
          profile_.reset();
          scoring_queue_.clear();
          engine_->set_prompt_sampling(slo_.monitor_sample_rate);
        }
      } catch (const std::exception& again) {
        spdlog::error("controller: recording a failed action: {}", again.what());
      }
    }
    // The engine wakes this thread every step; the status (which ranks the table) is rebuilt
    // at most every 50 ms, and at once after an operator command or a file change. Nothing
    // may escape the thread (it would end the process): a status that cannot be built waits
    // for the next round.
    const auto now = std::chrono::steady_clock::now();
    if (!commands.empty() || changed || now - published_at >= std::chrono::milliseconds(50)) {
      try {
        publish();
      } catch (const std::exception& e) {
        spdlog::error("controller: status not refreshed: {}", exception_message(e));
      }
      published_at = now;
    }
  }
}

void Controller::handle_step(const engine::StepTelemetry& step) {
  if (step.model_epoch != epoch_) return;
  if (phase_ == Phase::kProfiling && profile_) {
    Accumulator& p = *profile_;
    p.generated += step.generated;
    p.step_seconds += step.seconds;
    p.batch_sum += static_cast<double>(step.batch);
    ++p.steps;
    p.peak = std::max(p.peak, static_cast<double>(step.running + step.waiting));
    if (step.batch > 0 && step.generated == step.batch) {
      p.decode_steps.emplace_back(static_cast<double>(step.batch), step.seconds);
    }
    return;
  }
  if (phase_ != Phase::kServing) return;
  for (const uint8_t breach : step.breaches) {
    breaches_.record(breach != 0);
    if (breach != 0) {
      ++breaches_total_;
      if (metrics_) metrics_->breaches->inc();
    }
  }
  if (metrics_) metrics_->breach_window->set(static_cast<double>(breaches_.count()));
}

void Controller::handle_request(const engine::RequestTelemetry& request) {
  ++requests_seen_;
  const bool clean = request.single_epoch && request.model_epoch == epoch_ &&
                     (request.finish == engine::Finish::kStop ||
                      request.finish == engine::Finish::kLength);
  if (!clean) return;
  finished_at_.push_back(std::chrono::steady_clock::now());
  while (finished_at_.size() > kRateWindow) finished_at_.pop_front();
  if (phase_ == Phase::kProfiling && profile_) {
    // A row needs prompt perplexity: requests whose prompt scoring was cut short (a preemption
    // mid-prompt drops partial scores) do not count towards it.
    if (!request.prompt_scores || request.prompt_scores->tokens == 0) return;
    Accumulator& p = *profile_;
    const std::vector<int32_t>& points = current_->transformer().exit_points();
    if (p.row.generated_exits.empty()) p.row.generated_exits.assign(points.size(), 0);
    for (size_t i = 0; i < points.size(); ++i) {
      if (static_cast<size_t>(points[i]) < request.exit_counts.size()) {
        p.row.generated_exits[i] += request.exit_counts[points[i]];
      }
    }
    if (request.prompt_scores) p.prompt.add(*request.prompt_scores);
    if (request.generated > 1) p.tpot_ms.push_back(request.tpot_s * 1e3);
    if (request.generated > 0) p.ttft_ms.push_back(request.ttft_s * 1e3);
    ++p.row.requests;
    if (p.row.requests >= slo_.profile_requests) finish_profile();
    return;
  }
  if (phase_ != Phase::kServing) return;
  // The latency constraints hold for the most urgent class the traffic carries: less urgent
  // requests wait behind it by design.
  if (latency_classes_.observe(request.priority)) {
    const size_t window = static_cast<size_t>(std::max<int64_t>(1, slo_.drift_window_requests));
    ttft_window_ = PercentileWindow(window);
    tpot_window_ = PercentileWindow(window);
  }
  if (request.priority != latency_classes_.most_urgent()) return;
  if (request.generated > 0) ttft_window_.add(request.ttft_s * 1e3);
  if (request.generated > 1) tpot_window_.add(request.tpot_s * 1e3);
}

void Controller::handle_prompt(const engine::PromptTelemetry& prompt) {
  if (prompt.scores.tokens == 0) return;
  const auto tokenizer = tokenizers_.find(prompt.model);
  if (tokenizer != tokenizers_.end()) {
    evidence_.add(prompt.ids, tokenizer->second,
                  std::chrono::steady_clock::now() -
                      std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                          std::chrono::duration<double>(prompt.wait_s)));
  }
  if (phase_ != Phase::kServing || prompt.model_epoch != epoch_ ||
      prompt.scores.policy_nll_sum.empty()) {
    return;
  }
  prompt_window_.emplace_back(prompt.scores.policy_nll_sum.back(), prompt.scores.tokens);
  const size_t keep = prompt_window_size();
  while (prompt_window_.size() > keep) prompt_window_.pop_front();
}

}  // namespace helios::controller
