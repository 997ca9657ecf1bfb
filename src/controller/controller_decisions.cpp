// The controller's decisions: ranking the table's options under the SLO (with a concurrency cap
// where a latency bound needs one), weighing a change of model against its cost (the switch
// gate), and applying the choice.
#include "helios/controller/controller.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <optional>
#include <string>

#include "helios/common/error.h"
#include "helios/controller/switch_gate.h"
#include "helios/engine/serving_engine.h"
#include "controller_internal.h"

namespace helios::controller {

void Controller::decide(DecisionRecord::Trigger trigger, const std::string& reason) {
  // A bound on time per output token can be met by a concurrency cap where a model and depth
  // alone do not meet it: rank without the bound, then cap each option to meet it.
  SloConfig relaxed = slo_;
  relaxed.p95_tpot_ms.reset();
  std::vector<std::pair<Option, int64_t>> ranked;
  for (Option option : rank_options(table_, relaxed, limits())) {
    int64_t cap = cap_for(option);
    const ProfileRow* row = table_.find(option.model);
    if (row != nullptr && (slo_.p95_tpot_ms || slo_.objective == Objective::kLatency)) {
      const StepModel steps = step_model_for(option.model);
      if (cap == 0) {
        if (option.feasible) {
          option.feasible = false;
          option.infeasible_reason =
              fmt::format("p95_tpot_ms: predicted {:.3f} ms at batch 1 > {:.3f}",
                          predicted_tpot_ms(*row, steps, option, 1), slo_.p95_tpot_ms.value_or(0));
        }
        cap = 1;
      } else if (steps.valid()) {
        const int64_t most = most_sequences(option);
        option.tpot_p95_ms = predicted_tpot_ms(*row, steps, option, cap);
        const double rate_cap = static_cast<double>(cap) / steps.seconds(static_cast<double>(cap));
        const double rate_most = static_cast<double>(most) / steps.seconds(static_cast<double>(most));
        option.tokens_per_second *= std::min(1.0, rate_cap / rate_most);
      }
      // Its throughput or latency figures changed under the cap.
      option.score = objective_score(slo_.objective, option);
    }
    ranked.emplace_back(std::move(option), cap);
  }
  std::stable_sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) {
    if (a.first.feasible != b.first.feasible) return a.first.feasible;
    return a.first.score > b.first.score;
  });
  nlohmann::json figures = {{"objective", objective_name(slo_.objective)},
                            {"best_full_depth_perplexity", best_full_perplexity(table_)}};
  nlohmann::json& listed = figures["options"] = nlohmann::json::array();
  for (const auto& [option, cap] : ranked) {
    nlohmann::json o = option.to_json();
    o["max_batch"] = cap;
    listed.push_back(std::move(o));
  }
  if (!ranked.empty() && !ranked.front().first.feasible) {
    // Nothing meets the SLO: serve what comes closest on accuracy rather than whichever
    // candidate happened to be profiled last.
    const auto closest = std::min_element(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) {
      return a.first.perplexity < b.first.perplexity;
    });
    if (std::isfinite(closest->first.perplexity)) {
      apply(closest->first, closest->second, trigger,
            reason + "; no option meets the SLO, serving the lowest perplexity (" +
                closest->first.infeasible_reason + ")",
            std::move(figures));
      return;
    }
  }
  if (ranked.empty() || !ranked.front().first.feasible) {
    std::string why;
    for (const auto& [option, cap] : ranked) {
      why += fmt::format("{}{}@{}: {}", why.empty() ? "" : "; ", option.model, option.depth,
                         option.infeasible_reason);
    }
    DecisionRecord keep = keep_decision(DecisionRecord::Kind::kKeep, trigger,
                                        reason + "; no option meets the SLO (" +
                                            (why.empty() ? "no profiled candidate" : why) + ")");
    keep.figures = std::move(figures);
    record(std::move(keep));
    if (phase_ != Phase::kPinned) phase_ = Phase::kServing;
    return;
  }
  // The ranking's first choice is on point estimates. Moving off the model served when the
  // decision began (before the pass, for a pass's decision) must also clear the switch gate:
  // a sure gain above the margin and the recompute's cost share.
  size_t chosen = 0;
  std::optional<GateResult> gate;
  const std::string& from_model =
      trigger == DecisionRecord::Trigger::kProfiled && !pass_from_.empty() ? pass_from_
                                                                           : current_name_;
  const auto from = std::find_if(ranked.begin(), ranked.end(),
                                 [&](const auto& r) { return r.first.model == from_model; });
  const ProfileRow* from_row = table_.find(from_model);
  const ProfileRow* to_row = table_.find(ranked.front().first.model);
  if (ranked.front().first.model != from_model && from != ranked.end() && from_row != nullptr &&
      to_row != nullptr) {
    gate = gate_switch(*from_row, from->first, *to_row, ranked.front().first, slo_,
                       switch_cost(ranked.front().first));
    figures["gate"] = gate->to_json();
    if (!gate->pass) chosen = static_cast<size_t>(from - ranked.begin());
  }
  // A resident set of several candidates, routed per request, against the single choice on
  // the same prompts (resident_policy.h); off with controller.resident_max_models 1.
  if (slo_.resident_max_models >= 2 && phase_ != Phase::kPinned) {
    const SetChoice sets = choose_resident_set(table_, ranked[chosen].first.model, slo_, limits(),
                                               step_models_, switch_cost(ranked[chosen].first));
    figures["resident_set"] = sets.to_json();
    if (sets.set && sets.gate.pass) {
      if (resident_choice_ && resident_choice_->name() == sets.set->name()) {
        // The set serving now (a decision without a pass, after an SLO edit): no reload.
        DecisionRecord keep = keep_decision(DecisionRecord::Kind::kKeep, trigger,
                                            reason + "; the resident set stays: " + sets.reason);
        keep.from_model = keep.to_model = served_name();
        keep.figures = std::move(figures);
        keep.gate = sets.gate;
        record(std::move(keep));
        phase_ = Phase::kServing;
        return;
      }
      apply_set(*sets.set, trigger, reason + "; resident set: " + sets.reason, std::move(figures),
                sets.gate);
      return;
    }
    spdlog::info("controller: no resident set: {}", sets.reason);
  }
  // Built before the call: the gate is moved into it, in an unspecified order of arguments.
  const std::string why = gate ? reason + "; " + gate->reason : reason;
  apply(ranked[chosen].first, ranked[chosen].second, trigger, why, std::move(figures),
        std::move(gate));
}

