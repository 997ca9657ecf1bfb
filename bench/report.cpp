#include "report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include "bench_common.h"

namespace helios::bench {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

std::vector<double> field_of(const json& requests, const char* key) {
  std::vector<double> out;
  for (const json& r : requests) {
    if (r.value("ok", false) && r.contains(key)) out.push_back(r[key].get<double>());
  }
  return out;
}

json pooled_perplexity(const json& requests, const std::string& key = "", const std::string& value = "") {
  PerplexityPool pool;
  for (const json& r : requests) {
    if (key.empty() || r.value(key, "") == value) pool.add(r);
  }
  return pool.value();
}

// A figure as `format` prints it, "-" when absent.
std::string cell(const json& v, const char* format) {
  return v.is_number() ? fmt::format(fmt::runtime(format), v.get<double>()) : std::string("-");
}

std::string perplexity_change(const json& c) {
  return c["perplexity_increase"].is_number()
             ? fmt::format("{:+.1f}%", 100 * c["perplexity_increase"].get<double>())
             : std::string("-");
}

// The ratio columns of a comparison, in table order: key, console header and width, Markdown
// header. Both tables print them from this one list.
struct RatioColumn {
  const char* key;
  const char* text_header;
  int width;
  const char* markdown_header;
};
constexpr RatioColumn kRatioColumns[] = {
    {"throughput", "throughput", 10, "throughput"},
    {"largest_batch", "batch", 8, "largest batch"},
    {"kv_capacity_max", "KV seqs", 9, "KV capacity (max)"},
    {"e2e_p95_lower", "e2e p95 lo", 10, "p95 end-to-end, x lower"},
    {"ttft_p95_lower", "TTFT lo", 9, "p95 TTFT, x lower"},
    {"tpot_p95_lower", "TPOT lo", 9, "p95 TPOT, x lower"},
    {"energy_per_token_lower", "J/tok lo", 9, "energy/token, x lower"},
};

// First and last non-null value of a counter across the run's scrapes.
std::optional<double> counter_delta(const json& samples, const char* key) {
  std::optional<double> first, last;
  for (const json& s : samples) {
    if (s[key].is_null()) continue;
    if (!first) first = s[key].get<double>();
    last = s[key].get<double>();
  }
  if (!first) return std::nullopt;
  return *last - *first;
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
  s["max_arrival_lag_ms"] = run.value("max_arrival_lag_ms", 0.0);
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
  json c = {{"baseline", base["label"]},
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

json check_targets(const json& c, const Targets& t) {
  auto target = [&](const char* key, double goal) {
    const json& v = c[key];
    return json{{"target", goal}, {"measured", v}, {"met", v.is_number() && v.get<double>() >= goal}};
  };
  const json& ppl = c["perplexity_increase"];
  return {{"throughput", target("throughput", t.throughput)},
          {"sequences_held_at_once", target("largest_batch", t.sequences)},
          {"p95_latency_lower", target("e2e_p95_lower", t.p95_latency)},
          {"energy_per_token_lower", target("energy_per_token_lower", t.energy_per_token)},
          {"perplexity_increase",
           {{"limit", t.max_perplexity_increase},
            {"measured", ppl},
            {"met", ppl.is_number() && ppl.get<double>() <= t.max_perplexity_increase}}}};
}

}  // namespace

bool PerplexityPool::add(const json& request) {
  if (!request.value("ok", false) || !request.contains("prompt_perplexity")) return false;
  const double n = request["prompt_scored_tokens"].get<double>();
  nll_ += n * std::log(request["prompt_perplexity"].get<double>());
  tokens_ += n;
  return true;
}

json PerplexityPool::value() const {
  return tokens_ > 0 ? json(std::exp(nll_ / tokens_)) : json(nullptr);
}

void write_plots(const std::vector<json>& runs, const json& result, const fs::path& dir);

json make_report(const ReportOptions& options) {
  std::vector<json> runs;
  for (const std::string& file : options.run_files) {
    try {
      runs.push_back(json::parse(read_file(file)));
    } catch (const json::exception& e) {
      throw Fatal(fmt::format("{}: {}", file, e.what()));
    }
  }
  json summaries = json::array();
  const json* helios = nullptr;
  for (const json& run : runs) summaries.push_back(summarize_run(run));
  for (const json& s : summaries) {
    if (s["label"] == options.helios_label) helios = &s;
  }
  if (helios == nullptr) {
    throw Fatal(fmt::format("no run is labelled {}", options.helios_label));
  }
  json comparisons = json::array();
  const json* best = nullptr;
  for (const json& s : summaries) {
    if (&s == helios) continue;
    comparisons.push_back(compare(*helios, s));
    const auto p = number_at(s, json::json_pointer("/prompt_perplexity"));
    if (p && (best == nullptr || *p < (*best)["prompt_perplexity"].get<double>())) best = &s;
  }
  json result = {{"workload", runs.front().at("workload")},
                 {"runs", summaries},
                 {"helios", options.helios_label},
                 {"comparisons", comparisons}};
  if (best != nullptr) {
    const json c = compare(*helios, *best);
    result["best_static_baseline"] = {
        {"label", (*best)["label"]},
        {"why", "the static run with the lowest workload prompt perplexity"},
        {"ratios", c},
        {"targets", check_targets(c, options.targets)}};
  }
  if (!options.out.empty()) {
    std::ofstream out(options.out, std::ios::trunc);
    out << result.dump(2) << '\n';
    if (!out.flush()) throw Fatal(fmt::format("cannot write {}", options.out));
  }
  if (!options.plots_dir.empty()) write_plots(runs, result, options.plots_dir);
  if (!options.markdown.empty()) {
    std::ofstream out(options.markdown, std::ios::trunc);
    out << format_markdown(result);
    if (!out.flush()) throw Fatal(fmt::format("cannot write {}", options.markdown));
  }
  return result;
}

std::string format_report(const json& result) {
  std::string text;
  text += fmt::format("{:<18} {:>9} {:>7} {:>8} {:>9} {:>9} {:>9} {:>10} {:>8}  {}\n", "run",
                      "tok/s", "batch", "KV seqs", "e2e p95", "TTFT p95", "TPOT p95", "J/token",
                      "ppl", "models");
  for (const json& s : result["runs"]) {
    std::string models;
    for (const auto& [name, n] : s["models_served"].items()) {
      models += fmt::format("{}{}:{}", models.empty() ? "" : " ", name, n.get<int64_t>());
    }
    text += fmt::format("{:<18} {:>9} {:>7} {:>8} {:>9} {:>9} {:>9} {:>10} {:>8}  {}\n",
                        s["label"].get<std::string>(), cell(s["throughput_tokens_per_s"], "{:.0f}"),
                        cell(s["largest_batch"], "{:.0f}"),
                        cell(s["kv_capacity_sequences"]["max"], "{:.0f}"),
                        cell(s["e2e_ms"]["p95"], "{:.0f} ms"), cell(s["ttft_ms"]["p95"], "{:.0f} ms"),
                        cell(s["tpot_ms"]["p95"], "{:.1f} ms"),
                        cell(s["energy"]["joules_per_token"], "{:.4f}"),
                        cell(s["prompt_perplexity"], "{:.3f}"), models);
  }
  text += fmt::format("\n{:<22}", result["helios"].get<std::string>() + " / baseline:");
  for (const RatioColumn& column : kRatioColumns) {
    text += fmt::format(" {:>{}}", column.text_header, column.width);
  }
  for (const json& c : result["comparisons"]) {
    text += fmt::format("\n  vs {:<18}", c["baseline"].get<std::string>());
    for (const RatioColumn& column : kRatioColumns) {
      text += fmt::format(" {:>{}}", cell(c[column.key], "{:.2f}x"), column.width);
    }
    text += fmt::format("   ppl {}", perplexity_change(c));
  }
  text += "\n";
  if (result.contains("best_static_baseline")) {
    const json& b = result["best_static_baseline"];
    text += fmt::format("\nbest static baseline: {} ({})\n", b["label"].get<std::string>(),
                        b["why"].get<std::string>());
    for (const auto& [name, t] : b["targets"].items()) {
      const bool is_limit = t.contains("limit");
      text += fmt::format("  {:<24} {:>9}  {} {:<6} {}\n", name,
                          cell(t["measured"], is_limit ? "{:+.3f}" : "{:.2f}x"),
                          is_limit ? "limit" : "target",
                          cell(is_limit ? t["limit"] : t["target"], is_limit ? "{:.2f}" : "{:.2f}x"),
                          t["met"].get<bool>() ? "met" : "MISSED");
    }
  }
  return text;
}

std::string format_markdown(const json& result) {
  std::string md =
      "| run | models served (requests) | output tok/s | largest batch | mean batch | KV capacity "
      "(sequences, max / mean) | TTFT p50 / p95 ms | TPOT p50 / p95 ms | end-to-end p50 / p95 ms "
      "| energy J/token | prompt perplexity (all / prose / code) |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const json& s : result["runs"]) {
    std::string models;
    for (const auto& [name, n] : s["models_served"].items()) {
      models += fmt::format("{}{} ({})", models.empty() ? "" : ", ", name, n.get<int64_t>());
    }
    md += fmt::format(
        "| {} | {} | {} | {} | {} | {} / {} | {} / {} | {} / {} | {} / {} | {} | {} / {} / {} |\n",
        s["label"].get<std::string>(), models, cell(s["throughput_tokens_per_s"], "{:.0f}"),
        cell(s["largest_batch"], "{:.0f}"), cell(s["mean_batch"], "{:.1f}"),
        cell(s["kv_capacity_sequences"]["max"], "{:.0f}"),
        cell(s["kv_capacity_sequences"]["mean"], "{:.1f}"), cell(s["ttft_ms"]["p50"], "{:.0f}"),
        cell(s["ttft_ms"]["p95"], "{:.0f}"), cell(s["tpot_ms"]["p50"], "{:.1f}"),
        cell(s["tpot_ms"]["p95"], "{:.1f}"), cell(s["e2e_ms"]["p50"], "{:.0f}"),
        cell(s["e2e_ms"]["p95"], "{:.0f}"), cell(s["energy"]["joules_per_token"], "{:.4f}"),
        cell(s["prompt_perplexity"], "{:.2f}"), cell(s["prompt_perplexity_by_domain"]["prose"], "{:.2f}"),
        cell(s["prompt_perplexity_by_domain"]["code"], "{:.2f}"));
  }
  md += fmt::format("\n| {} / baseline |", result["helios"].get<std::string>());
  for (const RatioColumn& column : kRatioColumns) md += fmt::format(" {} |", column.markdown_header);
  md += " perplexity change |\n|---|";
  for (size_t i = 0; i <= std::size(kRatioColumns); ++i) md += "---|";
  for (const json& c : result["comparisons"]) {
    md += fmt::format("\n| vs {} |", c["baseline"].get<std::string>());
    for (const RatioColumn& column : kRatioColumns) {
      md += fmt::format(" {} |", cell(c[column.key], "{:.2f}x"));
    }
    md += fmt::format(" {} |", perplexity_change(c));
  }
  md += "\n";
  if (result.contains("best_static_baseline")) {
    const json& b = result["best_static_baseline"];
    md += fmt::format("\nTargets against the best static baseline, {} ({}):\n\n"
                      "| target | goal | measured | |\n|---|---|---|---|\n",
                      b["label"].get<std::string>(), b["why"].get<std::string>());
    for (const auto& [name, t] : b["targets"].items()) {
      const bool is_limit = t.contains("limit");
      md += fmt::format("| {} | {} | {} | {} |\n", name,
                        is_limit ? fmt::format("<= {:+.0f}%", 100 * t["limit"].get<double>())
                                 : cell(t["target"], ">= {:.2f}x"),
                        is_limit && t["measured"].is_number()
                            ? fmt::format("{:+.1f}%", 100 * t["measured"].get<double>())
                            : cell(t["measured"], "{:.2f}x"),
                        t["met"].get<bool>() ? "met" : "missed");
    }
  }
  return md;
}

}  // namespace helios::bench
