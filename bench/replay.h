#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace helios::bench {

struct ReplayOptions {
  std::string workload;     // file made by `helios_compare workload`
  std::string address;      // gRPC host:port
  std::string metrics_url;  // the daemon's /metrics
  std::string label;        // names the run in the report
  std::string out;          // run JSON
  double sample_seconds = 0.1;  // GetStatus poll period (largest batch, model, layers)
  double timeout_seconds = 300;  // per request
};

// Sends every workload request at its offset (open loop: arrivals do not wait for answers),
// each greedy and asking for its prompt's score, and records per request what the client saw
// and what usage said, plus a timeline of the server's state and counters. Returns the run.
nlohmann::json replay(const ReplayOptions& options);

}  // namespace helios::bench
