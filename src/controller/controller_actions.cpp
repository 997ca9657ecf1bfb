// The controller's actions: loading and switching within the memory budget, applying SLO
// edits, the operator commands and the published status.
#include <c10/core/ScalarType.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "helios/common/error.h"
#include "helios/common/exception_message.h"
#include "helios/common/files.h"
#include "helios/common/logging.h"
#include "helios/controller/controller.h"
#include "helios/engine/memory_plan.h"
#include "helios/engine/serving_engine.h"
#include "controller_internal.h"

namespace helios::controller {
namespace {

// Runs `undo` when the scope is left by an exception or an early return, unless dismissed.
template <class F>
class UndoGuard {
 public:
  explicit UndoGuard(F undo) : undo_(std::move(undo)) {}
  ~UndoGuard() {
    if (armed_) undo_();
  }
  UndoGuard(const UndoGuard&) = delete;
  UndoGuard& operator=(const UndoGuard&) = delete;
  void arm() { armed_ = true; }
  void dismiss() { armed_ = false; }

 private:
  F undo_;
  bool armed_ = false;
};

}  // namespace

ModelLoader default_model_loader(model::LoadOptions load) {
  return [load](const std::filesystem::path& dir, int64_t depth,
                const engine::ModelInstance* serving) -> std::shared_ptr<const engine::ModelInstance> {
    if (serving != nullptr) return engine::ModelInstance::with_depth(*serving, depth);
    model::LoadOptions options = load;
    options.max_layers = depth;
    return engine::ModelInstance::load(dir, options);
  };
}

void Controller::switch_to(const Candidate& candidate, int64_t depth, const std::string& reason) {
  const int64_t budget = limits().memory_budget_bytes;
  const int64_t block = options_.kv_block_size;
  const bool same_model = helios::same_directory(current_->loaded().dir, candidate.path);
  const int64_t current_depth = current_->transformer().loaded_layers();
  const int64_t current_weights = current_->loaded().weights.resident_bytes();
  // Bytes the load adds while the old model still serves: a deeper load of the same model
  // shares the layers it already has.
  const int64_t added = same_model
                            ? std::max<int64_t>(0, depth - current_depth) * candidate.footprint.layer_bytes
                            : candidate.footprint.weight_bytes(depth);
  const engine::EngineStats before = engine_->stats();
  // Whatever fails from here on (the load, the budget, the engine's switch) leaves the engine
  // serving as before: a pool shrunk to make room for the load grows back. Declared before
  // `next` so that a failed load's weights are freed before the pool grows.
  auto regrow = [this, blocks = before.kv_blocks_total] { restore_pool(blocks); };
  UndoGuard<decltype(regrow)> restore(regrow);
  int64_t kv_bytes = before.kv_cache_bytes;
  if (current_weights + kv_bytes + added > budget) {
    // Make room first: the pool shrinks (its sequences are recomputed into the smaller pool),
    // so weights of both models plus the KV cache stay within the budget during the load.
    const ModelFootprint footprint = ModelFootprint::of(current_->transformer());
    const int64_t per_block = footprint.kv_block_bytes(current_depth, block);
    const int64_t one_sequence = footprint.sequence_blocks(block);
    int64_t blocks = (budget - current_weights - added) / per_block;
    if (blocks < one_sequence) {
      spdlog::warn("controller: loading {} at {} layers next to {} exceeds the memory budget by "
                   "{:.2f} MiB even with a one-sequence KV pool",
                   candidate.name, depth, current_name_,
                   (current_weights + added + one_sequence * per_block - budget) / 1048576.0);
      blocks = one_sequence;
    }
    if (blocks < before.kv_blocks_total) {
      restore.arm();
      engine_->resize_kv(blocks).get();
      kv_bytes = blocks * per_block;
    }
  }
  peak_memory_bytes_ = std::max(peak_memory_bytes_, current_weights + kv_bytes + added);

  const auto t0 = std::chrono::steady_clock::now();
  std::shared_ptr<const engine::ModelInstance> next = load(candidate, depth);
  const double load_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int64_t blocks = engine::kv_blocks_for_budget(*next, budget, block, "memory.budget_mib");
  engine_->switch_model(next, candidate.name, blocks).get();
  restore.dismiss();  // the new model's pool is sized for the budget
  const std::string old_name = current_name_;
  current_ = std::move(next);
  current_name_ = candidate.name;
  const engine::EngineStats after = engine_->stats();
  epoch_ = after.model_epoch;
  peak_memory_bytes_ = std::max(peak_memory_bytes_,
                                current_->loaded().weights.resident_bytes() + after.kv_cache_bytes);
  if (metrics_) {
    if (old_name != candidate.name) {
      metrics_->switches->labels({reason}).inc();
      metrics_->active->labels({old_name}).set(0);
    } else {
      metrics_->layer_loads->labels({reason}).inc();
    }
    metrics_->active->labels({candidate.name}).set(1);
    metrics_->peak_memory->set(static_cast<double>(peak_memory_bytes_));
  }
  spdlog::info("controller: now serving {} at {}/{} layers (loaded in {:.3f} s); KV pool {} "
               "blocks, {} full-context sequences",
               candidate.name, depth, candidate.config.num_hidden_layers, load_seconds,
               after.kv_blocks_total, after.kv_sequences);
}

void Controller::restore_pool(int64_t blocks) noexcept {
  try {
    engine_->resize_kv(blocks).get();
    // The resize is a new epoch of the same model: telemetry of the old one still counts.
    epoch_ = engine_->stats().model_epoch;
    if (profile_) profile_->epoch = epoch_;
    spdlog::warn("controller: the switch failed; {} keeps serving with its KV pool of {} blocks",
                 current_name_, blocks);
  } catch (const std::exception& e) {
    spdlog::error("controller: the switch failed and the KV pool could not grow back to {} "
                  "blocks: {}",
                  blocks, exception_message(e));
  }
}

std::shared_ptr<const engine::ModelInstance> Controller::load(const Candidate& candidate,
                                                              int64_t depth) {
  const engine::ModelInstance* serving =
      current_ && helios::same_directory(current_->loaded().dir, candidate.path) ? current_.get()
                                                                                 : nullptr;
  try {
    std::shared_ptr<const engine::ModelInstance> model =
        options_.loader(candidate.path, depth, serving);
    if (!model) throw Error(ErrorCode::kInternal, "the model loader returned no model");
    mark_available(candidate.name);
    return model;
  } catch (const std::exception& e) {
    if (metrics_) metrics_->load_failures->labels({candidate.name}).inc();
    mark_unavailable(candidate.name, fmt::format("load failed: {}", exception_message(e)));
    throw;
  }
}

void Controller::mark_unavailable(const std::string& name, const std::string& reason) {
  const auto it = std::find_if(unavailable_.begin(), unavailable_.end(),
                               [&](const UnavailableModel& u) { return u.name == name; });
  if (it != unavailable_.end()) {
    it->reason = reason;
  } else {
    unavailable_.push_back({name, reason});
  }
  if (metrics_) metrics_->unavailable->labels({name}).set(1);
}

void Controller::mark_available(const std::string& name) {
  const auto removed = std::erase_if(unavailable_, [&](const UnavailableModel& u) {
    return u.name == name;
  });
  if (removed > 0 && metrics_) metrics_->unavailable->labels({name}).set(0);
}

void Controller::adopt(Repository r) {
  std::vector<UnavailableModel> old = std::exchange(unavailable_, std::move(r.unavailable));
  repository_ = std::move(r.candidates);
  shortlist_ = std::move(r.shortlist);
  tokenizers_ = std::move(r.tokenizers);
  evidence_reserve_ = r.evidence_reserve;
  if (!metrics_) return;
  try {
    // Every model of the repository has its series (0: servable), so a dashboard or an alert
    // sees a model turn unavailable rather than a series appear.
    for (const UnavailableModel& u : old) metrics_->unavailable->labels({u.name}).set(0);
    for (const Candidate& c : repository_) {
      metrics_->unavailable->labels({c.name}).set(0);
      metrics_->load_failures->labels({c.name});
    }
    for (const UnavailableModel& u : unavailable_) {
      metrics_->unavailable->labels({u.name}).set(1);
      metrics_->load_failures->labels({u.name});
    }
  } catch (const std::exception& e) {
    spdlog::error("controller: model availability metrics not updated: {}", exception_message(e));
  }
}

void Controller::set_max_batch(int64_t cap) {
  max_batch_ = std::max<int64_t>(1, cap);
  engine_->set_max_running(max_batch_);
  if (metrics_) metrics_->max_batch->set(static_cast<double>(max_batch_));
}

void Controller::reset_windows() {
  const size_t window = static_cast<size_t>(std::max<int64_t>(1, slo_.drift_window_requests));
  ttft_window_ = PercentileWindow(window);
  tpot_window_ = PercentileWindow(window);
  prompt_window_.clear();
}

bool Controller::reload_from(const std::string& text) {
  if (text == slo_text_) {
    if (metrics_) metrics_->reloads->labels({"unchanged"}).inc();
    return false;
  }
  SloConfig next;
  std::optional<Repository> rescanned;
  try {
    next = SloConfig::parse(text, options_.slo_file.parent_path(), options_.slo_file.string());
    if (next != slo_) rescanned = rescan_for(next);
  } catch (const Error& e) {
    reject_reload(exception_message(e));
    throw;
  } catch (const std::exception& e) {
    reject_reload(exception_message(e));
    throw Error(ErrorCode::kInvalidArgument, "SLO file: " + std::string(exception_message(e)));
  }
  if (next == slo_) {
    slo_text_ = text;
    last_reload_error_.clear();
    if (metrics_) metrics_->reloads->labels({"unchanged"}).inc();
    return false;
  }
  const SloConfig old = slo_;
  const bool repository_changed = rescanned.has_value();
  std::string changes;
  try {
    changes = commit_slo(next, std::move(rescanned));
  } catch (const std::exception& e) {
    const std::string why = std::string("applying it failed: ") + exception_message(e);
    reject_reload(why);
    throw Error(ErrorCode::kInvalidArgument, "SLO file: " + why);
  }
  // Counted as applied only now that every part of it is in force.
  slo_text_ = text;
  last_reload_error_.clear();
  ++reloads_applied_;
  if (metrics_) metrics_->reloads->labels({"applied"}).inc();
  spdlog::info("controller: SLO file applied: {}", changes);
  act_on_slo(old, repository_changed, changes);
  return true;
}

void Controller::reject_reload(const std::string& why) {
  ++reloads_rejected_;
  last_reload_error_ = why;
  if (metrics_) metrics_->reloads->labels({"rejected"}).inc();
  spdlog::error("controller: SLO file {} rejected, the running configuration stays: {}",
                options_.slo_file.string(), why);
}

Controller::Repository Controller::scan(const SloConfig& slo) const {
  Repository r;
  r.candidates = scan_repository(slo.model_repository,
                                 static_cast<int64_t>(c10::elementSize(options_.load.dtype)),
                                 &r.unavailable);
  const auto element_size = static_cast<int64_t>(c10::elementSize(options_.load.dtype));
  for (const Candidate& c : r.candidates) {
    r.tokenizers[c.name] = tokenizer_fingerprint(c.config, c.path);
    // Sample mode scores any of them beside the served model and its pool.
    if (slo.profile_mode == ProfileMode::kSample) {
      r.evidence_reserve = std::max(
          r.evidence_reserve,
          streamed_scoring_bytes(c.config, c.footprint, slo.evidence_prompts, element_size));
    }
  }
  SloConfig every = slo;
  every.candidates_top_k = std::numeric_limits<int64_t>::max();
  r.ranked = shortlist(r.candidates, every, limits_for(r.evidence_reserve));
  r.shortlist.assign(r.ranked.begin(),
                     r.ranked.begin() + std::min<int64_t>(static_cast<int64_t>(r.ranked.size()),
                                                          slo.candidates_top_k));
  if (r.shortlist.empty()) {
    std::string broken;
    for (const UnavailableModel& u : r.unavailable) {
      broken += fmt::format("; {} is unavailable: {}", u.name, u.reason);
    }
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("model_repository: no candidate in {} fits memory.budget_mib ({} "
                            "models found{}{})",
                            slo.model_repository.string(), r.candidates.size(), broken,
                            r.evidence_reserve > 0
                                ? fmt::format("; {:.1f} MiB of it are kept for scoring candidates "
                                              "(controller.profile_mode \"sample\")",
                                              static_cast<double>(r.evidence_reserve) / 1048576.0)
                                : std::string()));
  }
  return r;
}

