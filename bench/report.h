#pragma once

#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

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

// The paper's headline targets (helios / best static baseline) and its accuracy bound.
struct Targets {
  double throughput = 1.48, sequences = 3.7, p95_latency = 1.39, energy_per_token = 1.10;
  double max_perplexity_increase = 0.02;
};

struct ReportOptions {
  std::vector<std::string> run_files;  // replay outputs; the one labelled `helios_label` is compared
  std::string helios_label = "helios";
  std::string out;        // result JSON
  std::string plots_dir;  // data files, the gnuplot script and the PNGs; empty = no plots
  std::string markdown;   // the tables as Markdown; empty = none
  Targets targets;
};

// Summarizes each run, compares helios with every other run (the static baselines), picks the
// best static baseline (the lowest workload prompt perplexity: the model a static server must
// deploy to hold accuracy), checks the targets against it, writes the result JSON and the plots.
nlohmann::json make_report(const ReportOptions& options);

// The side-by-side table printed at the end of a comparison.
std::string format_report(const nlohmann::json& result);
// The same as Markdown tables (runs, ratios against each baseline, the targets).
std::string format_markdown(const nlohmann::json& result);

}  // namespace helios::bench
