#include "routing.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <cmath>
#include <limits>
#include <map>

#include "analysis.h"
#include "bench_common.h"
#include "report.h"

namespace helios::bench {

using json = nlohmann::json;

namespace {

struct Phase {
  double tokens = 0, first_sent = std::numeric_limits<double>::infinity(), last_done = 0;
  int64_t requests = 0, ok = 0;
  double throughput() const { return last_done > first_sent ? tokens / (last_done - first_sent) : 0; }
};

Phase phase_of(const json& run, const std::string& phase) {
  Phase p;
  for (const json& r : run.at("requests")) {
    if (r.value("phase", "") != phase) continue;
    ++p.requests;
    p.first_sent = std::min(p.first_sent, r.at("sent_s").get<double>());
    p.last_done = std::max(p.last_done, r.at("done_s").get<double>());
    if (!r.value("ok", false)) continue;
    ++p.ok;
    p.tokens += r.value("output_tokens", 0.0);
  }
  return p;
}

// Per request index of `phase`: its prompt perplexity in `run` (scored ok requests only).
std::map<int64_t, const json*> scored(const json& run, const std::string& phase) {
  std::map<int64_t, const json*> out;
  for (const json& r : run.at("requests")) {
    if (r.value("phase", "") == phase && r.value("ok", false) && r.contains("prompt_perplexity")) {
      out[r.at("index").get<int64_t>()] = &r;
    }
  }
  return out;
}

std::string mix_phase(const json& run) {
  for (const json& phase : run.at("workload").at("phases")) {
    if (phase.value("domain", "") == "mix") return phase.at("name");
  }
  throw Fatal("the trace has no mix phase: name the phase the set served with --phase");
}

// The resident members' traffic over the routed run: per status sample, each member's routed
// requests per second since the previous sample and the KV blocks its sequences hold; a PNG.
void write_routing_plot(const json& run, const std::vector<std::string>& members,
                        const std::string& dir) {
  std::filesystem::create_directories(dir);
  std::string data = "# t";
  for (const std::string& m : members) data += " routed_per_s:" + m + " kv_blocks_used:" + m;
  data += "\n";
  std::map<std::string, double> last_routed;
  double last_t = 0;
  for (const json& s : run.at("status_samples")) {
    if (!s.contains("resident")) continue;
    const double t = s.at("t").get<double>();
    std::string line = fmt::format("{:.2f}", t);
    for (const std::string& m : members) {
      double routed = NAN, used = NAN;
      for (const json& r : s["resident"]) {
        if (r.at("model") != m) continue;
        routed = r.value("routed", 0.0);
        used = r.value("kv_blocks_used", 0.0);
      }
      const double rate = last_routed.contains(m) && t > last_t
                              ? (routed - last_routed[m]) / (t - last_t)
                              : NAN;
      if (!std::isnan(routed)) last_routed[m] = routed;
      line += fmt::format(" {} {}", rate, used);
    }
    last_t = t;
    data += line + "\n";
  }
  write_text(dir + "/routing.dat", data);
  std::string rates, blocks;
  for (size_t i = 0; i < members.size(); ++i) {
    rates += fmt::format("{}'routing.dat' using 1:{} with lines lw 1.5 title '{}'", i ? ", " : "",
                         2 + 2 * i, members[i]);
    blocks += fmt::format("{}'routing.dat' using 1:{} with steps lw 1.5 title '{}'", i ? ", " : "",
                          3 + 2 * i, members[i]);
  }
  write_text(dir + "/routing.gp",
             "set terminal pngcairo size 1000,700 font ',10'\nset output 'routing.png'\n"
             "set multiplot layout 2,1 title '" + run.at("label").get<std::string>() +
                 ": the resident set'\nset xlabel 'seconds'\nset key outside right\n"
                 "set ylabel 'requests routed / s'\nplot " + rates +
                 "\nset ylabel 'KV blocks held'\nplot " + blocks + "\nunset multiplot\n");
  const std::string command =
      fmt::format("cd '{}' && gnuplot routing.gp > routing.gnuplot.log 2>&1", dir);
  if (std::system(command.c_str()) != 0) throw Fatal("gnuplot failed; see " + dir + "/routing.gnuplot.log");
}

}  // namespace

json make_routing_report(const RoutingOptions& options) {
  std::vector<json> runs;
  for (const std::string& file : options.run_files) runs.push_back(json::parse(read_file(file)));
  const json* routed = nullptr;
  std::vector<const json*> statics;
  for (const json& run : runs) {
    if (run.at("label") == options.routed_label) {
      routed = &run;
    } else {
      statics.push_back(&run);
    }
  }
  if (routed == nullptr) throw Fatal("no run labelled " + options.routed_label);
  if (statics.empty()) throw Fatal("no static run to compare the routed run with");
  const std::string phase = options.phase.empty() ? mix_phase(*routed) : options.phase;

  json report = {{"phase", phase}, {"routed", options.routed_label}};
  // Each static model on the phase, and the per-request oracle over them.
  std::map<std::string, std::map<int64_t, const json*>> by_model;
  json static_rows = json::array();
  for (const json* run : statics) {
    const std::string model = served_model(*run).model;
    by_model[model] = scored(*run, phase);
    PerplexityPool pool;
    for (const auto& [index, r] : by_model[model]) pool.add(*r);
    static_rows.push_back({{"label", run->at("label")},
                           {"model", model},
                           {"prompt_perplexity", pool.value()},
                           {"throughput_tokens_per_s", phase_of(*run, phase).throughput()}});
  }
  PerplexityPool oracle;
  std::map<int64_t, const json*> best_of;  // per request: its scores on the static model best for it
  for (const auto& [index, r] : by_model.begin()->second) {
    const json* best = nullptr;
    for (const auto& [model, requests] : by_model) {
      const auto it = requests.find(index);
      if (it == requests.end()) continue;
      if (best == nullptr || it->second->at("prompt_perplexity").get<double>() <
                                 best->at("prompt_perplexity").get<double>()) {
        best = it->second;
      }
    }
    oracle.add(*best);
    best_of[index] = best;
  }
  report["statics"] = static_rows;
  report["oracle_prompt_perplexity"] = oracle.value();

  // The routed run: which member served each request, and was it the better of the members?
  const std::map<int64_t, const json*> routed_requests = scored(*routed, phase);
  PerplexityPool routed_pool;
  std::map<std::string, int64_t> served_by;
  int64_t judged = 0, right = 0;
  std::vector<std::string> members;
  for (const json& pin : routed->value("pins", json::array())) {
    for (const json& m : pin.value("set", json::array())) members.push_back(m.at("model"));
  }
  if (members.empty()) {
    // A set the controller chose: every model its status samples list in a set of two or more.
    for (const json& s : routed->at("status_samples")) {
      if (!s.contains("resident") || s["resident"].size() < 2) continue;
      for (const json& m : s["resident"]) {
        const std::string name = m.value("model", "");
        if (!name.empty() && std::find(members.begin(), members.end(), name) == members.end()) {
          members.push_back(name);
        }
      }
    }
  }
  // The spans of the run during which a set of two or more served (status samples, the
  // requests' clock): a request whose first token and end fall within one was prefilled and
  // decoded by the member the router chose, not by a profiling pass's candidates (it may
  // have been sent, and queued, before).
  std::vector<std::pair<double, double>> set_spans;
  bool in_set = false;
  for (const json& s : routed->at("status_samples")) {
    const bool set = s.contains("resident") && s["resident"].size() >= 2;
    const double t = s.value("t", 0.0);
    if (set && !in_set) set_spans.push_back({t, t});
    if (set) set_spans.back().second = t;
    in_set = set;
  }
  PerplexityPool set_pool, set_oracle;
  int64_t set_served = 0;
  for (const auto& [index, r] : routed_requests) {
    routed_pool.add(*r);
    const double first_token = r->value("sent_s", -1.0) + r->value("ttft_ms", 0.0) / 1e3;
    const double done = r->value("done_s", -1.0);
    const bool within = std::any_of(set_spans.begin(), set_spans.end(), [&](const auto& span) {
      return first_token >= span.first && done <= span.second;
    });
    if (within && best_of.count(index) && set_pool.add(*r)) {
      set_oracle.add(*best_of.at(index));
      ++set_served;
    }
    const std::string model = r->value("model", "");
    ++served_by[model];
    // The member whose static run scored this prompt lowest (full depth, the same prompt).
    std::string better;
    double lowest = std::numeric_limits<double>::infinity();
    for (const std::string& member : members) {
      const auto statics_of = by_model.find(member);
      if (statics_of == by_model.end()) continue;
      const auto it = statics_of->second.find(index);
      if (it == statics_of->second.end()) continue;
      const double ppl = it->second->at("prompt_perplexity").get<double>();
      if (ppl < lowest) lowest = ppl, better = member;
    }
    if (better.empty() || std::find(members.begin(), members.end(), model) == members.end()) {
      continue;  // served outside the set (a profiling stint)
    }
    ++judged;
    right += better == model;
  }
  const Phase routed_phase = phase_of(*routed, phase);
  const double routed_ppl = routed_pool.value().is_number() ? routed_pool.value().get<double>() : NAN;
  json best_static = nullptr, fastest_static = nullptr;
  for (const json& row : static_rows) {
    if (row["prompt_perplexity"].is_number() &&
        (best_static.is_null() || row["prompt_perplexity"] < best_static["prompt_perplexity"])) {
      best_static = row;
    }
    if (fastest_static.is_null() ||
        row["throughput_tokens_per_s"] > fastest_static["throughput_tokens_per_s"]) {
      fastest_static = row;
    }
  }
  const double oracle_ppl = report["oracle_prompt_perplexity"].get<double>();
  const std::optional<double> router_seconds = counter_delta(routed->at("counter_samples"), "router_seconds");
  int64_t peak_resident = 0, budget = 0;
  for (const json& s : routed->at("status_samples")) {
    if (!s.contains("resident")) continue;
    int64_t bytes = 0;
    for (const json& m : s["resident"]) bytes += m.value("weight_bytes", int64_t{0}) + m.value("kv_cache_bytes", int64_t{0});
    peak_resident = std::max(peak_resident, bytes);
    budget = s.value("memory_budget_bytes", int64_t{0});
  }
  report["members"] = members;
  report["routed_run"] = {
      {"requests", routed_phase.requests},
      {"ok", routed_phase.ok},
      {"prompt_perplexity", routed_pool.value()},
      {"throughput_tokens_per_s", routed_phase.throughput()},
      {"served_by", served_by},
      {"routing_accuracy", judged > 0 ? json(static_cast<double>(right) / judged) : json(nullptr)},
      {"routing_judged", judged},
      {"router_ms_per_request",
       router_seconds && !routed_requests.empty()
           ? json(*router_seconds * 1e3 / static_cast<double>(routed_requests.size()))
           : json(nullptr)},
      {"peak_resident_bytes", peak_resident},
      {"memory_budget_bytes", budget}};
  report["perplexity_vs_oracle"] = routed_ppl / oracle_ppl - 1.0;
  // The same on the requests the set served from their first token to their last (the
  // passes' stints left out).
  report["set_served_requests"] = set_served;
  report["set_perplexity_vs_oracle"] =
      set_served > 0 && set_pool.value().is_number() && set_oracle.value().is_number()
          ? json(set_pool.value().get<double>() / set_oracle.value().get<double>() - 1.0)
          : json(nullptr);
  report["best_static"] = best_static;
  report["fastest_static"] = fastest_static;
  report["throughput_vs_best_static"] =
      routed_phase.throughput() / best_static["throughput_tokens_per_s"].get<double>();
  report["throughput_vs_fastest_static"] =
      routed_phase.throughput() / fastest_static["throughput_tokens_per_s"].get<double>();
  const std::optional<double> step_seconds =
      counter_delta(routed->at("counter_samples"), "engine_step_seconds");
  report["routed_run"]["router_share_of_step_time"] =
      router_seconds && step_seconds && *step_seconds > 0 ? json(*router_seconds / *step_seconds)
                                                          : json(nullptr);
  if (!options.plots_dir.empty()) write_routing_plot(*routed, members, options.plots_dir);
  write_text(options.out, report.dump(1) + "\n");
  if (!options.markdown.empty()) write_text(options.markdown, format_routing_report(report));
  return report;
}

std::string format_routing_report(const json& r) {
  auto number = [](const json& v, const char* format) {
    return v.is_number() ? fmt::format(fmt::runtime(format), v.get<double>()) : std::string("-");
  };
  std::string out = fmt::format("Phase {}: resident set {} against the static models\n\n",
                                r["phase"].get<std::string>(), r["members"].dump());
  out += "| run | prompt perplexity | output tokens/s |\n|---|---|---|\n";
  for (const json& row : r["statics"]) {
    out += fmt::format("| {} | {} | {} |\n", row["label"].get<std::string>(),
                       number(row["prompt_perplexity"], "{:.2f}"),
                       number(row["throughput_tokens_per_s"], "{:.0f}"));
  }
  const json& routed = r["routed_run"];
  out += fmt::format("| per-request oracle | {} | |\n", number(r["oracle_prompt_perplexity"], "{:.2f}"));
  out += fmt::format("| {} | {} | {} |\n\n", r["routed"].get<std::string>(),
                     number(routed["prompt_perplexity"], "{:.2f}"),
                     number(routed["throughput_tokens_per_s"], "{:.0f}"));
  out += fmt::format(
      "perplexity vs the per-request oracle: {} ({} on the {} requests the set served from "
      "their first token to their last); throughput vs the best static ({}): {}x, vs "
      "the fastest static ({}): {}x; routed to the better member: {} of {} judged; router: {} "
      "ms per request ({} of engine step time); served by: {}; peak resident weights + KV: {} of "
      "{} bytes\n",
      number(json(r["perplexity_vs_oracle"].get<double>() * 100), "{:+.1f}%"),
      number(r.value("set_perplexity_vs_oracle", json(nullptr)).is_number()
                 ? json(r["set_perplexity_vs_oracle"].get<double>() * 100)
                 : json(nullptr),
             "{:+.1f}%"),
      r.value("set_served_requests", int64_t{0}),
      r["best_static"]["model"].get<std::string>(), number(r["throughput_vs_best_static"], "{:.2f}"),
      r["fastest_static"]["model"].get<std::string>(),
      number(r["throughput_vs_fastest_static"], "{:.2f}"),
      number(routed["routing_accuracy"].is_number() ? json(routed["routing_accuracy"].get<double>() * 100) : json(nullptr), "{:.1f}%"),
      routed["routing_judged"].get<int64_t>(), number(routed["router_ms_per_request"], "{:.3f}"),
      number(routed["router_share_of_step_time"].is_number()
                 ? json(routed["router_share_of_step_time"].get<double>() * 100)
                 : json(nullptr),
             "{:.1f}%"),
      routed["served_by"].dump(), routed["peak_resident_bytes"].get<int64_t>(),
      routed["memory_budget_bytes"].get<int64_t>());
  return out;
}

}  // namespace helios::bench