SwitchCost Controller::switch_cost(const Option& to) const {
  SwitchCost cost;
  const engine::EngineStats stats = engine_->stats();
  cost.recompute_tokens = stats.kv_blocks_used * stats.kv_block_size;
  cost.seconds = to.tokens_per_second > 0
                     ? static_cast<double>(cost.recompute_tokens) / to.tokens_per_second
                     : 0.0;
  if (slo_.reprofile_interval_requests <= 0) {
    cost.horizon_seconds = std::numeric_limits<double>::infinity();
  } else {
    const double rate = request_rate();
    cost.horizon_seconds =
        std::max(rate > 0 ? static_cast<double>(slo_.reprofile_interval_requests) / rate : 0.0,
                 serving_seconds_before_reprofile(last_pass_seconds_, slo_.max_profiling_share));
  }
  return cost;
}

double Controller::request_rate() const {
  if (finished_at_.size() < 2) return 0.0;
  const double seconds =
      std::chrono::duration<double>(finished_at_.back() - finished_at_.front()).count();
  return seconds > 0 ? static_cast<double>(finished_at_.size() - 1) / seconds : 0.0;
}

int64_t Controller::most_sequences(const Option& option) const {
  return std::max<int64_t>(1, std::min(option.kv_sequences, options_.max_running));
}

StepModel Controller::step_model_for(const std::string& model) const {
  const auto it = step_models_.find(model);
  return it != step_models_.end() ? it->second : StepModel{};
}

int64_t Controller::cap_for(const Option& option) const {
  const ProfileRow* row = table_.find(option.model);
  if (row == nullptr) return most_sequences(option);
  return batch_cap(*row, step_model_for(option.model), option, slo_, options_.max_running);
}

DecisionRecord Controller::keep_decision(DecisionRecord::Kind kind, DecisionRecord::Trigger trigger,
                                         std::string reason) const {
  const int64_t layers = current_->transformer().loaded_layers();
  return DecisionRecord{.kind = kind,
                        .trigger = trigger,
                        .from_model = current_name_,
                        .from_layers = layers,
                        .to_model = current_name_,
                        .to_layers = layers,
                        .max_batch = max_batch_,
                        .reason = std::move(reason)};
}

void Controller::apply(const Option& option, int64_t cap, DecisionRecord::Trigger trigger,
                       const std::string& reason, nlohmann::json figures,
                       std::optional<GateResult> gate) {
  const Candidate* candidate = find_candidate(option.model);
  if (candidate == nullptr) {
    throw Error(ErrorCode::kNotFound, "model: no candidate named '" + option.model + "'");
  }
  // A resident set gives way to its first member (with the budget's pool) before the move.
  const std::string from = served_name();
  collapse_resident_set();
  const int64_t from_layers = current_->transformer().loaded_layers();
  using Kind = DecisionRecord::Kind;
  Kind kind = option.model != current_name_ ? Kind::kSwitch
              : option.depth > from_layers ? Kind::kExtend
              : option.depth < from_layers ? Kind::kTruncate
                                           : Kind::kKeep;
  if (kind != Kind::kKeep) switch_to(*candidate, option.depth, std::string(to_string(trigger)));
  if (kind == Kind::kKeep && cap != max_batch_) kind = Kind::kLimit;
  set_max_batch(cap);
  figures["chosen"] = option.to_json();
  figures["max_batch"] = cap;
  record(DecisionRecord{.kind = kind,
                        .trigger = trigger,
                        .from_model = from,
                        .from_layers = from_layers,
                        .to_model = option.model,
                        .to_layers = option.depth,
                        .max_batch = cap,
                        .reason = reason,
                        .figures = std::move(figures),
                        .gate = std::move(gate)});
  if (phase_ != Phase::kPinned) phase_ = Phase::kServing;
  engine_->set_prompt_sampling(slo_.monitor_sample_rate);
  reset_windows();
  breaches_.reset();
}

}  // namespace helios::controller
