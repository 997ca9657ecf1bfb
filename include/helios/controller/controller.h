#pragma once

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <variant>
#include <vector>

#include "helios/controller/batch_cap.h"
#include "helios/controller/breach_counter.h"
#include "helios/controller/evidence.h"
#include "helios/controller/performance_table.h"
#include "helios/controller/policy.h"
#include "helios/controller/resident_policy.h"
#include "helios/controller/slo_config.h"
#include "helios/controller/sliding_window.h"
#include "helios/controller/switch_gate.h"
#include "helios/engine/model_instance.h"
#include "helios/engine/telemetry.h"
#include "helios/metrics/energy_meter.h"
#include "helios/metrics/registry.h"
#include "helios/model/checkpoint.h"

namespace helios::engine {
class ServingEngine;
}

namespace helios::controller {

class ConfigWatcher;

// Loads model directory `dir` to `depth` layers (0: all), for the start-up model or a switch.
// `serving` is the instance serving now when it comes from the same directory (the load may
// share its weights), else null.
using ModelLoader = std::function<std::shared_ptr<const engine::ModelInstance>(
    const std::filesystem::path& dir, int64_t depth, const engine::ModelInstance* serving)>;
// engine::ModelInstance::load with `load`'s dtype and device, or with_depth of `serving`.
ModelLoader default_model_loader(model::LoadOptions load);

struct ControllerOptions {
  std::filesystem::path slo_file;
  int64_t memory_budget_bytes = 0;  // weights + KV cache, held during switches too
  int64_t kv_block_size = 16;
  int64_t max_running = 64;         // the scheduler's limit; the controller may cap below it
  model::LoadOptions load;          // dtype and device of every load (max_layers is ignored)
  // Charged to each profiled candidate per generated token; shared with the daemon so that its
  // energy metrics and the table agree. Null: a CPU estimate at the default watts per core.
  std::shared_ptr<metrics::EnergyMeter> energy_meter;
  size_t decisions_kept = 32;
  std::chrono::milliseconds watch_interval{200};
  // Every model load goes through it; null: default_model_loader(load). A test replaces it to
  // make a load fail.
  ModelLoader loader;
  // Fault injection for tests: called while an SLO edit is applied, once the controller's parts
  // of it are built and before any takes effect; a throw fails the edit as a failed allocation
  // would.
  std::function<void(const SloConfig& next)> applying_slo;
};

// One decision of the controller and the figures behind it.
struct DecisionRecord {
  // kResident: the controller serves a resident set (resident_policy.h); to_model names its
  // members "a+b", figures.set their depths, shares and pools.
  enum class Kind { kProfile, kSwitch, kExtend, kTruncate, kKeep, kLimit, kPin, kUnpin, kResident };
  enum class Trigger {
    kStartup,
    kProfiled,
    kBreach,
    kDrift,
    kInterval,
    kSloChange,
    kOperator,
    kError,
  };

  std::chrono::system_clock::time_point time{};
  Kind kind = Kind::kKeep;
  Trigger trigger = Trigger::kStartup;
  std::string from_model{};
  int64_t from_layers = 0;
  std::string to_model{};
  int64_t to_layers = 0;
  int64_t max_batch = 0;
  std::string reason{};
  nlohmann::json figures{};
  // A change the ranking preferred, weighed against its cost (kept or made as the gate said).
  std::optional<GateResult> gate{};
};

// The names logs, JSON and the Admin API give them: "profile", "slo_change", ...
std::string_view to_string(DecisionRecord::Kind kind);
std::string_view to_string(DecisionRecord::Trigger trigger);

// A member of a resident set an operator pins: a candidate and its depth (0: the controller's
// choice, as for pin).
struct ResidentTarget {
  std::string model;
  int64_t layers = 0;
};

struct ControllerStatus {
  std::string phase;  // profiling | serving | pinned
  SloConfig slo;
  std::string active_model;
  int64_t loaded_layers = 0, total_layers = 0, max_batch = 0, weight_bytes = 0;
  std::string profiling_model;
  std::vector<std::string> candidates;
  // Models of the repository that cannot be served now, and why: a config.json that did not
  // scan, or weights that failed to load (at start-up or at a switch). A model leaves the list
  // when a later load of it succeeds, or when the repository is scanned again.
  std::vector<UnavailableModel> unavailable;
  std::vector<ProfileRow> table;
  std::vector<Option> options;  // one per row, at the depth the policy picks, best first
  std::vector<bool> stale;      // per table row
  std::vector<DecisionRecord> decisions;
  int64_t requests_seen = 0, breaches_in_window = 0, breaches_total = 0;
  int64_t reloads_applied = 0, reloads_rejected = 0;
  std::string last_reload_error;
  int64_t peak_memory_bytes = 0;
  int64_t evidence_reserve_bytes = 0;  // budget kept for scoring candidates (sample mode)
  double live_p95_ttft_ms = 0, live_p95_tpot_ms = 0, live_prompt_perplexity = 0;
  int64_t live_window_requests = 0;
};

// The HELIOS controller. It owns the model repository view, the Performance History Table and
// the SLO file. A thread of its own profiles the shortlisted candidates on live requests
// (each serves the next `profile_requests` requests in turn; their tokens go to the clients),
// picks a model and a depth with the greedy partial load, and watches the confidence breach
// counter, the SLO figures and the request count to extend, switch or re-profile. Loads run on
// that thread while the engine keeps serving the old model; the engine switches at a step
// boundary and recomputes the sequences in flight. Operators pin, unpin and reload through it.
class Controller final : public engine::TelemetrySink {
 public:
  Controller(ControllerOptions options, metrics::Registry* registry);
  ~Controller() override;
  Controller(const Controller&) = delete;
  Controller& operator=(const Controller&) = delete;

