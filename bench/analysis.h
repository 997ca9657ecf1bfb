// Figures read out of replayed runs (the JSON `helios_compare replay` writes) that the report,
// the oracle and the aggregate share: pooled perplexity, counter deltas, each phase's best static
// model, how closely a run followed those models, and what profiling cost a helios run.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace helios::bench {

// Prompt perplexity of many requests pooled over their scored tokens: exp of the
// token-weighted mean log-perplexity, as if all the prompts were one text.
class PerplexityPool {
 public:
  // Adds a replayed request's score when it succeeded and was scored; false otherwise.
  bool add(const nlohmann::json& request);
  nlohmann::json value() const;  // null when nothing was added

 private:
  double nll_ = 0, tokens_ = 0;
};

// Pooled prompt perplexity of the requests whose `key` equals `value` (all when key is empty).
nlohmann::json pooled_perplexity(const nlohmann::json& requests, const std::string& key = "",
                                 const std::string& value = "");

// Last minus first non-null value of a counter across a run's scrapes.
std::optional<double> counter_delta(const nlohmann::json& counter_samples, const char* key);

// The model a static run served and its depth, from its GetStatus samples.
struct ServedModel {
  std::string model;
  int64_t layers = 0;
};
ServedModel served_model(const nlohmann::json& run);

// For each phase of the trace, by name: the static run whose requests of that phase have the
// lowest pooled prompt perplexity ({label, model, layers, prompt_perplexity}) and every static
// model's perplexity on the phase (perplexity_by_model). Fatal without a static run or a score.
nlohmann::json phase_best(const std::vector<const nlohmann::json*>& static_runs);

// How a run followed the phases' best models, per phase: the share of the phase's second half
// of requests (trace order, ok ones) that its best model served, and the number of requests from
// the phase's first until the first one served by that model (null when none was).
nlohmann::json following_phases(const nlohmann::json& run, const nlohmann::json& best);

// What profiling cost a run of the helios policy (null for a run without a controller): time in
// phase "profiling" (from the GetStatus samples), engine step seconds in that phase (from the
// counters scraped at each phase change), evidence scoring seconds, the scoring's memory, and
// the end-to-end latency of requests in flight during a pass against the others.
nlohmann::json profiling_cost(const nlohmann::json& run);

}  // namespace helios::bench
