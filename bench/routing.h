// The phase a resident set served, against the static runs of the same load point: the routed
// run's workload perplexity against the per-request oracle (each request scored by the static
// model best for it), its throughput against every static model, how often the router chose
// the member with the lower prompt perplexity, what routing cost, and the set's memory.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace helios::bench {

struct RoutingOptions {
  std::vector<std::string> run_files;  // the static runs and the routed one
  std::string routed_label = "routed";
  std::string phase;                   // the phase the set served (default: the mix phase)
  std::string out;                     // JSON
  std::string markdown;                // optional
  std::string plots_dir;               // optional: routing.dat and routing.png (gnuplot)
};

nlohmann::json make_routing_report(const RoutingOptions& options);
std::string format_routing_report(const nlohmann::json& report);

}  // namespace helios::bench