  // Reads the SLO file, scans and shortlists the repository and loads the first candidate that
  // loads at full depth (profiling starts with it); a candidate that fails is unavailable and
  // the next one in the shortlist's order is tried, beyond candidates_top_k if need be. Throws
  // helios::Error naming the problem, or listing every candidate and why it failed when none
  // loads.
  void prepare();
  // The model and pool size the engine starts with (after prepare()).
  std::shared_ptr<const engine::ModelInstance> initial_model() const { return current_; }
  const std::string& initial_model_name() const { return current_name_; }
  int64_t initial_kv_blocks() const { return initial_kv_blocks_; }

  // Starts the controller thread and the SLO file watcher; `engine` was built with
  // initial_model() and this controller as its telemetry sink, and outlives stop().
  void start(engine::ServingEngine* engine);
  void stop();

  // Operator commands, run on the controller thread; they throw helios::Error
  // (kInvalidArgument naming the field, kNotFound for an unknown model).
  DecisionRecord pin(const std::string& model, int64_t layers);
  // Pins a resident set: 2 to kMaxResidentModels candidates, each at its depth (0: as pin
  // chooses), with KV pools split evenly from what their weights leave of the budget
  // (kResourceExhausted when the weights and one full-context sequence each do not fit).
  // The engine routes every request to one member. pin and unpin release the set.
  DecisionRecord pin_set(std::vector<ResidentTarget> targets);
  DecisionRecord unpin();
  // Re-reads the SLO file; returns whether it changed. Invalid: throws, the old one stays.
  bool reload();
  ControllerStatus status() const;

  // engine::TelemetrySink (engine thread): queue and return.
  void on_step(const engine::StepTelemetry& step) override;
  void on_request(engine::RequestTelemetry request) override;
  void on_prompt(engine::PromptTelemetry prompt) override;

 private:
  enum class Phase { kProfiling, kServing, kPinned };
  static std::string phase_name(Phase phase);
  struct Accumulator;
  struct Metrics;
  using Command = std::function<void()>;

  void run();
  void handle_step(const engine::StepTelemetry& step);
  void handle_request(const engine::RequestTelemetry& request);
  // A sampled prompt as its prefill scored it: the evidence sample and the drift window take
  // the prompts being admitted, not those of requests finishing (a backlog's worth older).
  void handle_prompt(const engine::PromptTelemetry& prompt);
  void check_triggers();
  size_t prompt_window_size() const;
  // Prompt perplexity of the sampled prompts in the drift window (0 when none).
  double live_prompt_perplexity() const;

