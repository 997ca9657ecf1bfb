#pragma once

#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "analysis.h"

namespace helios::bench {

// One target of the comparison: a ratio of a helios run against the best static baseline or
// the oracle, at one load point or at every one, judged against a goal (at least, or at most).
struct TargetSpec {
  const char* name;
  const char* load_point;  // "rate", "saturation", or nullptr for every load point
  const char* against;     // "best" (the best static baseline) or "oracle"
  const char* ratio;       // key of the comparison (see the ratio columns)
  bool at_most;            // the measured value must stay <= goal (else >= goal)
  double goal;
  const char* what;
};

// The targets: helios's accuracy bound, then the capacity and latency claims, then the oracle.
const std::vector<TargetSpec>& targets();

struct ReportOptions {
  // Replay outputs. Runs labelled with one of `helios_labels` are the helios runs compared, the
  // one labelled `oracle_label` the oracle, the others the static baselines.
  std::vector<std::string> run_files;
  std::vector<std::string> helios_labels = {"helios", "helios-sample"};
  std::string oracle_label = "oracle";
  std::string load_point;  // rate | saturation; empty: from the runs (open loop = rate)
  int64_t repeat = 0;      // which repeat these runs are (0: not said)
  std::string out;        // result JSON
  std::string plots_dir;  // data files, the gnuplot script and the PNGs; empty = no plots
  std::string markdown;   // the tables as Markdown; empty = none
};

// Summarizes each run, compares each helios run with every static baseline and the oracle,
// picks the best static baseline (the lowest workload prompt perplexity: the model a static
// server must deploy to hold accuracy) and each phase's best static model, checks the targets
// of this load point, says how the helios runs followed the phases and what profiling cost
// them, and writes the result JSON, the Markdown and the plots.
nlohmann::json make_report(const ReportOptions& options);

// The side-by-side table printed at the end of a comparison.
std::string format_report(const nlohmann::json& result);
// The same as Markdown tables (runs, ratios, targets, phases, profiling cost).
std::string format_markdown(const nlohmann::json& result);

const TargetSpec& target_named(const std::string& name);  // Fatal when there is none

// The ratio columns of a comparison (helios / baseline, each "x better"), in table order: key,
// console header and width, Markdown header. Every table prints them from this one list.
struct RatioColumn {
  const char* key;
  const char* text_header;
  int width;
  const char* markdown_header;
};
const std::vector<RatioColumn>& ratio_columns();

// A figure as `format` prints it, "-" when absent.
std::string cell(const nlohmann::json& v, const char* format);
std::string scaled(const nlohmann::json& v, double scale, const char* format);  // v x scale
std::string percent_change(const nlohmann::json& v);  // "+1.5%", "-" when absent
// A target's goal or measurement as its table prints it ("<= +2%", "2.00x", ...).
std::string target_goal_text(const TargetSpec& t);
std::string target_value_text(const TargetSpec& t, const nlohmann::json& measured);

// `helios_compare oracle`: from static runs of one load point and repeat, each phase's best
// static model at the depth it served, as PHASE=MODEL:LAYERS (the form of `replay --pin`).
std::vector<std::string> oracle_pins(const std::vector<std::string>& static_run_files);

nlohmann::json read_json(const std::string& path);  // Fatal naming the file
void write_text(const std::string& path, const std::string& text);

}  // namespace helios::bench