std::optional<Controller::Repository> Controller::rescan_for(const SloConfig& next) const {
  // The reserve kept for scoring (sample mode) depends on the mode and the sample's size.
  const bool reserve_changed =
      next.profile_mode != slo_.profile_mode ||
      (next.profile_mode == ProfileMode::kSample && next.evidence_prompts != slo_.evidence_prompts);
  if (next.model_repository == slo_.model_repository &&
      next.candidates_top_k == slo_.candidates_top_k && !reserve_changed) {
    return std::nullopt;
  }
  return scan(next);
}

std::string Controller::commit_slo(const SloConfig& next, std::optional<Repository> rescanned) {
  // Everything that can fail is built first, aside: until all of it is, nothing changes.
  std::string changes;
  const nlohmann::json diff = nlohmann::json::diff(slo_.to_json(), next.to_json());
  for (const auto& op : diff) {
    changes += (changes.empty() ? "" : ", ") + op.value("path", std::string()) + " -> " +
               op.value("value", nlohmann::json()).dump();
  }
  SloConfig staged = next;
  BreachCounter breaches = breaches_;
  breaches.set_window(staged.breach_window_tokens);
  const size_t window = static_cast<size_t>(std::max<int64_t>(1, staged.drift_window_requests));
  PercentileWindow ttft(window), tpot(window);
  if (options_.applying_slo) options_.applying_slo(staged);
  // The engine's threshold last: it is the one part outside the controller, and it validates.
  engine_->set_exit_threshold(staged.exit_threshold);
  // From here on nothing throws.
  const bool threshold_changed = slo_.exit_threshold != staged.exit_threshold;
  slo_ = std::move(staged);
  breaches_ = std::move(breaches);
  ttft_window_ = std::move(ttft);
  tpot_window_ = std::move(tpot);
  prompt_window_.clear();
  drift_backoff_ = 0;  // a new drift window from the file
  evidence_.set_capacity(static_cast<size_t>(slo_.evidence_prompts));
  if (rescanned) adopt(std::move(*rescanned));
  if (rescanned || threshold_changed) {
    // New candidates, or exit distributions measured under the old threshold.
    table_.clear();
    step_models_.clear();
  }
  return changes;
}

