#include "analysis.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <utility>

#include "bench_common.h"

namespace helios::bench {

using json = nlohmann::json;

bool PerplexityPool::add(const json& request) {
  if (!request.value("ok", false) || !request.contains("prompt_perplexity")) return false;
  const double n = request["prompt_scored_tokens"].get<double>();
  nll_ += n * std::log(request["prompt_perplexity"].get<double>());
  tokens_ += n;
  return true;
}

json PerplexityPool::value() const {
  return tokens_ > 0 ? json(std::exp(nll_ / tokens_)) : json(nullptr);
}

json pooled_perplexity(const json& requests, const std::string& key, const std::string& value) {
  PerplexityPool pool;
  for (const json& r : requests) {
    if (key.empty() || r.value(key, "") == value) pool.add(r);
  }
  return pool.value();
}

std::optional<double> counter_delta(const json& samples, const char* key) {
  std::optional<double> first, last;
  for (const json& s : samples) {
    if (!s.contains(key) || s[key].is_null()) continue;
    if (!first) first = s[key].get<double>();
    last = s[key].get<double>();
  }
  if (!first) return std::nullopt;
  return *last - *first;
}

ServedModel served_model(const json& run) {
  for (const json& s : run.at("status_samples")) {
    if (!s.value("model", "").empty()) {
      return {s["model"].get<std::string>(), s.value("total_layers", int64_t{0})};
    }
  }
  throw Fatal(fmt::format("run {}: no GetStatus sample names the served model",
                          run.value("label", "?")));
}

json phase_best(const std::vector<const json*>& static_runs) {
  if (static_runs.empty()) throw Fatal("no static run to find each phase's best model in");
  json out = json::object();
  for (const json& phase : static_runs.front()->at("workload").at("phases")) {
    const std::string name = phase.at("name");
    json best = nullptr, by_model = json::object();
    for (const json* run : static_runs) {
      const json ppl = pooled_perplexity(run->at("requests"), "phase", name);
      const ServedModel served = served_model(*run);
      by_model[served.model] = ppl;
      if (ppl.is_number() && (best.is_null() || ppl.get<double>() < best["prompt_perplexity"].get<double>())) {
        best = {{"label", run->at("label")},
                {"model", served.model},
                {"layers", served.layers},
                {"prompt_perplexity", ppl}};
      }
    }
    if (best.is_null()) throw Fatal(fmt::format("phase {}: no static run scored a prompt", name));
    best["domain"] = phase.at("domain");
    best["perplexity_by_model"] = by_model;
    out[name] = best;
  }
  return out;
}

json following_phases(const json& run, const json& best) {
  std::map<std::string, std::vector<const json*>> by_phase;  // trace order within each
  for (const json& r : run.at("requests")) by_phase[r.value("phase", "")].push_back(&r);
  json out = json::object();
  bool first = true;
  for (const json& phase : run.at("workload").at("phases")) {
    const std::string name = phase.at("name");
    const std::string model = best.at(name).at("model");
    const std::vector<const json*>& requests = by_phase[name];
    auto served_by_best = [&](const json* r) {
      return r->value("ok", false) && r->value("model", "") == model;
    };
    int64_t ok = 0, by_best = 0;
    for (size_t k = requests.size() / 2; k < requests.size(); ++k) {
      ok += requests[k]->value("ok", false) ? 1 : 0;
      by_best += served_by_best(requests[k]) ? 1 : 0;
    }
    json until = nullptr;
    for (size_t k = 0; k < requests.size(); ++k) {
      if (served_by_best(requests[k])) {
        until = k;
        break;
      }
    }
    out[name] = {{"best_model", model},
                 {"phase_change", !first},
                 {"requests", requests.size()},
                 {"second_half_requests", ok},
                 {"second_half_share", ok > 0 ? json(static_cast<double>(by_best) / ok) : json(nullptr)},
                 {"requests_until_best", until}};
    first = false;
  }
  return out;
}

namespace {

json e2e_of(const std::vector<double>& e2e) {
  const Summary s = summarize(e2e);
  return {{"requests", e2e.size()}, {"p50_ms", to_json(s.p50)}, {"p95_ms", to_json(s.p95)}};
}

json share(const std::optional<double>& part, const std::optional<double>& whole) {
  return part && whole && *whole > 0 ? json(*part / *whole) : json(nullptr);
}

}  // namespace

json profiling_cost(const json& run) {
  const json& status = run.at("status_samples");
  bool controller = false;
  // Passes: from the first sample reporting phase "profiling" to the first one after it that
  // reports another phase (or the last sample), i.e. each bound within one poll period.
  std::vector<std::pair<double, double>> passes;
  bool in_pass = false;
  for (const json& s : status) {
    if (!s.contains("phase")) continue;
    controller = true;
    const double t = s.at("t").get<double>();
    if (s["phase"] == "profiling" && !in_pass) passes.emplace_back(t, t);
    if (s["phase"] != "profiling" && in_pass) passes.back().second = t;
    in_pass = s["phase"] == "profiling";
  }
  if (!controller) return nullptr;
  if (in_pass) passes.back().second = status.back().at("t").get<double>();
  double profiling_seconds = 0;
  for (const auto& [from, to] : passes) profiling_seconds += to - from;

  // Engine step seconds between consecutive scrapes, charged to the phase polled just before
  // the earlier scrape (the sampler scrapes right after a poll that sees the phase change).
  std::optional<double> step_total, step_profiling;
  const json& counters = run.at("counter_samples");
  for (size_t i = 1; i < counters.size(); ++i) {
    const json &a = counters[i - 1], &b = counters[i];
    if (!a.contains("engine_step_seconds") || a["engine_step_seconds"].is_null() ||
        b["engine_step_seconds"].is_null()) {
      continue;
    }
    const double d = b["engine_step_seconds"].get<double>() - a["engine_step_seconds"].get<double>();
    step_total = step_total.value_or(0) + d;
    step_profiling = step_profiling.value_or(0) + (a.value("phase", "") == "profiling" ? d : 0.0);
  }
  const std::optional<double> evidence = counter_delta(counters, "evidence_seconds");
  const std::optional<double> wall = run.at("wall_s").get<double>();

  std::vector<double> during, outside;
  for (const json& r : run.at("requests")) {
    if (!r.value("ok", false)) continue;
    const double sent = r.at("sent_s").get<double>(), done = r.at("done_s").get<double>();
    bool overlaps = false;
    for (const auto& [from, to] : passes) overlaps |= sent < to && done > from;
    (overlaps ? during : outside).push_back(r.at("e2e_ms").get<double>());
  }
  const json& c = run.value("controller", json::object());
  std::optional<double> memory_peak;
  for (const json& s : counters) {
    if (s.contains("memory_peak_bytes") && s["memory_peak_bytes"].is_number()) {
      memory_peak = std::max(memory_peak.value_or(0), s["memory_peak_bytes"].get<double>());
    }
  }
  return {{"profile_mode", c.value("profile_mode", json(nullptr))},
          {"passes", passes.size()},
          {"profiling_seconds", profiling_seconds},
          {"profiling_wall_share", share(profiling_seconds, wall)},
          {"engine_step_seconds", to_json(step_total)},
          {"profiling_step_seconds", to_json(step_profiling)},
          {"profiling_step_share", share(step_profiling, step_total)},
          {"evidence_seconds", to_json(evidence)},
          {"evidence_step_ratio", share(evidence, step_total)},
          {"evidence_wall_share", share(evidence, wall)},
          {"evidence_peak_bytes", c.value("evidence_peak_bytes", json(nullptr))},
          {"evidence_reserve_bytes", c.value("evidence_reserve_bytes", json(nullptr))},
          {"memory_peak_bytes", to_json(memory_peak)},
          {"e2e_during_profiling", e2e_of(during)},
          {"e2e_outside_profiling", e2e_of(outside)}};
}

}  // namespace helios::bench
