// The comparison's plots: gnuplot data files per run, one script, PNGs (pngcairo).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include "bench_common.h"
#include "report.h"

namespace helios::bench {

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

void write_file(const fs::path& path, const std::string& text) { write_text(path.string(), text); }

double number_or(const json& v, double fallback) {
  return v.is_number() ? v.get<double>() : fallback;
}

// Per interval between consecutive /metrics scrapes: tokens/s, joules/token, mean batch.
std::string counters_data(const json& run) {
  std::string out = "# t_s tokens_per_s joules_per_token mean_batch model_switches\n";
  const json& c = run.at("counter_samples");
  for (size_t i = 1; i < c.size(); ++i) {
    const json &a = c[i - 1], &b = c[i];
    const double dt = b["t"].get<double>() - a["t"].get<double>();
    if (dt <= 0 || b["generation_tokens"].is_null() || a["generation_tokens"].is_null()) continue;
    const double tokens = b["generation_tokens"].get<double>() - a["generation_tokens"].get<double>();
    const double joules = number_or(b["energy_joules"], 0) - number_or(a["energy_joules"], 0);
    const double count = number_or(b["batch_size_count"], 0) - number_or(a["batch_size_count"], 0);
    const double sum = number_or(b["batch_size_sum"], 0) - number_or(a["batch_size_sum"], 0);
    out += fmt::format("{:.3f} {:.3f} {} {} {}\n", b["t"].get<double>(), tokens / dt,
                       tokens > 0 ? fmt::format("{:.6g}", joules / tokens) : "NaN",
                       count > 0 ? fmt::format("{:.3f}", sum / count) : "NaN",
                       number_or(b["model_switches"], 0));
  }
  return out;
}

// Per second: the largest batch polled, and at the second's end the KV capacity, the loaded
// layers and the served model (its index in `models`, in order of first appearance).
std::string status_data(const json& run, std::vector<std::string>& models) {
  std::string out = "# t_s largest_running kv_capacity_sequences loaded_layers model_index\n";
  std::map<int64_t, json> seconds;
  for (const json& s : run.at("status_samples")) {
    const auto second = static_cast<int64_t>(std::floor(s["t"].get<double>()));
    json& bucket = seconds[second];
    if (bucket.is_null()) bucket = json::object();
    bucket["running"] = std::max(bucket.value("running", 0), s["running"].get<int>());
    bucket["capacity"] = s["kv_capacity_sequences"];
    bucket["layers"] = s["loaded_layers"];
    const std::string model = s["model"];
    auto it = std::find(models.begin(), models.end(), model);
    if (it == models.end()) it = models.insert(models.end(), model);
    bucket["model"] = it - models.begin();
  }
  for (const auto& [second, b] : seconds) {
    out += fmt::format("{} {} {} {} {}\n", second + 1, b["running"].get<int>(),
                       b["capacity"].get<double>(), b["layers"].get<int>(), b["model"].get<int>());
  }
  return out;
}

// Prompt perplexity of the requests sent in each window (pooled over their tokens).
std::string perplexity_data(const json& run, double window) {
  std::string out = "# t_mid_s prompt_perplexity\n";
  std::map<int64_t, PerplexityPool> windows;
  for (const json& r : run.at("requests")) {
    windows[static_cast<int64_t>(r["sent_s"].get<double>() / window)].add(r);
  }
  for (const auto& [index, pool] : windows) {
    const json ppl = pool.value();
    if (ppl.is_null()) continue;  // no scored request arrived in this window
    out += fmt::format("{:.2f} {:.4f}\n", (static_cast<double>(index) + 0.5) * window,
                       ppl.get<double>());
  }
  return out;
}

std::string gp_string(const std::string& s) { return "\"" + s + "\""; }

// The helios runs and the oracle stand out from the static baselines.
bool highlighted(const json& run, const json& result) {
  const json& helios = result.at("helios");
  return std::find(helios.begin(), helios.end(), run.at("label")) != helios.end() ||
         result.at("oracle") == run.at("label");
}

std::string style_of(const json& run, const json& result) {
  const std::string label = run.at("label");
  const json& helios = result.at("helios");
  if (!helios.empty() && helios[0] == label) return "lw 2.5 lc rgb 'black'";
  if (std::find(helios.begin(), helios.end(), label) != helios.end()) {
    return "lw 2.5 lc rgb '#d95f02'";
  }
  if (result.at("oracle") == label) return "lw 2 dashtype 2 lc rgb '#1b9e77'";
  return "lw 1.2";
}

}  // namespace