  void start_profiling(DecisionRecord::Trigger trigger, const std::string& reason);
  void profile_next();
  // Starts a table row for `candidate`, the model the engine serves now. Profile mode "serve":
  // false when the candidate was screened instead (scored on the pass's sample at once and
  // outclassed there, policy.h `outclassed`): its row is in the table and it serves nothing.
  bool begin_profile(const Candidate* candidate);
  void finish_profile();
  // The row's prompt columns from scoring the served candidate on the pass's shared sample;
  // false (the row keeps the live requests' telemetry) when there is no sample for it.
  bool score_evidence(ProfileRow& row);
  // Profile mode "sample": the served model's live row (and step model) is measured; every
  // shortlisted candidate is then scored on the pass's sample, one per turn of the thread.
  void begin_scoring(ProfileRow served, StepModel steps);
  // Scores the next candidate of the pass when its turn has come (see max_evidence_share) and
  // predicts its row from the served one; ends the pass after the last.
  void continue_scoring();
  void decide(DecisionRecord::Trigger trigger, const std::string& reason);
  // What moving the engine to `to` costs now (the batch in flight recomputed) and the serving
  // time until the next periodic re-profile, for the switch gate.
  SwitchCost switch_cost(const Option& to) const;
  // Requests finished per second over the last kRateWindow; 0 before two.
  double request_rate() const;
  void apply(const Option& option, int64_t cap, DecisionRecord::Trigger trigger,
             const std::string& reason, nlohmann::json figures,
             std::optional<GateResult> gate = std::nullopt);
  // Sequences `option` may run at once: its KV capacity within the scheduler's limit.
  int64_t most_sequences(const Option& option) const;
  // The step model profiled for `model`; one that predicts nothing when there is none.
  StepModel step_model_for(const std::string& model) const;
  // The concurrency cap for `option` under the SLO (see batch_cap); 0 when not even one
  // sequence meets the time-per-output-token bound.
  int64_t cap_for(const Option& option) const;
  // A decision that keeps the served model and depth (and the current cap).
  DecisionRecord keep_decision(DecisionRecord::Kind kind, DecisionRecord::Trigger trigger,
                               std::string reason) const;
  // Loads the candidate at `depth` within the memory budget and has the engine switch to it;
  // `reason` labels the switch metrics.
  void switch_to(const Candidate& candidate, int64_t depth, const std::string& reason);
  // What serves: "a+b" for a resident set, else the model's name.
  std::string served_name() const;
  // A member of a set to load: the candidate, its depth and its share of the spare KV bytes.
  struct SetTarget {
    const Candidate* candidate = nullptr;
    int64_t depth = 0;
    double share = 1.0;
  };
  // Loads `members` within the budget (the serving pools shrunk to one sequence meanwhile) and
  // has the engine serve them as one resident set, pools by share; returns each member's
  // figures (layers, weights, pool). Throws kResourceExhausted, before anything changes, when
  // the set does not fit.
  nlohmann::json serve_set(const std::vector<SetTarget>& members);
  // The controller's own resident set (a pass's decision): served, recorded as kResident.
  void apply_set(const SetOption& set, DecisionRecord::Trigger trigger, const std::string& reason,
                 nlohmann::json figures, std::optional<GateResult> gate);
  // Every resident pool down to one full-context sequence (room for loading a set).
  void shrink_resident_pools();
  // A pinned set gives way to its first member alone, with the budget's pool.
  void collapse_resident_set();
  // The end of an operator's pin: profiling stops, the cap is lifted, `decision` is recorded.
  void enter_pinned(DecisionRecord& decision);
  void set_max_batch(int64_t cap);
  // The repository as an SLO file would have it: its candidates, every one that fits the
  // budget in shortlist order (ranked), the first candidates_top_k of those (shortlist), and
  // the models whose config did not scan.
  struct Repository {
    std::vector<Candidate> candidates, ranked, shortlist;
    std::vector<UnavailableModel> unavailable;
    std::map<std::string, uint64_t> tokenizers;  // per candidate: tokenizer_fingerprint
    // Profile mode "sample": bytes of the budget kept for scoring the largest candidate
    // (streamed_scoring_bytes); the weights and KV pool share the rest.
    int64_t evidence_reserve = 0;
  };
  // Takes `r` as the repository served from (its unavailable models replace the old ones).
  void adopt(Repository r);
  // A load of `candidate` at `depth` through the loader; a failure marks it unavailable.
  std::shared_ptr<const engine::ModelInstance> load(const Candidate& candidate, int64_t depth);
  void mark_unavailable(const std::string& name, const std::string& reason);
  void mark_available(const std::string& name);
  // Nothing (more) to profile: the pass ends and the controller decides from the table.
  void end_profiling_pass();
  // Grows the engine's pool back after a switch that shrank it failed; logs what it cannot.
  void restore_pool(int64_t blocks) noexcept;
  // Scans and shortlists `slo`'s repository; throws helios::Error naming model_repository
  // when no candidate fits the memory budget.
  Repository scan(const SloConfig& slo) const;
  // Scans and shortlists `next`'s repository when it (or candidates_top_k) differs from the
  // running one; throws helios::Error when no candidate fits, before anything changes.
  std::optional<Repository> rescan_for(const SloConfig& next) const;
  // Puts `next` (and the rescanned repository) in force, all of it or, when any part throws,
  // none of it; returns the changes as the log names them.
  std::string commit_slo(const SloConfig& next, std::optional<Repository> rescanned);
  // Re-profiles or decides for the SLO just committed (`old` was in force before).
  void act_on_slo(const SloConfig& old, bool repository_changed, const std::string& changes);
  bool reload_from(const std::string& text);
  // Counts and logs a rejected SLO file; the running configuration stays.
  void reject_reload(const std::string& why);
  void record(DecisionRecord decision);
  void reset_windows();
  // The server's limits, the budget less what sample mode keeps for scoring candidates.
  PolicyLimits limits() const;
  PolicyLimits limits_for(int64_t evidence_reserve) const;
  const Candidate* find_candidate(const std::string& name) const;
  template <typename T>
  T run_command(std::function<T()> body);

