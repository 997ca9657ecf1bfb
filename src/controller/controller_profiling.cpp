// The controller's profiling pass: filling the Performance History Table, by serving each
// candidate in turn (profile mode "serve") or by measuring the served model and scoring every
// candidate on the shared prompt sample off the serving path ("sample"); the pass ends in
// Controller::decide.
#include "helios/controller/controller.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>
#include <utility>

#include "helios/common/exception_message.h"
#include "helios/controller/drift.h"
#include "helios/controller/prediction.h"
#include "helios/engine/serving_engine.h"
#include "controller_internal.h"

namespace helios::controller {
namespace {

// The row's identity: `candidate` as the engine holds it now.
void identify(ProfileRow& row, const Candidate& candidate, const model::Transformer& transformer) {
  row.model = candidate.name;
  row.path = candidate.path;
  row.footprint = candidate.footprint;
  row.profiled_layers = transformer.loaded_layers();
  row.exit_points = transformer.exit_points();
}

}  // namespace

void Controller::start_profiling(DecisionRecord::Trigger trigger, const std::string& reason) {
  // A pass measures one served model at a time: the controller's resident set gives way to its
  // first member, and the pass's decision may choose a set again.
  collapse_resident_set();
  profile_queue_.clear();
  scoring_queue_.clear();
  evidence_.begin_pass();
  ++passes_;
  pass_from_ = current_name_;
  pass_trigger_ = trigger;
  pass_started_ = std::chrono::steady_clock::now();
  const Candidate* served = find_candidate(current_name_);
  // Sample mode measures the served model where it stands (no switch, no recompute); a model
  // no longer in the repository cannot be predicted from, so its pass serves the candidates.
  const bool sample = slo_.profile_mode == ProfileMode::kSample && served != nullptr;
  if (sample) {
    profile_queue_.push_back(current_name_);
  } else {
    // The served model first: it serves on without a switch (at most an extend to full
    // depth), and the rows it sets can screen the others before they serve.
    const bool listed = std::any_of(shortlist_.begin(), shortlist_.end(),
                                    [&](const Candidate& c) { return c.name == current_name_; });
    if (listed) profile_queue_.push_back(current_name_);
    for (const Candidate& c : shortlist_) {
      if (!listed || c.name != current_name_) profile_queue_.push_back(c.name);
    }
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
    begin_profile(served);  // sample mode: never screens
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
    if (begin_profile(candidate)) return;
  }
  end_profiling_pass();
}

bool Controller::begin_profile(const Candidate* candidate) {
  phase_ = Phase::kProfiling;
  profile_ = std::make_unique<Accumulator>();
  profile_->candidate = candidate;
  profile_->epoch = epoch_;
  profile_->joules_start = options_.energy_meter->joules();
  engine_->set_prompt_sampling(1.0);
  if (slo_.profile_mode != ProfileMode::kServe || candidate == nullptr) return true;
  // The candidate's quality on the pass's shared sample is known before it serves a request.
  // One that a row of this pass already outclasses could never be chosen: its stint at full
  // depth, paid by the users it would serve, measures nothing the decision needs.
  ProfileRow& row = profile_->row;
  identify(row, *candidate, current_->transformer());
  profile_->scored = score_evidence(row);
  if (!profile_->scored) return true;
  std::optional<std::string> why = outclassed(row, table_, slo_);
  if (!why) return true;
  row.screened = std::move(*why);
  row.profiled_at_request = requests_seen_;
  spdlog::info("controller: screened {} at {} layers without serving it: {}", row.model,
               row.profiled_layers, row.screened);
  step_models_.erase(row.model);
  table_.upsert(std::move(row));
  if (metrics_) metrics_->profiling_runs->inc();
  profile_.reset();
  return false;
}

void Controller::finish_profile() {
  Accumulator& p = *profile_;
  ProfileRow& row = p.row;
  const Candidate& c = *p.candidate;
  identify(row, c, current_->transformer());
  const bool sample = slo_.profile_mode == ProfileMode::kSample;
  // In sample mode this row is the served model's live figures at its depth; every
  // candidate's quality columns come from the scoring that follows.
  if (sample || !(p.scored || score_evidence(row))) {
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
  const std::pair<double, double> ages = evidence_.frozen_ages();
  spdlog::info("controller: profiled {} at {} layers on {} requests: {:.0f} tok/s, p95 TPOT {:.2f} "
               "ms, prompt perplexity {:.2f} ({})",
               c.name, row.profiled_layers, row.requests, row.decode_tokens_per_second,
               row.tpot_p95_ms, row.prompt_tokens > 0 ? full_depth_perplexity(row) : 0.0,
               row.evidence_prompts > 0
                   ? fmt::format("{} shared sample prompts that arrived {:.1f} to {:.1f} s "
                                 "before the sample was taken, scored in {:.3f} s",
                                 row.evidence_prompts, ages.first, ages.second,
                                 row.evidence_seconds)
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
  const int backoff =
      next_drift_backoff(drift_backoff_, pass_trigger_ == DecisionRecord::Trigger::kDrift,
                         !pass_from_.empty() && current_name_ != pass_from_);
  if (backoff != drift_backoff_) {
    drift_backoff_ = backoff;
    spdlog::info("controller: the perplexity drift window is now {} sampled prompts ({})",
                 prompt_window_size(),
                 backoff > 0 ? fmt::format("the drift pass kept {}", current_name_)
                             : std::string("the pass moved the model"));
  }
}

}  // namespace helios::controller
