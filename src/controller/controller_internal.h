#pragma once
// What controller.cpp and controller_actions.cpp share: the profiling accumulator and the
// controller's metrics.
#include <utility>
#include <vector>

#include "helios/controller/controller.h"
#include "helios/model/exit_scores.h"

namespace helios::controller {

// Finished requests the request rate is measured over (Controller::request_rate).
inline constexpr size_t kRateWindow = 256;

// Telemetry of the candidate being profiled: requests admitted and finished on its epoch, and
// the engine steps run while it served.
struct Controller::Accumulator {
  const Candidate* candidate = nullptr;
  uint64_t epoch = 0;
  ProfileRow row;
  model::ExitScores prompt;
  std::vector<double> tpot_ms, ttft_ms;
  int64_t generated = 0, steps = 0;
  double step_seconds = 0.0, batch_sum = 0.0, peak = 0.0;
  std::vector<std::pair<double, double>> decode_steps;  // batch, seconds
  double joules_start = 0.0;  // the energy meter's reading when the row started
  bool scored = false;        // the row's prompt columns come from the shared sample already
};

struct Controller::Metrics {
  explicit Metrics(metrics::Registry& r) {
    active = &r.gauge("helios_active_model", "1 for the model the engine serves, 0 otherwise.",
                      {"model"});
    switches = &r.counter("helios_model_switches_total",
                          "Switches of the served model, by trigger.", {"reason"});
    layer_loads = &r.counter("helios_layer_loads_total",
                             "Depth changes of the served model (extend or truncate), by trigger.",
                             {"reason"});
    breaches = &r.counter("helios_confidence_breaches_total",
                          "Generated tokens that left at the last loaded layer below the "
                          "confidence threshold.")
                    .get();
    breach_window = &r.gauge("helios_confidence_breaches_in_window",
                             "Breaches among the last breach_window_tokens generated tokens.")
                         .get();
    profiling_runs = &r.counter("helios_profiling_runs_total",
                                "Candidates profiled on live requests (table rows completed).")
                          .get();
    reloads = &r.counter("helios_config_reloads_total", "SLO file reloads, by result.",
                         {"result"});
    for (const char* result : {"applied", "rejected", "unchanged"}) reloads->labels({result});
    max_batch = &r.gauge("helios_controller_max_batch",
                         "Concurrency cap the controller applies to the scheduler.")
                     .get();
    unavailable = &r.gauge("helios_model_unavailable",
                           "1 for a model of the repository that cannot be served (its config "
                           "did not scan or its weights failed to load), 0 once it loads.",
                           {"model"});
    load_failures = &r.counter("helios_model_load_failures_total",
                               "Model loads that failed (start-up and switches), per model.",
                               {"model"});
    evidence_seconds = &r.counter("helios_controller_evidence_seconds_total",
                                  "Seconds the controller spent scoring candidates on the shared "
                                  "sample of recent prompts (off the engine's path).")
                           .get();
    peak_memory = &r.gauge("helios_memory_peak_bytes",
                           "Highest weights + KV cache bytes accounted, switches included.")
                       .get();
  }
  metrics::Family<metrics::Gauge>*active, *unavailable;
  metrics::Family<metrics::Counter>*switches, *layer_loads, *reloads, *load_failures;
  metrics::Counter *breaches, *profiling_runs, *evidence_seconds;
  metrics::Gauge *breach_window, *max_batch, *peak_memory;
};

}  // namespace helios::controller
