#include "report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include "bench_common.h"
#include "replay.h"

namespace helios::bench {

using json = nlohmann::json;
namespace fs = std::filesystem;

const std::vector<TargetSpec>& targets() {
  static const std::vector<TargetSpec> list = {
      {"perplexity_increase", nullptr, "best", "perplexity_increase", true, 0.02,
       "workload prompt perplexity change"},
      {"throughput", "saturation", "best", "throughput", false, 2.0, "output tokens/s"},
      {"sequences_held_at_once", "saturation", "best", "largest_batch", false, 5.0,
       "largest batch (sequences held at once)"},
      {"p95_latency_lower", "rate", "best", "e2e_p95_lower", false, 1.5,
       "p95 end-to-end, x lower"},
      {"energy_per_token_lower", "saturation", "best", "energy_per_token_lower", false, 1.2,
       "energy per token, x lower"},
      {"throughput_vs_oracle", "saturation", "oracle", "throughput", false, 0.85,
       "output tokens/s within 15% of the oracle's"},
      {"perplexity_vs_oracle", "saturation", "oracle", "perplexity_increase", true, 0.0,
       "prompt perplexity <= the oracle's"},
  };
  return list;
}

const std::vector<RatioColumn>& ratio_columns() {
  static const std::vector<RatioColumn> columns = {
      {"throughput", "throughput", 10, "throughput"},
      {"largest_batch", "batch", 8, "largest batch"},
      {"kv_capacity_max", "KV seqs", 9, "KV capacity (max)"},
      {"e2e_p95_lower", "e2e p95 lo", 10, "p95 end-to-end, x lower"},
      {"ttft_p95_lower", "TTFT lo", 9, "p95 TTFT, x lower"},
      {"tpot_p95_lower", "TPOT lo", 9, "p95 TPOT, x lower"},
      {"energy_per_token_lower", "J/tok lo", 9, "energy/token, x lower"},
  };
  return columns;
}

std::string scaled(const json& v, double scale, const char* format) {
  return cell(v.is_number() ? json(v.get<double>() * scale) : v, format);
}

std::string percent_change(const json& v) {
  return v.is_number() ? fmt::format("{:+.1f}%", 100 * v.get<double>()) : std::string("-");
}

std::string cell(const json& v, const char* format) {
  return v.is_number() ? fmt::format(fmt::runtime(format), v.get<double>()) : std::string("-");
}

std::string target_goal_text(const TargetSpec& t) {
  return t.at_most ? fmt::format("<= {:+.0f}%", 100 * t.goal) : fmt::format(">= {:.2f}x", t.goal);
}

std::string target_value_text(const TargetSpec& t, const json& measured) {
  return t.at_most ? percent_change(measured) : cell(measured, "{:.2f}x");
}

const TargetSpec& target_named(const std::string& name) {
  for (const TargetSpec& t : targets()) {
    if (name == t.name) return t;
  }
  throw Fatal("no target named " + name);
}

json read_json(const std::string& path) {
  try {
    return json::parse(read_file(path));
  } catch (const json::exception& e) {
    throw Fatal(fmt::format("{}: {}", path, e.what()));
  }
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  if (!out.flush()) throw Fatal(fmt::format("cannot write {}", path));
}

namespace {

std::vector<double> field_of(const json& requests, const char* key) {
  std::vector<double> out;
  for (const json& r : requests) {
    if (r.value("ok", false) && r.contains(key)) out.push_back(r[key].get<double>());
  }
  return out;
}

json summarize_run(const json& run) {
  const json& requests = run.at("requests");
  json s;
  s["label"] = run.at("label");
  int64_t ok = 0, output_tokens = 0;
  double first_sent = 1e300, last_done = 0, exit_sum = 0;
  std::map<std::string, int64_t> failures, models;
  for (const json& r : requests) {
    first_sent = std::min(first_sent, r.at("sent_s").get<double>());
    last_done = std::max(last_done, r.at("done_s").get<double>());
    if (r.value("ok", false)) {
      ++ok;
      const int64_t n = r.value("output_tokens", int64_t{0});
      output_tokens += n;
      exit_sum += r.value("mean_exit_layer", 0.0) * static_cast<double>(n);
      ++models[r.value("model", "")];
    } else {
      ++failures[r.value("status", "") + "/" + r.value("finish", "")];
    }
  }
  const double makespan = requests.empty() ? 0 : last_done - first_sent;
  s["requests"] = requests.size();
  s["ok"] = ok;
  s["failures"] = failures;
  s["makespan_s"] = makespan;
  s["output_tokens"] = output_tokens;
  s["throughput_tokens_per_s"] = makespan > 0 ? output_tokens / makespan : 0.0;
  s["requests_per_s"] = makespan > 0 ? static_cast<double>(ok) / makespan : 0.0;
  s["mean_exit_layer"] = output_tokens > 0 ? exit_sum / static_cast<double>(output_tokens) : 0.0;
  s["models_served"] = models;
  s["ttft_ms"] = to_json(summarize(field_of(requests, "ttft_ms")));
  s["tpot_ms"] = to_json(summarize(field_of(requests, "tpot_ms")));
  s["e2e_ms"] = to_json(summarize(field_of(requests, "e2e_ms")));
  s["prompt_perplexity"] = pooled_perplexity(requests);
  s["prompt_perplexity_by_domain"] = {{"prose", pooled_perplexity(requests, "domain", "prose")},
                                      {"code", pooled_perplexity(requests, "domain", "code")}};
  json phases = json::object();
  for (const json& phase : run.at("workload").at("phases")) {
    const std::string name = phase.at("name");
    json in_phase = json::array();
    for (const json& r : requests) {
      if (r.value("phase", "") == name) in_phase.push_back(r);
    }
    phases[name] = {{"requests", in_phase.size()},
                    {"prompt_perplexity", pooled_perplexity(in_phase)},
                    {"e2e_ms", to_json(summarize(field_of(in_phase, "e2e_ms")))}};
  }
  s["phases"] = phases;

  uint64_t largest = 0;
  double capacity_sum = 0, capacity_max = 0;
  const json& status = run.at("status_samples");
  for (const json& p : status) {
    largest = std::max<uint64_t>(largest, p.at("running").get<uint64_t>());
    capacity_sum += p.at("kv_capacity_sequences").get<double>();
    capacity_max = std::max(capacity_max, p.at("kv_capacity_sequences").get<double>());
  }
  s["largest_batch"] = largest;
  s["kv_capacity_sequences"] = {
      {"max", capacity_max},
      {"mean", status.empty() ? 0.0 : capacity_sum / static_cast<double>(status.size())}};
  const json& counters = run.at("counter_samples");
  const auto batch_sum = counter_delta(counters, "batch_size_sum");
  const auto batch_count = counter_delta(counters, "batch_size_count");
  s["mean_batch"] = batch_sum && batch_count && *batch_count > 0 ? json(*batch_sum / *batch_count)
                                                                 : json(nullptr);
  const auto joules = counter_delta(counters, "energy_joules");
  const auto generated = counter_delta(counters, "generation_tokens");
  s["energy"] = {{"source", run.value("energy_source", "")},
                 {"joules", to_json(joules)},
                 {"generated_tokens", to_json(generated)},
                 {"joules_per_token", joules && generated && *generated > 0
                                          ? json(*joules / *generated)
                                          : json(nullptr)}};
  s["model_switches"] = to_json(counter_delta(counters, "model_switches"));
  s["layer_loads"] = to_json(counter_delta(counters, "layer_loads"));
  s["profiling_runs"] = to_json(counter_delta(counters, "profiling_runs"));
  s["preemptions"] = to_json(counter_delta(counters, "preemptions"));
  s["max_arrival_lag_ms"] = run.value("max_arrival_lag_ms", json(nullptr));
  s["load"] = run.value("load", json(nullptr));
  return s;
}

std::optional<double> number_at(const json& j, const json::json_pointer& p) {
  if (!j.contains(p) || !j[p].is_number()) return std::nullopt;
  return j[p].get<double>();
}

// helios / baseline for "more is better", baseline / helios for "less is better".
json ratio(const json& helios, const json& base, const char* pointer, bool higher_is_better) {
  const json::json_pointer p(pointer);
  const auto h = number_at(helios, p), b = number_at(base, p);
  if (!h || !b || *h <= 0 || *b <= 0) return nullptr;
  return higher_is_better ? *h / *b : *b / *h;
}

json compare(const json& helios, const json& base) {
  json c = {{"helios", helios["label"]},
            {"baseline", base["label"]},
            {"throughput", ratio(helios, base, "/throughput_tokens_per_s", true)},
            {"largest_batch", ratio(helios, base, "/largest_batch", true)},
            {"kv_capacity_max", ratio(helios, base, "/kv_capacity_sequences/max", true)},
            {"kv_capacity_mean", ratio(helios, base, "/kv_capacity_sequences/mean", true)},
            {"e2e_p95_lower", ratio(helios, base, "/e2e_ms/p95", false)},
            {"ttft_p95_lower", ratio(helios, base, "/ttft_ms/p95", false)},
            {"tpot_p95_lower", ratio(helios, base, "/tpot_ms/p95", false)},
            {"energy_per_token_lower", ratio(helios, base, "/energy/joules_per_token", false)}};
  const auto hp = number_at(helios, json::json_pointer("/prompt_perplexity"));
  const auto bp = number_at(base, json::json_pointer("/prompt_perplexity"));
  c["perplexity_increase"] = hp && bp ? json(*hp / *bp - 1.0) : json(nullptr);
  return c;
}

// The targets of `load_point` for one helios run, from its ratios against the best static
// baseline and against the oracle (either may be null).
json check_targets(const std::string& load_point, const json& vs_best, const json& vs_oracle) {
  json out = json::object();
  for (const TargetSpec& t : targets()) {
    if (t.load_point != nullptr && load_point != t.load_point) continue;
    const json& against = std::string(t.against) == "oracle" ? vs_oracle : vs_best;
    const json measured = against.is_object() ? against.value(t.ratio, json(nullptr)) : json(nullptr);
    const bool met = measured.is_number() && (t.at_most ? measured.get<double>() <= t.goal
                                                        : measured.get<double>() >= t.goal);
    out[t.name] = {{"what", t.what},
                   {"against", against.is_object() ? against["baseline"] : json(nullptr)},
                   {"ratio", t.ratio},
                   {"goal", t.goal},
                   {"at_most", t.at_most},
                   {"measured", measured},
                   {"met", met}};
  }
  return out;
}

std::string role_of(const std::string& label, const ReportOptions& options) {
  if (std::find(options.helios_labels.begin(), options.helios_labels.end(), label) !=
      options.helios_labels.end()) {
    return "helios";
  }
  return label == options.oracle_label ? "oracle" : "static";
}

std::string models_text(const json& s, const char* format) {
  std::string models;
  for (const auto& [name, n] : s["models_served"].items()) {
    models += fmt::format(fmt::runtime(format), models.empty() ? "" : ", ", name, n.get<int64_t>());
  }
  return models;
}

// The targets a report judged for one helios run, in the order of targets().
std::vector<std::pair<TargetSpec, json>> targets_of(const json& result, const json& label) {
  std::vector<std::pair<TargetSpec, json>> out;
  const json& checked = result["targets"][label.get<std::string>()];
  for (const TargetSpec& t : targets()) {
    if (checked.contains(t.name)) out.emplace_back(t, checked[t.name]);
  }
  return out;
}

}  // namespace

void write_plots(const std::vector<json>& runs, const json& result, const fs::path& dir);

std::vector<std::string> oracle_pins(const std::vector<std::string>& static_run_files) {
  std::vector<json> runs;
  for (const std::string& file : static_run_files) runs.push_back(read_json(file));
  std::vector<const json*> pointers;
  for (const json& run : runs) pointers.push_back(&run);
  const json best = phase_best(pointers);
  std::vector<std::string> pins;
  for (const json& phase : runs.front().at("workload").at("phases")) {
    const json& b = best.at(phase.at("name").get<std::string>());
    pins.push_back(to_string(Pin{.phase = phase["name"].get<std::string>(),
                                 .model = b["model"].get<std::string>(),
                                 .layers = b["layers"].get<int64_t>()}));
  }
  return pins;
}

json make_report(const ReportOptions& options) {
  std::vector<json> runs;
  for (const std::string& file : options.run_files) runs.push_back(read_json(file));
  json summaries = json::array();
  std::vector<const json*> static_runs;
  json helios_labels = json::array(), oracle = nullptr;
  for (const json& run : runs) {
    json s = summarize_run(run);
    s["role"] = role_of(run.at("label"), options);
    if (s["role"] == "static") static_runs.push_back(&run);
    if (s["role"] == "helios") helios_labels.push_back(s["label"]);
    if (s["role"] == "oracle") {
      oracle = s["label"];
      s["pins"] = run.value("pins", json::array());
    }
    summaries.push_back(std::move(s));
  }
  if (helios_labels.empty()) throw Fatal("no run is labelled as a helios run (see --helios)");
  const json front_load = runs.front().value("load", json::object());
  const std::string load_point =
      !options.load_point.empty()               ? options.load_point
      : front_load.value("mode", "") == "closed" ? "saturation"
                                                 : "rate";
  json result = {{"workload", runs.front().at("workload")},
                 {"load_point", load_point},
                 {"load", front_load},
                 {"repeat", options.repeat},
                 {"helios", helios_labels},
                 {"oracle", oracle}};
  const json* best = nullptr;
  const json* oracle_summary = nullptr;
  for (const json& s : summaries) {
    if (s["role"] == "oracle") oracle_summary = &s;
    if (s["role"] != "static") continue;
    const auto p = number_at(s, json::json_pointer("/prompt_perplexity"));
    if (p && (best == nullptr || *p < (*best)["prompt_perplexity"].get<double>())) best = &s;
  }
  if (!static_runs.empty()) {
    result["phase_best"] = phase_best(static_runs);
    for (size_t i = 0; i < runs.size(); ++i) {
      json& s = summaries[i];
      if (s["role"] != "static") s["following_phases"] = following_phases(runs[i], result["phase_best"]);
      if (s["role"] == "helios") s["profiling_cost"] = profiling_cost(runs[i]);
    }
  }
  json comparisons = json::array(), vs_best = json::object(), vs_oracle = json::object(),
       checked = json::object();
  for (const json& h : summaries) {
    if (h["role"] != "helios") continue;
    const std::string label = h["label"];
    for (const json& s : summaries) {
      if (s["role"] != "helios") comparisons.push_back(compare(h, s));
    }
    vs_best[label] = best != nullptr ? compare(h, *best) : json(nullptr);
    vs_oracle[label] = oracle_summary != nullptr ? compare(h, *oracle_summary) : json(nullptr);
    checked[label] = check_targets(load_point, vs_best[label], vs_oracle[label]);
  }
  result["runs"] = summaries;
  result["comparisons"] = comparisons;
  if (best != nullptr) {
    result["best_static_baseline"] = {
        {"label", (*best)["label"]},
        {"why", "the static run with the lowest workload prompt perplexity"}};
  }
  result["vs_best"] = vs_best;
  result["vs_oracle"] = vs_oracle;
  result["targets"] = checked;
  if (!options.out.empty()) write_text(options.out, result.dump(2) + "\n");
  if (!options.plots_dir.empty()) write_plots(runs, result, options.plots_dir);
  if (!options.markdown.empty()) write_text(options.markdown, format_markdown(result));
  return result;
}

std::string format_report(const json& result) {
  std::string text = fmt::format("load point {} (repeat {})\n", result["load_point"].get<std::string>(),
                                 result["repeat"].get<int64_t>());
  text += fmt::format("{:<22} {:>9} {:>7} {:>8} {:>9} {:>9} {:>9} {:>10} {:>8}  {}\n", "run",
                      "tok/s", "batch", "KV seqs", "e2e p95", "TTFT p95", "TPOT p95", "J/token",
                      "ppl", "models");
  for (const json& s : result["runs"]) {
    text += fmt::format("{:<22} {:>9} {:>7} {:>8} {:>9} {:>9} {:>9} {:>10} {:>8}  {}\n",
                        s["label"].get<std::string>(), cell(s["throughput_tokens_per_s"], "{:.0f}"),
                        cell(s["largest_batch"], "{:.0f}"),
                        cell(s["kv_capacity_sequences"]["max"], "{:.0f}"),
                        cell(s["e2e_ms"]["p95"], "{:.0f} ms"), cell(s["ttft_ms"]["p95"], "{:.0f} ms"),
                        cell(s["tpot_ms"]["p95"], "{:.1f} ms"),
                        cell(s["energy"]["joules_per_token"], "{:.4f}"),
                        cell(s["prompt_perplexity"], "{:.3f}"), models_text(s, "{}{}:{}"));
  }
  std::string best_label = result.contains("best_static_baseline")
                               ? result["best_static_baseline"]["label"].get<std::string>()
                               : std::string("-");
  for (const json& label : result["helios"]) {
    text += fmt::format("\n{:<33}", label.get<std::string>() + " / baseline:");
    for (const RatioColumn& column : ratio_columns()) {
      text += fmt::format(" {:>{}}", column.text_header, column.width);
    }
    for (const json& c : result["comparisons"]) {
      if (c["helios"] != label) continue;
      const std::string base = c["baseline"];
      text += fmt::format("\n  vs {:<29}", base + (base == best_label ? " (best)" : ""));
      for (const RatioColumn& column : ratio_columns()) {
        text += fmt::format(" {:>{}}", cell(c[column.key], "{:.2f}x"), column.width);
      }
      text += fmt::format("   ppl {}", percent_change(c["perplexity_increase"]));
    }
    text += "\n";
    for (const auto& [spec, t] : targets_of(result, label)) {
      text += fmt::format("  target {:<24} {:>9}  goal {:<8} {}\n", spec.name,
                          target_value_text(spec, t["measured"]), target_goal_text(spec),
                          t["met"].get<bool>() ? "met" : "MISSED");
    }
  }
  return text;
}

std::string format_markdown(const json& result) {
  const json& load = result["load"];
  std::string md = fmt::format(
      "Load point **{}** ({}), repeat {}.\n\n", result["load_point"].get<std::string>(),
      load.value("mode", "") == "closed"
          ? fmt::format("closed loop, {} workers", load.value("concurrency", int64_t{0}))
          : std::string("open loop, requests at their Poisson offsets"),
      result["repeat"].get<int64_t>());
  md +=
      "| run | models served (requests) | output tok/s | largest batch | mean batch | KV capacity "
      "(sequences, max / mean) | TTFT p50 / p95 ms | TPOT p50 / p95 ms | end-to-end p50 / p95 ms "
      "| energy J/token | prompt perplexity (all / prose / code) |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const json& s : result["runs"]) {
    md += fmt::format(
        "| {} | {} | {} | {} | {} | {} / {} | {} / {} | {} / {} | {} / {} | {} | {} / {} / {} |\n",
        s["label"].get<std::string>(), models_text(s, "{}{} ({})"),
        cell(s["throughput_tokens_per_s"], "{:.0f}"), cell(s["largest_batch"], "{:.0f}"),
        cell(s["mean_batch"], "{:.1f}"), cell(s["kv_capacity_sequences"]["max"], "{:.0f}"),
        cell(s["kv_capacity_sequences"]["mean"], "{:.1f}"), cell(s["ttft_ms"]["p50"], "{:.0f}"),
        cell(s["ttft_ms"]["p95"], "{:.0f}"), cell(s["tpot_ms"]["p50"], "{:.1f}"),
        cell(s["tpot_ms"]["p95"], "{:.1f}"), cell(s["e2e_ms"]["p50"], "{:.0f}"),
        cell(s["e2e_ms"]["p95"], "{:.0f}"), cell(s["energy"]["joules_per_token"], "{:.4f}"),
        cell(s["prompt_perplexity"], "{:.2f}"), cell(s["prompt_perplexity_by_domain"]["prose"], "{:.2f}"),
        cell(s["prompt_perplexity_by_domain"]["code"], "{:.2f}"));
  }
  for (const json& label : result["helios"]) {
    md += fmt::format("\n| {} / baseline |", label.get<std::string>());
    for (const RatioColumn& column : ratio_columns()) md += fmt::format(" {} |", column.markdown_header);
    md += " perplexity change |\n|---|";
    for (size_t i = 0; i <= ratio_columns().size(); ++i) md += "---|";
    for (const json& c : result["comparisons"]) {
      if (c["helios"] != label) continue;
      md += fmt::format("\n| vs {} |", c["baseline"].get<std::string>());
      for (const RatioColumn& column : ratio_columns()) {
        md += fmt::format(" {} |", cell(c[column.key], "{:.2f}x"));
      }
      md += fmt::format(" {} |", percent_change(c["perplexity_increase"]));
    }
    md += "\n";
  }
  if (result.contains("best_static_baseline")) {
    const json& b = result["best_static_baseline"];
    md += fmt::format("\nBest static baseline: {} ({}). Best static model of each phase "
                      "(lowest prompt perplexity on the phase's requests):",
                      b["label"].get<std::string>(), b["why"].get<std::string>());
    for (const auto& [phase, p] : result["phase_best"].items()) {
      md += fmt::format(" {} {} ({:.2f});", phase, p["model"].get<std::string>(),
                        p["prompt_perplexity"].get<double>());
    }
    md += "\n";
  }
  md += "\n| target | run | against | goal | measured | |\n|---|---|---|---|---|---|\n";
  for (const json& label : result["helios"]) {
    for (const auto& [spec, t] : targets_of(result, label)) {
      md += fmt::format("| {} ({}) | {} | {} | {} | {} | {} |\n", spec.name, spec.what,
                        label.get<std::string>(), t["against"].is_string() ? t["against"].get<std::string>() : "-",
                        target_goal_text(spec), target_value_text(spec, t["measured"]),
                        t["met"].get<bool>() ? "met" : "missed");
    }
  }
  md += "\nFollowing the phases: the share of each phase's second half of requests (trace order) "
        "served by the phase's best static model, and the requests from the phase's first until "
        "the first one it served.\n\n| run | phase | best static model | second-half share | "
        "requests until it served |\n|---|---|---|---|---|\n";
  for (const json& s : result["runs"]) {
    if (!s.contains("following_phases")) continue;
    for (const auto& [phase, f] : s["following_phases"].items()) {
      md += fmt::format("| {} | {} | {} | {} | {} |\n", s["label"].get<std::string>(), phase,
                        f["best_model"].get<std::string>(), cell(f["second_half_share"], "{:.2f}"),
                        f["requests_until_best"].is_null()
                            ? std::string("never")
                            : std::to_string(f["requests_until_best"].get<int64_t>()));
    }
  }
  md += "\nProfiling cost (helios runs): time in controller phase `profiling` (GetStatus, 0.1 s "
        "polls) and its share of the wall time; engine step seconds while in that phase "
        "(`helios_engine_step_seconds_total`, scraped at every phase change) as a share of all "
        "step seconds; evidence scoring seconds on the controller thread "
        "(`helios_controller_evidence_seconds_total`) against the engine's step seconds; the most "
        "bytes the scoring held (rows' `evidence_peak_bytes`) and the reserve kept for it; p95 "
        "end-to-end of requests in flight during a pass against the others.\n\n"
        "| run | passes | profiling time (share of wall) | step time while profiling (share) | "
        "evidence s (/ step s) | evidence peak / reserve MiB | p95 e2e during / outside a pass "
        "ms (requests) |\n|---|---|---|---|---|---|---|\n";
  for (const json& s : result["runs"]) {
    if (!s.contains("profiling_cost") || s["profiling_cost"].is_null()) continue;
    const json& p = s["profiling_cost"];
    md += fmt::format(
        "| {} | {} | {} s ({}) | {} s ({}) | {} ({}) | {} / {} | {} / {} ({} / {}) |\n",
        s["label"].get<std::string>(), p["passes"].get<int64_t>(),
        cell(p["profiling_seconds"], "{:.1f}"), scaled(p["profiling_wall_share"], 100, "{:.0f}%"),
        cell(p["profiling_step_seconds"], "{:.1f}"), scaled(p["profiling_step_share"], 100, "{:.0f}%"),
        cell(p["evidence_seconds"], "{:.2f}"), scaled(p["evidence_step_ratio"], 100, "{:.1f}%"),
        scaled(p["evidence_peak_bytes"], 1.0 / 1048576, "{:.2f}"),
        scaled(p["evidence_reserve_bytes"], 1.0 / 1048576, "{:.2f}"),
        cell(p["e2e_during_profiling"]["p95_ms"], "{:.0f}"),
        cell(p["e2e_outside_profiling"]["p95_ms"], "{:.0f}"),
        p["e2e_during_profiling"]["requests"].get<int64_t>(),
        p["e2e_outside_profiling"]["requests"].get<int64_t>());
  }
  for (const json& s : result["runs"]) {
    if (s["role"] != "oracle") continue;
    md += fmt::format("\nOracle pins ({}): ", s["label"].get<std::string>());
    for (const json& p : s["pins"]) {
      md += fmt::format("{} -> {}:{} at {:.1f} s ({:.0f} ms); ", p["phase"].get<std::string>(),
                        p["model"].get<std::string>(), p["layers"].get<int64_t>(),
                        p["asked_s"].get<double>(),
                        1e3 * (p["returned_s"].get<double>() - p["asked_s"].get<double>()));
    }
    md += "\n";
  }
  return md;
}

}  // namespace helios::bench
