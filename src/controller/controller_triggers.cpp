// The controller's triggers: what in the live telemetry starts a re-profile or a change
// (confidence breaches, SLO drift, the periodic interval). Decided on the controller thread
// after each round of telemetry.
#include "helios/controller/controller.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>

#include "helios/controller/drift.h"
#include "helios/engine/serving_engine.h"
#include "controller_internal.h"

namespace helios::controller {

double Controller::live_prompt_perplexity() const {
  double nll = 0;
  int64_t tokens = 0;
  for (const auto& [n, t] : prompt_window_) nll += n, tokens += t;
  return tokens > 0 ? std::exp(nll / static_cast<double>(tokens)) : 0.0;
}

// Sampled prompts in the drift window: the requests of the window that get scored, times the
// hysteresis of drift passes that changed nothing.
size_t Controller::prompt_window_size() const {
  return static_cast<size_t>(std::max(
             4.0, std::round(static_cast<double>(slo_.drift_window_requests) *
                             slo_.monitor_sample_rate)))
         << drift_backoff_;
}

void Controller::check_triggers() {
  if (phase_ != Phase::kServing) return;
  const int64_t depth = current_->transformer().loaded_layers();
  // 1. Confidence breaches.
  // When the table itself predicts more breaches than the maximum for this choice (a full
  // load no candidate beats), the counter says nothing new: the drift and interval triggers
  // watch for a change of traffic instead of re-profiling on every window.
  // A resident set's expected share is its members' uncovered shares weighted by traffic.
  // A pinned set (no choice of the controller's) is not acted on by the counter.
  const double uncovered = [&] {
    if (!resident_names_.empty()) {
      double share = 0;
      if (resident_choice_) {
        for (const SetMember& m : resident_choice_->members) {
          if (const ProfileRow* row = table_.find(m.model)) {
            share += m.share * (1.0 - coverage(*row, m.depth));
          }
        }
      }
      return share;
    }
    const ProfileRow* row = table_.find(current_name_);
    return row != nullptr ? 1.0 - coverage(*row, depth) : 0.0;
  }();
  const bool breaches_expected = uncovered * static_cast<double>(slo_.breach_window_tokens) >=
                                 static_cast<double>(slo_.breach_max);
  if (breaches_.count() > slo_.breach_max && !breaches_expected) {
    const std::string why = fmt::format("{} breaches in the last {} tokens (maximum {})",
                                        breaches_.count(), breaches_.size(), slo_.breach_max);
    breaches_.reset();
    if (!resident_names_.empty()) {
      // As a single model extends: the set's truncated members are loaded to full depth (a
      // set at full depth has nothing to extend; its traffic is watched by the leave rule and
      // the periodic re-profile).
      if (resident_choice_) {
        std::vector<int64_t> depths;
        bool truncated = false;
        for (const SetMember& m : resident_choice_->members) {
          const ProfileRow* row = table_.find(m.model);
          depths.push_back(row != nullptr ? std::max(m.depth, row->profiled_layers) : m.depth);
          truncated = truncated || depths.back() > m.depth;
        }
        if (!truncated) return;
        // The extension's own figures (perplexity, pools, throughput at the new depths).
        std::optional<SetOption> full =
            evaluate_set_at(*resident_choice_, depths, table_, limits(), step_models_);
        if (!full || !full->feasible) {
          start_profiling(DecisionRecord::Trigger::kBreach,
                          why + "; the resident set's members cannot extend to full depth (" +
                              (full ? full->infeasible_reason
                                    : std::string("their rows have been replaced")) +
                              ")");
          return;
        }
        apply_set(*full, DecisionRecord::Trigger::kBreach,
                  why + "; the resident set's truncated members extend to full depth",
                  nlohmann::json{{"set", full->to_json()}}, std::nullopt);
      }
      return;
    }
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
  // 2. A resident set the traffic has left: each window of drift_window_requests routed
  // requests, every member must have kept resident_min_share of them.
  if (!resident_names_.empty()) {
    const engine::EngineStats stats = engine_->stats();
    std::vector<int64_t> routed;
    int64_t total = 0;
    for (size_t m = 0; m < stats.members.size(); ++m) {
      routed.push_back(stats.members[m].routed -
                       (m < resident_routed_base_.size() ? resident_routed_base_[m] : 0));
      total += routed.back();
    }
    if (const auto left = resident_share_drift(routed, resident_names_,
                                               slo_.drift_window_requests,
                                               slo_.resident_min_share)) {
      start_profiling(DecisionRecord::Trigger::kDrift, *left);
      return;
    }
    if (total >= slo_.drift_window_requests) {
      resident_routed_base_.clear();
      for (const engine::MemberStats& m : stats.members) resident_routed_base_.push_back(m.routed);
    }
  }
  // 3. SLO drift: a full window of live figures against the SLO file.
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
  // The drift test compares the window with the served row's prompts; a set's window mixes its
  // members' prompts (its perplexity is watched by the periodic re-profile instead).
  if (resident_names_.empty() && prompt_window_.size() >= prompts_needed && std::isfinite(best) &&
      row != nullptr) {
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
  // 4. Periodic re-profiling, once enough requests and enough serving time have passed: a pass
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

}  // namespace helios::controller
