// helios_compare: the pieces of the policy comparison (bench/compare.sh runs them in order).
//   workload   makes the drifting request trace (a JSON Lines file)
//   replay     replays a trace against a running daemon (open or closed loop, optional pins)
//   oracle     from static runs, each phase's best static model as PHASE=MODEL:LAYERS pins
//   report     summarizes the runs of one (repeat, load point): ratios, targets, JSON + PNGs
//   aggregate  folds the reports of every repeat and load point into medians and ranges
#include <fmt/format.h>

#include <CLI/CLI.hpp>

#include "bench_common.h"
#include "helios/common/cli_errors.h"
#include "aggregate.h"
#include "replay.h"
#include "report.h"
#include "routing.h"
#include "workload.h"

using namespace helios::bench;

int main(int argc, char** argv) {
  CLI::App app{"helios policy comparison: workload, replay, oracle, report, aggregate"};
  app.require_subcommand(1);

  WorkloadSpec spec;
  std::vector<std::string> phases;
  std::string data_dir, workload_out;
  auto* make = app.add_subcommand("workload", "make a drifting request trace");
  make->add_option("--data", data_dir, "data directory with prose/ and code/ test splits")->required();
  make->add_option("--phase", phases, "DOMAIN:SECONDS[@RATE], in order; DOMAIN prose|code|mix")
      ->required();
  make->add_option("--rate", spec.rate, "requests/s for phases without their own")
      ->check(CLI::PositiveNumber);
  make->add_option("--seed", spec.seed, "random seed");
  make->add_option("--min-prompt-bytes", spec.min_prompt_bytes)->check(CLI::PositiveNumber);
  make->add_option("--max-prompt-bytes", spec.max_prompt_bytes)->check(CLI::PositiveNumber);
  make->add_option("--max-tokens", spec.max_tokens)->check(CLI::PositiveNumber);
  make->add_option("--out", workload_out, "the trace file")->required();

  ReplayOptions replay_options;
  auto* replay_cmd = app.add_subcommand("replay", "replay a trace against a running daemon");
  replay_cmd->add_option("--workload", replay_options.workload)->required();
  replay_cmd->add_option("--address", replay_options.address, "gRPC host:port")->required();
  replay_cmd->add_option("--metrics-url", replay_options.metrics_url)->required();
  replay_cmd->add_option("--label", replay_options.label)->required();
  replay_cmd->add_option("--out", replay_options.out, "run JSON")->required();
  replay_cmd->add_option("--sample-seconds", replay_options.sample_seconds)
      ->check(CLI::PositiveNumber);
  replay_cmd->add_option("--timeout", replay_options.timeout_seconds, "seconds per request")
      ->check(CLI::PositiveNumber);
  replay_cmd->add_option("--concurrency", replay_options.concurrency,
                         "closed loop: N workers, each sending its next request (trace order) as "
                         "soon as its previous one finished; 0 = open loop at the trace offsets")
      ->check(CLI::NonNegativeNumber);
  std::vector<std::string> pins;
  replay_cmd->add_option("--pin", pins,
                         "PHASE=MODEL[:LAYERS]: Admin.PinModel before the phase's first request, "
                         "later requests held until it returns (repeatable; policy helios)");

  std::vector<std::string> oracle_runs;
  auto* oracle_cmd = app.add_subcommand(
      "oracle", "print each phase's best static model as PHASE=MODEL:LAYERS, one a line");
  oracle_cmd->add_option("runs", oracle_runs, "static run JSON files (one load point and repeat)")
      ->required();

  ReportOptions report_options;
  auto* report_cmd = app.add_subcommand("report", "compare runs; JSON, table and plots");
  report_cmd->add_option("runs", report_options.run_files, "run JSON files")->required();
  report_cmd->add_option("--helios", report_options.helios_labels,
                         "labels of the helios runs (default helios, helios-sample)");
  report_cmd->add_option("--oracle", report_options.oracle_label, "label of the oracle run");
  report_cmd->add_option("--load-point", report_options.load_point,
                         "rate | saturation (default: from the runs' loop)")
      ->check(CLI::IsMember({"rate", "saturation"}));
  report_cmd->add_option("--repeat", report_options.repeat, "which repeat these runs are");
  report_cmd->add_option("--out", report_options.out, "result JSON")->required();
  report_cmd->add_option("--plots", report_options.plots_dir, "directory for data + PNGs");
  report_cmd->add_option("--markdown", report_options.markdown, "the tables as Markdown");

  RoutingOptions routing_options;
  auto* routing_cmd = app.add_subcommand(
      "routing", "a resident set's phase against the static runs and the per-request oracle");
  routing_cmd->add_option("runs", routing_options.run_files, "static run JSON files and the routed run")
      ->required();
  routing_cmd->add_option("--routed", routing_options.routed_label, "label of the routed run");
  routing_cmd->add_option("--phase", routing_options.phase, "the phase (default: the mix phase)");
  routing_cmd->add_option("--out", routing_options.out, "result JSON")->required();
  routing_cmd->add_option("--markdown", routing_options.markdown, "the table as Markdown");
  routing_cmd->add_option("--plots", routing_options.plots_dir, "directory for routing.dat + PNG");

  AggregateOptions aggregate_options;
  auto* aggregate_cmd = app.add_subcommand(
      "aggregate", "medians and ranges over the reports of every repeat and load point");
  aggregate_cmd->add_option("reports", aggregate_options.report_files, "report result.json files")
      ->required();
  aggregate_cmd->add_option("--out", aggregate_options.out, "aggregate JSON")->required();
  aggregate_cmd->add_option("--markdown", aggregate_options.markdown, "the tables as Markdown");

  const helios::CliErrorStyle style{.prefix = "helios_compare", .one_line_parse_errors = false};
  return helios::run_cli(app, argc, argv, style, [&] {
    if (*make) {
      spec.data_dir = data_dir;
      for (const std::string& p : phases) spec.phases.push_back(parse_phase(p));
      const Workload w = make_workload(spec);
      save_workload(w, workload_out);
      fmt::print("{}: {} requests over {:.0f} s\n", workload_out, w.requests.size(),
                 w.header["duration_s"].get<double>());
    } else if (*replay_cmd) {
      for (const std::string& p : pins) replay_options.pins.push_back(parse_pin(p));
      const nlohmann::json run = replay(replay_options);
      write_text(replay_options.out, run.dump(1) + "\n");
      int64_t ok = 0;
      for (const auto& r : run["requests"]) ok += r.value("ok", false) ? 1 : 0;
      fmt::print("{}: {} of {} requests ok in {:.1f} s\n", replay_options.label, ok,
                 run["requests"].size(), run["wall_s"].get<double>());
    } else if (*oracle_cmd) {
      for (const std::string& pin : oracle_pins(oracle_runs)) fmt::print("{}\n", pin);
    } else if (*routing_cmd) {
      fmt::print("{}", format_routing_report(make_routing_report(routing_options)));
    } else if (*report_cmd) {
      const nlohmann::json result = make_report(report_options);
      fmt::print("{}", format_report(result));
    } else {
      const nlohmann::json aggregate = make_aggregate(aggregate_options);
      fmt::print("{}", format_aggregate_markdown(aggregate));
    }
    return 0;
  });
}