void Controller::act_on_slo(const SloConfig& old, bool repository_changed,
                            const std::string& changes) {
  if (phase_ == Phase::kPinned) return;
  const std::string reason = "SLO file changed: " + changes;
  if (repository_changed) {
    start_profiling(DecisionRecord::Trigger::kSloChange, reason);
  } else if (old.exit_threshold != slo_.exit_threshold) {
    start_profiling(DecisionRecord::Trigger::kSloChange,
                    reason + " (exits were measured at the old threshold)");
  } else if (old.profile_mode != slo_.profile_mode) {
    start_profiling(DecisionRecord::Trigger::kSloChange,
                    reason + " (the table is rebuilt in the new profile mode)");
  } else if (phase_ == Phase::kServing) {
    decide(DecisionRecord::Trigger::kSloChange, reason);
  }
}

bool Controller::reload() {
  return run_command<bool>([this] { return reload_from(read_file(options_.slo_file)); });
}

DecisionRecord Controller::pin(const std::string& model, int64_t layers) {
  return run_command<DecisionRecord>([this, model, layers] {
    const Candidate* candidate = find_candidate(model);
    if (candidate == nullptr) {
      throw Error(ErrorCode::kNotFound, "model: no candidate named '" + model + "' in " +
                                            slo_.model_repository.string());
    }
    const int64_t total = candidate->config.num_hidden_layers;
    if (layers < 0 || layers > total) {
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("layers: must be in [0, {}] for {}, got {}", total, model, layers));
    }
    int64_t depth = layers;
    if (depth == 0) {
      const ProfileRow* row = table_.find(model);
      depth = row != nullptr ? choose_depth(*row, slo_, best_full_perplexity(table_)) : total;
    }
    const std::string from = served_name();
    const int64_t from_layers = current_->transformer().loaded_layers();
    collapse_resident_set();
    // A switch that fails leaves everything as it was, profiling included.
    if (model != current_name_ || depth != current_->transformer().loaded_layers()) {
      switch_to(*candidate, depth, "operator");
    }
    DecisionRecord decision{.kind = DecisionRecord::Kind::kPin,
                            .trigger = DecisionRecord::Trigger::kOperator,
                            .from_model = from,
                            .from_layers = from_layers,
                            .to_model = model,
                            .to_layers = depth,
                            .reason = "pinned by an operator"};
    enter_pinned(decision);
    return decision;
  });
}

