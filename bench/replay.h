#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace helios::bench {

// An operator pin at a phase boundary: before the first request of `phase` (the trace's phase
// label, e.g. "0-prose") is sent, the replay calls Admin.PinModel(model, layers) and holds back
// every later request until the daemon answers. Layers 0 = the depth the daemon's table picks.
struct PinTarget {
  std::string model;
  int64_t layers = 0;
};
struct Pin {
  std::string phase;
  std::string model;  // the first (or only) member
  int64_t layers = 0;
  std::vector<PinTarget> set;  // two or more: a resident set (PinModelRequest.set)
};

// "PHASE=MODEL[:LAYERS]" or a resident set "PHASE=MODEL[:LAYERS]+MODEL[:LAYERS]...";
// UsageError naming --pin.
Pin parse_pin(const std::string& text);
std::string to_string(const Pin& pin);  // the same form

struct ReplayOptions {
  std::string workload;     // file made by `helios_compare workload`
  std::string address;      // gRPC host:port
  std::string metrics_url;  // the daemon's /metrics
  std::string label;        // names the run in the report
  std::string out;          // run JSON
  double sample_seconds = 0.1;  // GetStatus poll period (largest batch, model, layers, phase)
  double timeout_seconds = 300;  // per request
  // 0: open loop, every request at its offset. N > 0: closed loop, N workers take the requests
  // in trace order and each sends its next one as soon as its previous one finished.
  int64_t concurrency = 0;
  std::vector<Pin> pins;  // at most one per phase; needs a daemon under the "helios" policy
};

// Replays the trace (open or closed loop, see `concurrency`), each request greedy and asking
// for its prompt's score, pinning models at phase boundaries when asked, and records per request
// what the client saw and what usage said, the pins, and a timeline of the server's state
// (GetStatus, including the controller's phase) and counters (/metrics, every second and at
// every change of the controller's phase). Returns the run.
nlohmann::json replay(const ReplayOptions& options);

}  // namespace helios::bench
