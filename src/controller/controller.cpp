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
    std::deque<Command> commands;
    std::optional<std::string> changed;
    {
      std::unique_lock lock(mutex_);
      wakeup_.wait_for(lock, std::chrono::milliseconds(100), [&] {
        return stopping_ || !steps_in_.empty() || !requests_in_.empty() || !commands_.empty() ||
               changed_file_.has_value();
      });
      if (stopping_) return;
      steps.swap(steps_in_);
      requests.swap(requests_in_);
      commands.swap(commands_);
      changed.swap(changed_file_);
    }
    try {
      for (const auto& step : steps) handle_step(step);
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
  if (request.prompt_scores && !request.prompt_ids.empty()) {
    const auto tokenizer = tokenizers_.find(request.model);
    if (tokenizer != tokenizers_.end()) evidence_.add(request.prompt_ids, tokenizer->second);
  }
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
  if (request.generated > 0) ttft_window_.add(request.ttft_s * 1e3);
  if (request.generated > 1) tpot_window_.add(request.tpot_s * 1e3);
  if (request.prompt_scores && request.prompt_scores->tokens > 0 &&
      !request.prompt_scores->policy_nll_sum.empty()) {
    prompt_window_.emplace_back(request.prompt_scores->policy_nll_sum.back(),
                                request.prompt_scores->tokens);
    const size_t keep = prompt_window_size();
    while (prompt_window_.size() > keep) prompt_window_.pop_front();
  }
}

double Controller::live_prompt_perplexity() const {
  double nll = 0;
  int64_t tokens = 0;
  for (const auto& [n, t] : prompt_window_) nll += n, tokens += t;
  return tokens > 0 ? std::exp(nll / static_cast<double>(tokens)) : 0.0;
}

// Sampled prompts in the drift window: the requests of the window that get scored.
size_t Controller::prompt_window_size() const {
  return static_cast<size_t>(std::max(
      4.0, std::round(static_cast<double>(slo_.drift_window_requests) * slo_.monitor_sample_rate)));
}

void Controller::check_triggers() {
  if (phase_ != Phase::kServing) return;
  const int64_t depth = current_->transformer().loaded_layers();
  // 1. Confidence breaches.
  // When the table itself predicts more breaches than the maximum for this choice (a full
  // load no candidate beats), the counter says nothing new: the drift and interval triggers
  // watch for a change of traffic instead of re-profiling on every window.
  const ProfileRow* current_row = table_.find(current_name_);
  const bool breaches_expected =
      current_row != nullptr &&
      (1.0 - coverage(*current_row, depth)) * static_cast<double>(slo_.breach_window_tokens) >=
          static_cast<double>(slo_.breach_max);
  if (breaches_.count() > slo_.breach_max && !breaches_expected) {
    const std::string why = fmt::format("{} breaches in the last {} tokens (maximum {})",
                                        breaches_.count(), breaches_.size(), slo_.breach_max);
    breaches_.reset();
    const Decision d = decide_on_breach(table_, current_name_, depth, slo_, limits(), requests_seen_);
    switch (d.kind) {
      case Decision::Kind::kReprofile:
        start_profiling(DecisionRecord::Trigger::kBreach, why + "; " + d.reason);
        return;
      case Decision::Kind::kExtend:
      case Decision::Kind::kSwitch:
        apply(d.option, std::max<int64_t>(1, cap_for(d.option)), DecisionRecord::Trigger::kBreach,
              why + "; " + d.reason, nlohmann::json{{"option", d.option.to_json()}});
        return;
      case Decision::Kind::kKeep: return;
    }
  }
  // 2. SLO drift: a full window of live figures against the SLO file.
  const size_t window = static_cast<size_t>(slo_.drift_window_requests);
  std::vector<std::string> violations;
  if (slo_.p95_ttft_ms && ttft_window_.size() >= window &&
      ttft_window_.percentile(0.95) > *slo_.p95_ttft_ms) {
    violations.push_back(fmt::format("p95 TTFT {:.2f} ms > {:.2f} ms", ttft_window_.percentile(0.95),
                                     *slo_.p95_ttft_ms));
  }
  if (slo_.p95_tpot_ms && tpot_window_.size() >= window &&
      tpot_window_.percentile(0.95) > *slo_.p95_tpot_ms) {
    const double live = tpot_window_.percentile(0.95);
    if (max_batch_ > 1 && violations.empty()) {
      // The step model predicted this cap would do; the measurement says otherwise. Correct
      // the cap in proportion before anything costlier (a re-profile).
      const auto cap = std::max<int64_t>(
          1, std::min<int64_t>(max_batch_ - 1, static_cast<int64_t>(std::floor(
                                                   static_cast<double>(max_batch_) *
                                                   *slo_.p95_tpot_ms / live))));
      const std::string why = fmt::format(
          "live p95 time per output token {:.3f} ms > {:.3f} ms at a batch cap of {}", live,
          *slo_.p95_tpot_ms, max_batch_);
      DecisionRecord limit =
          keep_decision(DecisionRecord::Kind::kLimit, DecisionRecord::Trigger::kDrift, why);
      limit.max_batch = cap;
      limit.figures = {{"live_p95_tpot_ms", live},
                       {"bound_ms", *slo_.p95_tpot_ms},
                       {"previous_cap", max_batch_}};
      record(std::move(limit));
      set_max_batch(cap);
      reset_windows();
      return;
    }
    violations.push_back(fmt::format("p95 time per output token {:.3f} ms > {:.3f} ms", live,
                                     *slo_.p95_tpot_ms));
  }
  const size_t prompts_needed = prompt_window_size();
  const double best = best_full_perplexity(table_);
  const ProfileRow* row = table_.find(current_name_);
  if (prompt_window_.size() >= prompts_needed && std::isfinite(best) && row != nullptr) {
    const DriftCheck drift = perplexity_drift(prompt_window_, *row, depth,
                                              (1.0 + slo_.max_perplexity_increase) * best);
    if (drift.drifted) violations.push_back(drift.reason);
  }
  if (!violations.empty()) {
    std::string why;
    for (const auto& v : violations) why += (why.empty() ? "" : "; ") + v;
    start_profiling(DecisionRecord::Trigger::kDrift,
                    "sustained SLO violation over the drift window: " + why);
    return;
  }
  // 3. Periodic re-profiling, once enough requests and enough serving time have passed: a pass
  // serves every candidate at full depth and recomputes the batch at each switch, so under
  // heavy traffic a request count alone would keep the server profiling most of the time.
  if (slo_.reprofile_interval_requests <= 0 ||
      requests_seen_ - last_profiled_at_ < slo_.reprofile_interval_requests) {
    return;
  }
  const double served_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - pass_ended_).count();
  if (served_seconds >= serving_seconds_before_reprofile(last_pass_seconds_,
                                                         slo_.max_profiling_share)) {
    start_profiling(DecisionRecord::Trigger::kInterval,
                    fmt::format("{} requests and {:.1f} s since the last profile (which took {:.1f} "
                                "s; at most {:.0f}% of the time goes to profiling)",
                                requests_seen_ - last_profiled_at_, served_seconds,
                                last_pass_seconds_, 100 * slo_.max_profiling_share));
  }
}