void write_plots(const std::vector<json>& runs, const json& result, const fs::path& dir) {
  fs::create_directories(dir);
  double duration = 0;
  for (const json& run : runs) duration = std::max(duration, run.at("wall_s").get<double>());
  const double window = std::max(2.0, duration / 24.0);
  // Phase boundaries: when the first helios run sent each phase's first request (the trace's
  // offsets in the open loop; in the closed loop each run reaches them at its own pace).
  const json* reference = &runs.front();
  for (const json& run : runs) {
    if (run.at("label") == result.at("helios").at(0)) reference = &run;
  }
  std::map<std::string, double> phase_start;
  for (const json& r : reference->at("requests")) {
    const std::string phase = r.value("phase", "");
    if (!phase_start.contains(phase)) phase_start[phase] = r.at("sent_s").get<double>();
  }
  std::string phase_lines;
  for (const json& p : result.at("workload").at("phases")) {
    const std::string name = p["name"];
    if (!phase_start.contains(name)) continue;
    const double start = phase_start[name];
    phase_lines += fmt::format(
        "set arrow from {0}, graph 0 to {0}, graph 1 nohead dashtype 2 lc rgb 'gray40'\n", start);
    phase_lines += fmt::format("set label {} at {}, graph 0.97 left font ',9' tc rgb 'gray30'\n",
                               gp_string(name), start + duration * 0.005);
  }

  std::string summary = "# label ttft_p50 ttft_p95 tpot_p50 tpot_p95 e2e_p50 e2e_p95 "
                        "joules_per_token prompt_perplexity tokens_per_s largest_batch\n";
  for (const json& s : result.at("runs")) {
    summary += fmt::format("{} {} {} {} {} {} {} {} {} {} {}\n", gp_string(s["label"].get<std::string>()),
                           number_or(s["ttft_ms"]["p50"], NAN), number_or(s["ttft_ms"]["p95"], NAN),
                           number_or(s["tpot_ms"]["p50"], NAN), number_or(s["tpot_ms"]["p95"], NAN),
                           number_or(s["e2e_ms"]["p50"], NAN), number_or(s["e2e_ms"]["p95"], NAN),
                           number_or(s["energy"]["joules_per_token"], NAN),
                           number_or(s["prompt_perplexity"], NAN),
                           number_or(s["throughput_tokens_per_s"], NAN),
                           number_or(s["largest_batch"], NAN));
  }
  write_file(dir / "summary.dat", summary);

  std::string counters_plot, status_plot, capacity_plot, ppl_plot, layers_plot, energy_plot,
      model_panels;
  int panels = 0;
  for (const json& run : runs) {
    const std::string label = run.at("label");
    std::vector<std::string> models;
    write_file(dir / (label + ".counters.dat"), counters_data(run));
    write_file(dir / (label + ".status.dat"), status_data(run, models));
    write_file(dir / (label + ".perplexity.dat"), perplexity_data(run, window));
    const std::string style = style_of(run, result);
    auto add = [&](std::string& plot, const std::string& file, const std::string& columns,
                   const char* with) {
      plot += fmt::format("{}{} using {} with {} {} title {}", plot.empty() ? "plot " : ", ",
                          gp_string(file), columns, with, style, gp_string(label));
    };
    add(counters_plot, label + ".counters.dat", "1:2", "lines");
    add(energy_plot, label + ".counters.dat", "1:3", "lines");
    add(status_plot, label + ".status.dat", "1:2", "steps");
    add(capacity_plot, label + ".status.dat", "1:3", "steps");
    add(layers_plot, label + ".status.dat", "1:4", "steps");
    add(ppl_plot, label + ".perplexity.dat", "1:2", "linespoints");
    if (highlighted(run, result)) {  // which model each helios run and the oracle served when
      std::string tics;
      for (size_t i = 0; i < models.size(); ++i) {
        tics += fmt::format("{}{} {}", i ? ", " : "", gp_string(models[i]), i);
      }
      model_panels += fmt::format(
          "set title 'Model {} serves'\nset ylabel ''\nset ytics ({})\nset yrange [-0.5:{}]\n"
          "plot {} using 1:5 with steps {} notitle\n",
          label, tics, static_cast<double>(models.size()) - 0.5, gp_string(label + ".status.dat"),
          style);
      ++panels;
    }
  }
  const std::string head =
      "set terminal pngcairo size 1100,520 font ',10'\nset grid\nset key outside right\n"
      "set xlabel 'time (s)'\nset yrange [0:*]\n";
  std::string script = head + phase_lines;
  auto figure = [&](const char* file, const char* title, const char* ylabel, const std::string& plot) {
    script += fmt::format("set output '{}'\nset title {}\nset ylabel {}\n{}\n", file,
                          gp_string(title), gp_string(ylabel), plot);
  };
  figure("throughput.png", "Generated tokens per second (server counter)", "tokens/s", counters_plot);
  figure("batch.png", "Largest batch (running sequences) per second", "sequences", status_plot);
  figure("kv_capacity.png", "KV capacity in full-context sequences", "sequences", capacity_plot);
  figure("energy_per_token.png", "Energy per generated token (per scrape interval)", "J/token",
         energy_plot);
  // A model outside its domain is orders of magnitude worse: log scale.
  script += "set logscale y\nset yrange [*:*]\n";
  figure("perplexity.png", "Prompt perplexity of arriving requests (early exit, served depth)",
         "perplexity (log scale)", ppl_plot);
  script += "unset logscale y\nset yrange [0:*]\n";
  // Panels: every run's loaded layers, then which model each helios run and the oracle served.
  script += fmt::format(
      "set output 'layers.png'\nset terminal pngcairo size 1100,{} font ',10'\n"
      "set multiplot layout {},1\nset title 'Loaded layers'\nset ylabel 'layers'\n{}\n{}"
      "unset multiplot\nset ytics autofreq\nset yrange [0:*]\n"
      "set terminal pngcairo size 1100,520 font ',10'\n",
      360 + 240 * panels, panels + 1, layers_plot, model_panels);
  // Bars from the summary: latency percentiles side by side.
  script +=
      "unset arrow\nunset label\nset xlabel ''\nset autoscale y\nset style data histograms\n"
      "set style histogram clustered gap 1\nset style fill solid 0.8 border -1\n"
      "set xtics rotate by -20\nset key inside top right\n"
      "set output 'latency.png'\nset multiplot layout 1,3 title 'Latency percentiles (ms)'\n"
      // Queueing puts TTFT and end-to-end times of an overloaded run orders of magnitude
      // above the others: log scale for those two.
      "set logscale y\nset title 'TTFT (log scale)'\n"
      "plot 'summary.dat' using 2:xtic(1) title 'p50', '' using 3 title 'p95'\n"
      "unset logscale y\nset yrange [0:*]\nset title 'Time per output token'\n"
      "plot 'summary.dat' using 4:xtic(1) title 'p50', '' using 5 title 'p95'\n"
      "set autoscale y\nset logscale y\nset title 'End to end (log scale)'\n"
      "plot 'summary.dat' using 6:xtic(1) title 'p50', '' using 7 title 'p95'\n"
      "unset logscale y\nunset multiplot\n"
      "set output 'energy.png'\nset multiplot layout 1,2 title 'Energy and accuracy'\n";
  bool energy = false;
  for (const json& s : result.at("runs")) energy |= s["energy"]["joules_per_token"].is_number();
  // A daemon without an energy meter leaves the panel empty rather than failing the plot.
  script += energy ? "set title 'Energy per generated token (J)'\n"
                     "plot 'summary.dat' using 8:xtic(1) notitle\n"
                   : "set title 'Energy per generated token: not measured'\nplot 0 notitle\n";
  script +=
      "set title 'Prompt perplexity (whole workload)'\nplot 'summary.dat' using 9:xtic(1) notitle\n"
      "unset multiplot\n";
  write_file(dir / "plots.gp", script);
  const std::string command =
      fmt::format("cd '{}' && gnuplot plots.gp > gnuplot.log 2>&1", dir.string());
  if (std::system(command.c_str()) != 0) {
    throw Fatal(fmt::format("gnuplot failed; see {}", (dir / "gnuplot.log").string()));
  }
}

}  // namespace helios::bench
