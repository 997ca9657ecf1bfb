// The comparison over repeats: every (repeat, load point) report of `helios_compare report`
// folded into medians and ranges, the targets judged over all repeats, and the tables.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace helios::bench {

struct AggregateOptions {
  std::vector<std::string> report_files;  // result.json of each (repeat, load point)
  std::string out;                        // aggregate JSON
  std::string markdown;                   // its tables; empty = none
};

// For each load point and policy the median and min-max over repeats of the headline figures;
// the ratios of each helios run against the best static baseline and the oracle the same way;
// each target with its figure in every repeat (met only when met in all); how the helios runs
// followed the phases and what profiling cost them.
nlohmann::json make_aggregate(const AggregateOptions& options);
std::string format_aggregate_markdown(const nlohmann::json& aggregate);

}  // namespace helios::bench