void Controller::start_profiling(DecisionRecord::Trigger trigger, const std::string& reason) {
  profile_queue_.clear();
  scoring_queue_.clear();
  evidence_.begin_pass();
  ++passes_;
  pass_from_ = current_name_;
  pass_started_ = std::chrono::steady_clock::now();
  const Candidate* served = find_candidate(current_name_);
  // Sample mode measures the served model where it stands (no switch, no recompute); a model
  // no longer in the repository cannot be predicted from, so its pass serves the candidates.
  const bool sample = slo_.profile_mode == ProfileMode::kSample && served != nullptr;
  if (sample) {
    profile_queue_.push_back(current_name_);
  } else {
    for (const Candidate& c : shortlist_) profile_queue_.push_back(c.name);
  }
  spdlog::info("controller: re-profiling {} candidates ({}, {}: {})", shortlist_.size(),
               sample ? "scored on the served model's prompts" : "each served in turn",
               to_string(trigger), reason);
  record(DecisionRecord{.kind = DecisionRecord::Kind::kProfile,
                        .trigger = trigger,
                        .from_model = current_name_,
                        .from_layers = current_->transformer().loaded_layers(),
                        .to_model = profile_queue_.front(),
                        .to_layers = sample ? current_->transformer().loaded_layers() : 0,
                        .max_batch = sample ? max_batch_ : options_.max_running,
                        .reason = reason});
  if (sample) {
    profile_queue_.clear();
    begin_profile(served);
    return;
  }
  profile_next();
}

void Controller::profile_next() {
  while (!profile_queue_.empty()) {
    const std::string name = profile_queue_.front();
    profile_queue_.pop_front();
    const Candidate* candidate = find_candidate(name);
    if (candidate == nullptr) {
      spdlog::warn("controller: profiling skips {}: no longer in the repository", name);
      continue;
    }
    const int64_t full = candidate->config.num_hidden_layers;
    // Profiling runs at full depth, so the row sees every exit the traffic would take.
    if (name != current_name_ || current_->transformer().loaded_layers() != full) {
      try {
        switch_to(*candidate, full, "profile");
      } catch (const std::exception& e) {
        // Unavailable now (switch_to recorded why); the pass goes on with the others.
        spdlog::warn("controller: profiling skips {}: {}", name, exception_message(e));
        continue;
      }
    }
    set_max_batch(options_.max_running);
    begin_profile(candidate);
    return;
  }
  end_profiling_pass();
}