  ControllerOptions options_;
  metrics::Registry* registry_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<ConfigWatcher> watcher_;

  // Controller thread (and prepare()) only, apart from what status() copies under mutex_.
  SloConfig slo_;
  std::string slo_text_;
  std::vector<Candidate> repository_, shortlist_;
  std::vector<UnavailableModel> unavailable_;
  PerformanceTable table_;
  std::shared_ptr<const engine::ModelInstance> current_;  // the first of a pinned set
  std::string current_name_;
  std::vector<std::string> resident_names_;  // a resident set's members; empty for one model
  // The controller's set as its decision chose it (empty for a pinned set or one model); the
  // breach counter expects the share of generated tokens its members' depths do not cover.
  std::optional<SetOption> resident_choice_;
  // Requests routed to each member when the current window of the live leave rule began.
  std::vector<int64_t> resident_routed_base_;
  int64_t initial_kv_blocks_ = 0;
  engine::ServingEngine* engine_ = nullptr;
  uint64_t epoch_ = 0;  // the engine's model epoch of current_
  Phase phase_ = Phase::kProfiling;
  std::deque<std::string> profile_queue_;
  std::unique_ptr<Accumulator> profile_;
  int64_t max_batch_ = 0;
  BreachCounter breaches_{100};
  PercentileWindow ttft_window_{32}, tpot_window_{32};  // of the most urgent class
  UrgentClass latency_classes_;
  std::deque<std::pair<double, int64_t>> prompt_window_;  // sampled prompts: NLL, tokens
  EvidenceSample evidence_;                        // recent sampled prompts (token ids)
  std::map<std::string, uint64_t> tokenizers_;     // per candidate: tokenizer_fingerprint
  int64_t evidence_reserve_ = 0;                   // Repository::evidence_reserve in force
  int64_t requests_seen_ = 0, last_profiled_at_ = 0, breaches_total_ = 0;
  // The profiling pass under way (or the last one) began here; the last one took this long and
  // ended here. Periodic re-profiles are spaced by them (SloConfig::max_profiling_share).
  std::chrono::steady_clock::time_point pass_started_{}, pass_ended_{};
  double last_pass_seconds_ = 0;
  // Profiling passes begun so far (keys each pass's sample), and the model served when the
  // last one began: the option a pass's decision weighs a switch against.
  uint64_t passes_ = 0;
  std::string pass_from_;
  DecisionRecord::Trigger pass_trigger_ = DecisionRecord::Trigger::kStartup;
  int drift_backoff_ = 0;  // drift.h next_drift_backoff: the window is 2^this times the SLO's
  // When the last clean requests finished (at most kRateWindow): the request rate the switch
  // gate turns the re-profile interval into seconds with.
  std::deque<std::chrono::steady_clock::time_point> finished_at_;
  int64_t reloads_applied_ = 0, reloads_rejected_ = 0;
  std::string last_reload_error_;
  int64_t peak_memory_bytes_ = 0;
  std::map<std::string, StepModel> step_models_;  // per profiled model
  // Profile mode "sample": candidates of the pass left to score, the served model's live row
  // and step model they are predicted from, and when the next one may be scored.
  std::deque<std::string> scoring_queue_;
  ProfileRow served_row_;
  StepModel served_steps_;
  std::chrono::steady_clock::time_point next_score_at_{};

  // Shared with the engine thread, operator threads and status().
  mutable std::mutex mutex_;
  std::condition_variable wakeup_;
  std::deque<engine::StepTelemetry> steps_in_;
  std::deque<engine::RequestTelemetry> requests_in_;
  std::deque<engine::PromptTelemetry> prompts_in_;
  std::deque<Command> commands_;
  std::optional<std::string> changed_file_;  // from the watcher
  std::deque<DecisionRecord> decisions_;
  ControllerStatus published_;  // refreshed by the controller thread
  // Set under mutex_ (the wake-up condition reads it there); a command that runs on the thread
  // reads it without the lock.
  std::atomic<bool> stopping_{false};
  std::thread thread_;

  void publish();
};

}  // namespace helios::controller