void Controller::enter_pinned(DecisionRecord& decision) {
  profile_.reset();
  profile_queue_.clear();
  scoring_queue_.clear();
  set_max_batch(options_.max_running);
  phase_ = Phase::kPinned;
  engine_->set_prompt_sampling(slo_.monitor_sample_rate);
  reset_windows();
  decision.max_batch = max_batch_;
  record(decision);
}

DecisionRecord Controller::unpin() {
  return run_command<DecisionRecord>([this] {
    if (phase_ != Phase::kPinned) {
      throw Error(ErrorCode::kFailedPrecondition, "no model is pinned");
    }
    collapse_resident_set();
    phase_ = Phase::kServing;
    const DecisionRecord decision =
        keep_decision(DecisionRecord::Kind::kUnpin, DecisionRecord::Trigger::kOperator,
                      "control handed back to the controller");
    record(decision);
    if (table_.rows().empty()) {
      start_profiling(DecisionRecord::Trigger::kOperator, "unpinned with an empty table");
    } else {
      decide(DecisionRecord::Trigger::kOperator, "unpinned");
    }
    return decision;
  });
}

void Controller::record(DecisionRecord decision) {
  decision.time = std::chrono::system_clock::now();
  nlohmann::ordered_json fields = {{"kind", std::string(to_string(decision.kind))},
                                   {"trigger", std::string(to_string(decision.trigger))},
                                   {"from_model", decision.from_model},
                                   {"from_layers", decision.from_layers},
                                   {"to_model", decision.to_model},
                                   {"to_layers", decision.to_layers},
                                   {"max_batch", decision.max_batch},
                                   {"reason", decision.reason}};
  // The figures (every option compared, a few KB) go to JSON logs, where a pipeline can index
  // them; a text line keeps to the reason. Admin.GetStatus has them either way.
  if (logging::format() == logging::Format::kJson && !decision.figures.is_null()) {
    fields["figures"] = nlohmann::ordered_json(decision.figures);
  }
  logging::event(spdlog::level::info, "controller_decision", fields);
  std::lock_guard lock(mutex_);
  decisions_.push_back(std::move(decision));
  while (decisions_.size() > options_.decisions_kept) decisions_.pop_front();
}