void Controller::begin_profile(const Candidate* candidate) {
  phase_ = Phase::kProfiling;
  profile_ = std::make_unique<Accumulator>();
  profile_->candidate = candidate;
  profile_->epoch = epoch_;
  profile_->joules_start = options_.energy_meter->joules();
  engine_->set_prompt_sampling(1.0);
}

void Controller::finish_profile() {
  Accumulator& p = *profile_;
  ProfileRow& row = p.row;
  const Candidate& c = *p.candidate;
  row.model = c.name;
  row.path = c.path;
  row.footprint = c.footprint;
  row.profiled_layers = current_->transformer().loaded_layers();
  row.exit_points = current_->transformer().exit_points();
  const bool sample = slo_.profile_mode == ProfileMode::kSample;
  // In sample mode this row is the served model's live figures at its depth; every
  // candidate's quality columns come from the scoring that follows.
  if (sample || !score_evidence(row)) {
    row.prompt_nll_sum = p.prompt.nll_sum;
    row.prompt_policy_nll_sum = p.prompt.policy_nll_sum;
    row.prompt_tokens = p.prompt.tokens;
  }
  row.decode_tokens_per_second = p.step_seconds > 0 ? static_cast<double>(p.generated) / p.step_seconds : 0;
  row.mean_batch = p.steps > 0 ? p.batch_sum / static_cast<double>(p.steps) : 0;
  row.peak_concurrency = p.peak;
  PercentileWindow tpot(p.tpot_ms.size() + 1), ttft(p.ttft_ms.size() + 1);
  for (double v : p.tpot_ms) tpot.add(v);
  for (double v : p.ttft_ms) ttft.add(v);
  row.tpot_p95_ms = tpot.percentile(0.95);
  row.tpot_mean_ms = tpot.mean();
  row.ttft_p95_ms = ttft.percentile(0.95);
  const double joules = options_.energy_meter->joules() - p.joules_start;
  row.energy_joules_per_token = p.generated > 0 ? joules / static_cast<double>(p.generated) : 0;
  row.profiled_at_request = requests_seen_;
  if (sample) {
    // `row` and `p` live in profile_: both are taken before it goes.
    ProfileRow served = std::move(row);
    const StepModel steps = fit_step_model(p.decode_steps);
    profile_.reset();
    begin_scoring(std::move(served), steps);
    return;
  }
  step_models_[c.name] = fit_step_model(p.decode_steps);
  table_.upsert(row);
  if (metrics_) metrics_->profiling_runs->inc();
  spdlog::info("controller: profiled {} at {} layers on {} requests: {:.0f} tok/s, p95 TPOT {:.2f} "
               "ms, prompt perplexity {:.2f} ({})",
               c.name, row.profiled_layers, row.requests, row.decode_tokens_per_second,
               row.tpot_p95_ms, row.prompt_tokens > 0 ? full_depth_perplexity(row) : 0.0,
               row.evidence_prompts > 0
                   ? fmt::format("{} shared sample prompts, scored in {:.3f} s",
                                 row.evidence_prompts, row.evidence_seconds)
                   : std::string("its own requests"));
  profile_.reset();
  if (!profile_queue_.empty()) {
    profile_next();
    return;
  }
  end_profiling_pass();
}

bool Controller::score_evidence(ProfileRow& row) {
  if (slo_.evidence_prompts <= 0) return false;
  const auto tokenizer = tokenizers_.find(row.model);
  if (tokenizer == tokenizers_.end()) return false;
  model::ExitPolicy policy = engine_->options().exit_policy;
  policy.threshold = engine_->exit_threshold();
  // Off the engine's path: the candidate's weights are shared read-only, nothing of the
  // engine's KV cache or batch is touched. A failure keeps the live telemetry.
  try {
    const std::optional<Evidence> evidence = score_on_sample(
        current_->transformer(), evidence_.pass_sample(), tokenizer->second, policy);
    if (!evidence || evidence->scores.tokens == 0) return false;
    row.prompt_nll_sum = evidence->scores.nll_sum;
    row.prompt_policy_nll_sum = evidence->scores.policy_nll_sum;
    row.prompt_tokens = evidence->scores.tokens;
    row.evidence_prompts = evidence->prompts;
    row.evidence_seconds = evidence->seconds;
    row.prompt_evidence = evidence->per_prompt;
    row.evidence_key = evidence_key(passes_, tokenizer->second);
    if (metrics_) metrics_->evidence_seconds->inc(evidence->seconds);
    return true;
  } catch (const std::exception& e) {
    spdlog::warn("controller: scoring {} on the shared prompt sample failed, its own requests' "
                 "telemetry stands: {}",
                 row.model, exception_message(e));
    return false;
  }
}

