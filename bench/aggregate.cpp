#include "aggregate.h"

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <map>

#include "bench_common.h"
#include "report.h"

namespace helios::bench {
namespace {

using json = nlohmann::json;
using Format = std::function<std::string(const json&)>;

// The headline figures of a run summary, per policy: key, where it is, how a cell prints it, the
// table's header.
struct Figure {
  const char* key;
  const char* pointer;
  const char* format;
  const char* header;
  double scale = 1;  // what the value is multiplied by (to MiB, to %)
};
const Figure kFigures[] = {
    {"throughput_tokens_per_s", "/throughput_tokens_per_s", "{:.0f}", "output tok/s"},
    {"largest_batch", "/largest_batch", "{:.0f}", "largest batch"},
    {"kv_capacity_max", "/kv_capacity_sequences/max", "{:.0f}", "KV capacity max (sequences)"},
    {"e2e_p50_ms", "/e2e_ms/p50", "{:.0f}", "p50 end-to-end ms"},
    {"e2e_p95_ms", "/e2e_ms/p95", "{:.0f}", "p95 end-to-end ms"},
    {"ttft_p95_ms", "/ttft_ms/p95", "{:.0f}", "p95 TTFT ms"},
    {"joules_per_token", "/energy/joules_per_token", "{:.4f}", "energy J/token"},
    {"prompt_perplexity", "/prompt_perplexity", "{:.3f}", "workload perplexity"},
};

// The profiling-cost figures of a helios run, the same way.
const Figure kProfilingFigures[] = {
    {"passes", "/passes", "{:.0f}", "passes"},
    {"profiling_wall_share_pct", "/profiling_wall_share", "{:.1f}%", "time profiling (share of wall)",
     100},
    {"profiling_step_share_pct", "/profiling_step_share", "{:.1f}%",
     "engine step time while profiling (share)", 100},
    {"evidence_seconds", "/evidence_seconds", "{:.2f}", "evidence scoring s"},
    {"evidence_step_ratio_pct", "/evidence_step_ratio", "{:.1f}%", "evidence s / engine step s", 100},
    {"evidence_peak_mib", "/evidence_peak_bytes", "{:.2f}", "evidence peak MiB", 1.0 / 1048576},
    {"evidence_reserve_mib", "/evidence_reserve_bytes", "{:.2f}", "evidence reserve MiB",
     1.0 / 1048576},
    {"e2e_p95_during_ms", "/e2e_during_profiling/p95_ms", "{:.0f}", "p95 e2e during a pass ms"},
    {"e2e_p95_outside_ms", "/e2e_outside_profiling/p95_ms", "{:.0f}", "p95 e2e outside ms"},
};

json at(const json& j, const char* pointer) {
  const json::json_pointer p(pointer);
  return j.is_object() && j.contains(p) ? j[p] : json(nullptr);
}

// Median and min-max of the numbers among `values` (one per repeat; nulls skipped), with the
// values themselves; null when there is no number.
json spread(const std::vector<json>& values) {
  std::vector<double> numbers;
  for (const json& v : values) {
    if (v.is_number()) numbers.push_back(v.get<double>());
  }
  if (numbers.empty()) return nullptr;
  std::sort(numbers.begin(), numbers.end());
  const size_t n = numbers.size();
  const double median = n % 2 ? numbers[n / 2] : (numbers[n / 2 - 1] + numbers[n / 2]) / 2;
  return {{"median", median}, {"min", numbers.front()}, {"max", numbers.back()}, {"values", values}};
}

// "median (min-max)", or the one value when they agree.
std::string spread_text(const json& s, const Format& format) {
  if (!s.is_object()) return "-";
  if (s["min"] == s["max"]) return format(s["median"]);
  return fmt::format("{} ({} to {})", format(s["median"]), format(s["min"]), format(s["max"]));
}

Format printf_format(const char* format) {
  return [format](const json& v) { return cell(v, format); };
}

// Reports by load point, in the order the load points first appear.
std::vector<std::pair<std::string, std::vector<const json*>>> by_load_point(
    const std::vector<json>& reports) {
  std::vector<std::pair<std::string, std::vector<const json*>>> out;
  for (const json& r : reports) {
    const std::string lp = r.at("load_point");
    auto it = std::find_if(out.begin(), out.end(), [&](const auto& e) { return e.first == lp; });
    if (it == out.end()) it = out.insert(out.end(), {lp, {}});
    it->second.push_back(&r);
  }
  return out;
}

const json* run_labelled(const json& report, const std::string& label) {
  for (const json& s : report.at("runs")) {
    if (s.at("label") == label) return &s;
  }
  return nullptr;
}

// Labels in the order of the first report's runs, then any the others add.
std::vector<std::string> labels_of(const std::vector<const json*>& reports) {
  std::vector<std::string> labels;
  for (const json* r : reports) {
    for (const json& s : r->at("runs")) {
      const std::string label = s.at("label");
      if (std::find(labels.begin(), labels.end(), label) == labels.end()) labels.push_back(label);
    }
  }
  return labels;
}

// One figure of one run over the repeats of a load point: spread of `pointer` under `where`.
json over_repeats(const std::vector<const json*>& reports, const std::string& label,
                  const std::function<json(const json& report, const json* run)>& value) {
  std::vector<json> values;
  for (const json* r : reports) values.push_back(value(*r, run_labelled(*r, label)));
  return spread(values);
}

}  // namespace

json make_aggregate(const AggregateOptions& options) {
  std::vector<json> reports;
  for (const std::string& file : options.report_files) reports.push_back(read_json(file));
  if (reports.empty()) throw UsageError("aggregate: no report given");
  std::sort(reports.begin(), reports.end(), [](const json& a, const json& b) {
    return a.value("repeat", int64_t{0}) < b.value("repeat", int64_t{0});
  });
  json repeats = json::array();
  for (const json& r : reports) {
    if (std::find(repeats.begin(), repeats.end(), r["repeat"]) == repeats.end()) {
      repeats.push_back(r["repeat"]);
    }
  }
  json out = {{"workload", reports.front().at("workload")},
              {"repeats", repeats},
              {"load_points", json::object()},
              {"targets", json::array()}};
  std::vector<std::string> helios_labels;
  for (const auto& [lp, group] : by_load_point(reports)) {
    json point = {{"load", group.front()->at("load")},
                  {"policies", json::array()},
                  {"best_static_baseline", json::array()},
                  {"ratios", json::object()},
                  {"following_phases", json::object()},
                  {"profiling_cost", json::object()}};
    for (const json* r : group) {
      point["best_static_baseline"].push_back(
          {{"repeat", (*r)["repeat"]}, {"label", at(*r, "/best_static_baseline/label")}});
    }
    for (const std::string& label : labels_of(group)) {
      const json* first = run_labelled(*group.front(), label);
      json policy = {{"label", label}, {"role", first != nullptr ? first->at("role") : json(nullptr)}};
      for (const Figure& f : kFigures) {
        policy[f.key] = over_repeats(group, label, [&](const json&, const json* run) {
          return run != nullptr ? at(*run, f.pointer) : json(nullptr);
        });
      }
      point["policies"].push_back(std::move(policy));
      if (first != nullptr && first->at("role") == "helios") {
        if (std::find(helios_labels.begin(), helios_labels.end(), label) == helios_labels.end()) {
          helios_labels.push_back(label);
        }
        for (const char* against : {"vs_best", "vs_oracle"}) {
          json& ratios = point["ratios"][label][against];
          std::vector<std::string> keys;
          for (const RatioColumn& c : ratio_columns()) keys.push_back(c.key);
          keys.push_back("perplexity_increase");
          for (const std::string& key : keys) {
            ratios[key] = over_repeats(group, label, [&](const json& report, const json*) {
              const json& c = report[against][label];
              return c.is_object() ? c.value(key, json(nullptr)) : json(nullptr);
            });
          }
        }
        json& cost = point["profiling_cost"][label];
        for (const Figure& f : kProfilingFigures) {
          cost[f.key] = over_repeats(group, label, [&](const json&, const json* run) {
            const json v = run != nullptr ? at(*run, (std::string("/profiling_cost") + f.pointer).c_str())
                                          : json(nullptr);
            return v.is_number() ? json(v.get<double>() * f.scale) : v;
          });
        }
      }
      if (first == nullptr || !first->contains("following_phases")) continue;
      for (const auto& [phase, ignored] : (*first)["following_phases"].items()) {
        json best_models = json::array();
        int64_t never = 0;
        for (const json* r : group) {
          const json* run = run_labelled(*r, label);
          const json f = run != nullptr ? at(*run, ("/following_phases/" + phase).c_str()) : json(nullptr);
          best_models.push_back(at(f, "/best_model"));
          never += f.is_object() && f["requests_until_best"].is_null() ? 1 : 0;
        }
        auto figure = [&](const char* key) {
          return over_repeats(group, label, [&](const json&, const json* run) {
            return run != nullptr ? at(*run, ("/following_phases/" + phase + "/" + key).c_str())
                                  : json(nullptr);
          });
        };
        point["following_phases"][label][phase] = {
            {"best_models", best_models},
            {"phase_change", at(*first, ("/following_phases/" + phase + "/phase_change").c_str())},
            {"second_half_share", figure("second_half_share")},
            {"requests_until_best", figure("requests_until_best")},
            {"never", never}};
      }
    }
    out["load_points"][lp] = std::move(point);
  }

  // Targets: each helios run's figure in every (repeat, load point) the target applies to.
  for (const TargetSpec& t : targets()) {
    for (const std::string& label : helios_labels) {
      json per = json::array();
      bool met = true;
      for (const json& r : reports) {
        if (t.load_point != nullptr && r["load_point"] != t.load_point) continue;
        const json checked = at(r, ("/targets/" + label + "/" + t.name).c_str());
        per.push_back({{"repeat", r["repeat"]},
                       {"load_point", r["load_point"]},
                       {"against", at(checked, "/against")},
                       {"measured", at(checked, "/measured")},
                       {"met", checked.is_object() && checked["met"].get<bool>()}});
        met &= per.back()["met"].get<bool>();
      }
      out["targets"].push_back({{"name", t.name},
                                {"what", t.what},
                                {"helios", label},
                                {"load_point", t.load_point != nullptr ? t.load_point : "every"},
                                {"against", t.against},
                                {"goal", t.goal},
                                {"at_most", t.at_most},
                                {"per_repeat", per},
                                {"met", met && !per.empty()}});
    }
  }
  if (!options.out.empty()) write_text(options.out, out.dump(2) + "\n");
  if (!options.markdown.empty()) write_text(options.markdown, format_aggregate_markdown(out));
  return out;
}

std::string format_aggregate_markdown(const json& a) {
  const json& phases = a.at("workload").at("phases");
  std::string phase_list;
  for (const json& p : phases) {
    phase_list += fmt::format("{}{} {:.0f} s", phase_list.empty() ? "" : ", ",
                              p["domain"].get<std::string>(),
                              p["end_s"].get<double>() - p["start_s"].get<double>());
  }
  std::string md = fmt::format(
      "Repeats: {}. Trace: {} requests, phases {} at {} requests/s (seed {}). Each cell: the "
      "median over the repeats, with the range (min to max) when they differ.\n",
      a["repeats"].size(), a["workload"]["requests"].get<int64_t>(), phase_list,
      phases.at(0)["rate_rps"].get<double>(), a["workload"]["seed"].get<uint64_t>());
  for (const auto& [lp, point] : a["load_points"].items()) {
    const json& load = point["load"];
    md += fmt::format("\n### Load point {} ({})\n\n| policy |", lp,
                      load.value("mode", "") == "closed"
                          ? fmt::format("closed loop, {} workers", load.value("concurrency", int64_t{0}))
                          : std::string("open loop, requests at their trace offsets"));
    for (const Figure& f : kFigures) md += fmt::format(" {} |", f.header);
    md += "\n|---|";
    for (size_t i = 0; i < std::size(kFigures); ++i) md += "---|";
    for (const json& figures : point["policies"]) {
      md += fmt::format("\n| {} |", figures["label"].get<std::string>());
      for (const Figure& f : kFigures) {
        md += fmt::format(" {} |", spread_text(figures[f.key], printf_format(f.format)));
      }
    }
    md += "\n\nBest static baseline (lowest workload perplexity):";
    for (const json& b : point["best_static_baseline"]) {
      md += fmt::format(" repeat {} {};", b["repeat"].get<int64_t>(),
                        b["label"].is_string() ? b["label"].get<std::string>() : "-");
    }
    md += "\n\n| ratio |";
    for (const auto& [label, ignored] : point["ratios"].items()) {
      md += fmt::format(" {} vs best static | {} vs oracle |", label, label);
    }
    md += "\n|---|";
    for (size_t i = 0; i < 2 * point["ratios"].size(); ++i) md += "---|";
    auto ratio_row = [&](const std::string& key, const char* header, const Format& format) {
      md += fmt::format("\n| {} |", header);
      for (const auto& [label, r] : point["ratios"].items()) {
        md += fmt::format(" {} | {} |", spread_text(r["vs_best"][key], format),
                          spread_text(r["vs_oracle"][key], format));
      }
    };
    for (const RatioColumn& c : ratio_columns()) {
      ratio_row(c.key, c.markdown_header, printf_format("{:.2f}x"));
    }
    ratio_row("perplexity_increase", "perplexity change", percent_change);
    md += "\n";
  }

  md += "\n### Targets (met only when met in every repeat)\n\n"
        "| target | run | load point | against | goal | per repeat | |\n|---|---|---|---|---|---|---|\n";
  for (const json& t : a["targets"]) {
    const TargetSpec& spec = target_named(t["name"]);
    std::string per;
    for (const json& p : t["per_repeat"]) {
      per += fmt::format("{}r{} {}: {} {}", per.empty() ? "" : "; ", p["repeat"].get<int64_t>(),
                         p["load_point"].get<std::string>(), target_value_text(spec, p["measured"]),
                         p["met"].get<bool>() ? "met" : "missed");
    }
    md += fmt::format("| {} ({}) | {} | {} | {} | {} | {} | {} |\n", spec.name, spec.what,
                      t["helios"].get<std::string>(), t["load_point"].get<std::string>(),
                      std::string(spec.against) == "oracle" ? "oracle" : "best static baseline",
                      target_goal_text(spec), per, t["met"].get<bool>() ? "**met**" : "**missed**");
  }

  md += "\n### Following the phases\n\nPer phase: its best static model (lowest prompt perplexity "
        "on the phase's requests, same repeat and load point), the share of the phase's second "
        "half of requests (trace order) that model served, and the requests from the phase's "
        "first until the first one it served (repeats where it never did counted apart).\n\n"
        "| load point | run | phase | best static model | second-half share | requests until "
        "served | never |\n|---|---|---|---|---|---|---|\n";
  for (const auto& [lp, point] : a["load_points"].items()) {
    for (const auto& [label, by_phase] : point["following_phases"].items()) {
      for (const auto& [phase, f] : by_phase.items()) {
        std::string models;
        for (const json& m : f["best_models"]) {
          const std::string name = m.is_string() ? m.get<std::string>() : "-";
          if (models.find(name) == std::string::npos) models += (models.empty() ? "" : ", ") + name;
        }
        md += fmt::format("| {} | {} | {}{} | {} | {} | {} | {} |\n", lp, label, phase,
                          f["phase_change"] == true ? "" : " (start)", models,
                          spread_text(f["second_half_share"], printf_format("{:.2f}")),
                          spread_text(f["requests_until_best"], printf_format("{:.0f}")),
                          f["never"].get<int64_t>());
      }
    }
  }

  md += "\n### Profiling cost\n\nTime in controller phase `profiling` (GetStatus polled every "
        "0.1 s); engine step seconds (`helios_engine_step_seconds_total`, scraped at every phase "
        "change) while in that phase, as a share of all; seconds scoring candidates on the "
        "controller thread (`helios_controller_evidence_seconds_total`, beside the engine, not "
        "inside its steps) and their ratio to the engine's step seconds; the most bytes that "
        "scoring held (`evidence_peak_bytes` of the table rows) and the reserve kept for it "
        "(`evidence_reserve_bytes`); p95 end-to-end of requests in flight during a pass and of "
        "the others.\n\n| load point | run |";
  for (const Figure& f : kProfilingFigures) md += fmt::format(" {} |", f.header);
  md += "\n|---|---|";
  for (size_t i = 0; i < std::size(kProfilingFigures); ++i) md += "---|";
  for (const auto& [lp, point] : a["load_points"].items()) {
    for (const auto& [label, cost] : point["profiling_cost"].items()) {
      md += fmt::format("\n| {} | {} |", lp, label);
      for (const Figure& f : kProfilingFigures) {
        md += fmt::format(" {} |", spread_text(cost[f.key], printf_format(f.format)));
      }
    }
  }
  md += "\n";
  return md;
}

}  // namespace helios::bench