void Controller::publish() {
  ControllerStatus s;
  s.phase = phase_name(phase_);
  s.slo = slo_;
  s.active_model = current_name_;
  s.loaded_layers = current_->transformer().loaded_layers();
  s.total_layers = current_->config().num_hidden_layers;
  s.weight_bytes = current_->loaded().weights.resident_bytes();
  s.max_batch = max_batch_;
  if (phase_ == Phase::kProfiling && profile_ && profile_->candidate != nullptr) {
    s.profiling_model = profile_->candidate->name;
  }
  for (const Candidate& c : shortlist_) s.candidates.push_back(c.name);
  s.unavailable = unavailable_;
  s.table = table_.rows();
  for (const ProfileRow& row : s.table) {
    s.stale.push_back(table_.stale(row, requests_seen_, slo_.reprofile_interval_requests));
  }
  s.options = rank_options(table_, slo_, limits());
  s.requests_seen = requests_seen_;
  s.breaches_in_window = breaches_.count();
  s.breaches_total = breaches_total_;
  s.reloads_applied = reloads_applied_;
  s.reloads_rejected = reloads_rejected_;
  s.last_reload_error = last_reload_error_;
  s.peak_memory_bytes = peak_memory_bytes_;
  s.evidence_reserve_bytes = evidence_reserve_;
  s.live_p95_ttft_ms = ttft_window_.percentile(0.95);
  s.live_p95_tpot_ms = tpot_window_.percentile(0.95);
  s.live_window_requests = static_cast<int64_t>(tpot_window_.size());
  s.live_prompt_perplexity = live_prompt_perplexity();
  std::lock_guard lock(mutex_);
  s.decisions.assign(decisions_.begin(), decisions_.end());
  published_ = std::move(s);
}

ControllerStatus Controller::status() const {
  std::lock_guard lock(mutex_);
  return published_;
}

}  // namespace helios::controller