void Controller::begin_scoring(ProfileRow served, StepModel steps) {
  served_row_ = std::move(served);
  served_steps_ = steps;
  scoring_queue_.clear();
  for (const Candidate& c : shortlist_) scoring_queue_.push_back(c.name);
  next_score_at_ = std::chrono::steady_clock::now();
  spdlog::info("controller: measured {} at {} layers on {} requests ({:.0f} tok/s, p95 TPOT {:.2f} "
               "ms); scoring {} candidates on the prompt sample",
               served_row_.model, served_row_.profiled_layers, served_row_.requests,
               served_row_.decode_tokens_per_second, served_row_.tpot_p95_ms,
               scoring_queue_.size());
  if (scoring_queue_.empty()) end_profiling_pass();
}

void Controller::continue_scoring() {
  if (phase_ != Phase::kProfiling || profile_ || scoring_queue_.empty()) return;
  const auto now = std::chrono::steady_clock::now();
  if (now < next_score_at_) return;
  const std::string name = scoring_queue_.front();
  scoring_queue_.pop_front();
  const Candidate* candidate = find_candidate(name);
  const auto tokenizer = tokenizers_.find(name);
  model::ExitPolicy policy = engine_->options().exit_policy;
  policy.threshold = engine_->exit_threshold();
  std::optional<Evidence> evidence;
  if (candidate == nullptr || tokenizer == tokenizers_.end()) {
    spdlog::warn("controller: scoring skips {}: no longer in the repository", name);
  } else {
    try {
      // Read from the checkpoint one layer at a time, beside the engine, which serves on (the
      // served model too: it may be truncated, and every row comes from the same procedure).
      evidence = score_streamed_on_sample(candidate->path, evidence_.pass_sample(),
                                          tokenizer->second, policy, options_.load.dtype,
                                          options_.load.device);
    } catch (const std::exception& e) {
      // Weights that cannot be read would not load either.
      mark_unavailable(name, exception_message(e));
      spdlog::warn("controller: scoring skips {}: {}", name, exception_message(e));
    }
  }
  if (evidence && evidence->scores.tokens > 0) {
    ProfileRow row = predict_row(served_row_, *candidate, evidence->scores, evidence->exit_points,
                                 evidence->generated_exits, limits());
    row.evidence_prompts = evidence->prompts;
    row.evidence_seconds = evidence->seconds;
    row.evidence_peak_bytes = evidence->peak_bytes;
    row.prompt_evidence = std::move(evidence->per_prompt);
    row.evidence_key = evidence_key(passes_, tokenizer->second);
    row.predicted = true;
    step_models_[name] = predict_step_model(served_steps_, served_row_, row);
    spdlog::info("controller: scored {} on {} sample prompts in {:.3f} s ({:.1f} MiB held): prompt "
                 "perplexity {:.2f}, predicted {:.0f} tok/s",
                 name, row.evidence_prompts, row.evidence_seconds,
                 static_cast<double>(row.evidence_peak_bytes) / (1 << 20),
                 full_depth_perplexity(row), row.decode_tokens_per_second);
    table_.upsert(std::move(row));
    if (metrics_) {
      metrics_->profiling_runs->inc();
      metrics_->evidence_seconds->inc(evidence->seconds);
    }
    // The scoring shares the machine with the engine: it takes at most max_evidence_share of
    // the wall time while the pass lasts.
    const double share = slo_.max_evidence_share;
    next_score_at_ = std::chrono::steady_clock::now() +
                     std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                         std::chrono::duration<double>(evidence->seconds * (1 - share) / share));
  } else if (candidate != nullptr && !evidence) {
    spdlog::info("controller: scoring skips {}: no prompt of its tokenizer in the sample", name);
  }
  if (scoring_queue_.empty()) end_profiling_pass();
}

void Controller::end_profiling_pass() {
  profile_.reset();
  scoring_queue_.clear();
  last_profiled_at_ = requests_seen_;
  pass_ended_ = std::chrono::steady_clock::now();
  last_pass_seconds_ = std::chrono::duration<double>(pass_ended_ - pass_started_).count();
  phase_ = Phase::kServing;
  decide(DecisionRecord::Trigger::kProfiled, "profiling finished");
}

}  // namespace helios::controller
