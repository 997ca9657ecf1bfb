// bench/compare.sh --quick end to end on the micro zoo: at both load points (open loop at the
// trace's rate, closed loop at saturation) every daemon starts and stops cleanly and every request
// of the drifting trace is served under every policy (each static model, the oracle, helios in
// profile modes serve and sample); the oracle's pins happened where they should and the model
// it served followed them; each report holds complete, self-consistent figures; the aggregate
// holds every policy, the targets judged from the per-repeat figures, the following-the-phases
// and profiling-cost figures; and the plots exist.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "common/run_command.h"
#include "common/scratch_dir.h"
#include "helios/common/files.h"

namespace helios {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr int64_t kQuickConcurrency = 64;
const std::set<std::string> kStatic = {"static-code-micro", "static-mix-micro",
                                       "static-prose-micro"};
const std::set<std::string> kHelios = {"helios", "helios-sample"};

double number(const json& j, const char* pointer) {
  const json& v = j.at(json::json_pointer(pointer));
  EXPECT_TRUE(v.is_number()) << pointer << " is " << v.dump();
  return v.is_number() ? v.get<double>() : 0.0;
}

void expect_percentiles(const json& run, const char* name) {
  SCOPED_TRACE(name);
  const json& p = run.at(name);
  ASSERT_TRUE(p.at("p50").is_number() && p.at("p95").is_number()) << p.dump();
  EXPECT_GT(p["p50"].get<double>(), 0.0);
  EXPECT_LE(p["p50"].get<double>(), p["p95"].get<double>());
}

// The comparison's output folder, read as JSON.
struct Output {
  fs::path dir;
  json load(const fs::path& relative) const { return json::parse(read_file(dir / relative)); }
};

// Each (repeat 1, load point) report: every policy served every request, with sane figures.
void expect_every_request_served(const Output& out) {
  const json aggregate = out.load("result.json");
  const size_t requests = aggregate.at("workload").at("requests").get<size_t>();
  ASSERT_GT(requests, 50u);
  std::vector<std::string> domains;
  for (const json& p : aggregate["workload"]["phases"]) domains.push_back(p.at("domain"));
  EXPECT_EQ(domains, (std::vector<std::string>{"prose", "code", "mix", "prose"}));

  for (const char* point : {"rate", "saturation"}) {
    SCOPED_TRACE(point);
    const json r = out.load(fs::path("r1") / point / "result.json");
    EXPECT_EQ(r.at("load_point"), point);
    EXPECT_EQ(r.at("repeat"), 1);
    const bool closed = std::string(point) == "saturation";
    EXPECT_EQ(r.at("load").at("mode"), closed ? "closed" : "open");
    std::set<std::string> labels;
    for (const json& run : r.at("runs")) {
      const std::string label = run.at("label");
      SCOPED_TRACE(label);
      labels.insert(label);
      EXPECT_EQ(run.at("requests").get<size_t>(), requests);
      EXPECT_EQ(run.at("ok").get<size_t>(), requests) << run["failures"].dump();
      EXPECT_GT(number(run, "/throughput_tokens_per_s"), 0.0);
      EXPECT_GE(number(run, "/largest_batch"), 1.0);
      EXPECT_GE(number(run, "/kv_capacity_sequences/max"), number(run, "/kv_capacity_sequences/mean"));
      EXPECT_GE(number(run, "/mean_batch"), 1.0);
      expect_percentiles(run, "ttft_ms");
      expect_percentiles(run, "tpot_ms");
      expect_percentiles(run, "e2e_ms");
      // Every request's prompt was scored; a byte-level model beats the uniform 256.
      const double ppl = number(run, "/prompt_perplexity");
      EXPECT_GT(ppl, 1.0);
      EXPECT_LT(ppl, 256.0);
      EXPECT_EQ(run.at("energy").value("source", ""), "cpu_estimate");
      EXPECT_GT(number(run, "/energy/joules_per_token"), 0.0);
      EXPECT_GE(number(run, "/energy/generated_tokens"), number(run, "/output_tokens"));
      if (kStatic.contains(label)) {
        EXPECT_EQ(run.at("role"), "static");
        EXPECT_EQ(run.at("models_served").size(), 1u);
        EXPECT_TRUE(run.at("model_switches").is_null()) << run["model_switches"];
      } else if (label == "helios") {
        // Profile mode serve: every candidate serves requests while it is profiled.
        EXPECT_GT(run.at("models_served").size(), 1u);
      }
    }
    std::set<std::string> expected = kStatic;
    expected.insert({"oracle", "helios", "helios-sample"});
    EXPECT_EQ(labels, expected);

    for (const std::string& label : labels) {
      const json run = out.load(fs::path("r1") / point / "runs" / (label + ".json"));
      SCOPED_TRACE(label);
      if (closed) {
        // The closed loop kept its workers busy and never had more requests out than workers.
        EXPECT_EQ(run.at("load").at("concurrency"), kQuickConcurrency);
        EXPECT_EQ(run["load"].at("most_in_flight"), kQuickConcurrency);
        std::vector<std::pair<double, int>> events;
        for (const json& q : run["requests"]) {
          events.emplace_back(q.at("sent_s").get<double>(), 1);
          events.emplace_back(q.at("done_s").get<double>(), -1);
        }
        std::sort(events.begin(), events.end());  // at a tie the finish (-1) comes first
        int in_flight = 0, most = 0;
        for (const auto& [t, d] : events) most = std::max(most, in_flight += d);
        EXPECT_LE(most, kQuickConcurrency);
      } else {
        EXPECT_TRUE(run.at("load").at("concurrency").is_null());
      }
    }
  }
}

// The oracle: one pin per phase, to the phase's best static model at its full depth; nothing of a
// phase was sent before its pin returned; whatever ran wholly between two pins was served by the
// pinned model.
void expect_oracle_pins(const Output& out) {
  for (const char* point : {"rate", "saturation"}) {
    SCOPED_TRACE(point);
    const json r = out.load(fs::path("r1") / point / "result.json");
    const json run = out.load(fs::path("r1") / point / "runs" / "oracle.json");
    const json& best = r.at("phase_best");
    // Each phase's best model is the static run with the lowest perplexity on that phase.
    for (const auto& [phase, b] : best.items()) {
      double lowest = 1e300;
      std::string lowest_label;
      for (const json& s : r["runs"]) {
        if (!kStatic.contains(s["label"])) continue;
        const double p = s.at("phases").at(phase).at("prompt_perplexity").get<double>();
        if (p < lowest) lowest = p, lowest_label = s["label"];
      }
      EXPECT_EQ(b.at("label"), lowest_label) << phase;
      EXPECT_EQ("static-" + b.at("model").get<std::string>(), lowest_label) << phase;
      EXPECT_DOUBLE_EQ(b.at("prompt_perplexity").get<double>(), lowest) << phase;
    }
    const json& pins = run.at("pins");
    const json& phases = run.at("workload").at("phases");
    ASSERT_EQ(pins.size(), phases.size());
    size_t checked = 0;
    for (size_t k = 0; k < pins.size(); ++k) {
      const json& pin = pins[k];
      const std::string phase = phases[k].at("name");
      SCOPED_TRACE(phase);
      EXPECT_EQ(pin.at("phase"), phase);
      EXPECT_TRUE(pin.at("ok").get<bool>()) << pin.dump();
      EXPECT_EQ(pin.at("model"), best[phase]["model"]);
      EXPECT_EQ(pin.at("to_model"), best[phase]["model"]);
      EXPECT_EQ(pin.at("layers"), best[phase]["layers"]);  // full depth
      EXPECT_EQ(pin.at("to_layers"), best[phase]["layers"]);
      EXPECT_GE(pin.at("layers").get<int64_t>(), 4);        // the micro models' depth
      const double returned = pin.at("returned_s").get<double>();
      EXPECT_LE(pin.at("asked_s").get<double>(), returned);
      const double next = k + 1 < pins.size() ? pins[k + 1].at("asked_s").get<double>() : 1e300;
      for (const json& q : run.at("requests")) {
        if (q.at("phase") != phase) continue;
        EXPECT_GE(q.at("sent_s").get<double>(), returned) << "request " << q["index"];
        if (q.at("done_s").get<double>() <= next) {
          EXPECT_EQ(q.at("model"), pin["model"]) << "request " << q["index"];
          ++checked;
        }
      }
    }
    EXPECT_GT(checked, 0u);
    // The report keeps the pins and says the oracle's role.
    for (const json& s : r["runs"]) {
      if (s["label"] == "oracle") {
        EXPECT_EQ(s.at("role"), "oracle");
        EXPECT_EQ(s.at("pins"), pins);
      }
    }
  }
}

// Following the phases and profiling cost, per run, at both load points.
void expect_following_and_profiling(const Output& out) {
  for (const char* point : {"rate", "saturation"}) {
    SCOPED_TRACE(point);
    const json r = out.load(fs::path("r1") / point / "result.json");
    for (const json& s : r.at("runs")) {
      const std::string label = s["label"];
      SCOPED_TRACE(label);
      if (kStatic.contains(label)) continue;
      const json run = out.load(fs::path("r1") / point / "runs" / (label + ".json"));
      const json& following = s.at("following_phases");
      ASSERT_EQ(following.size(), 4u);
      for (const auto& [phase, f] : following.items()) {
        const std::string model = r["phase_best"][phase]["model"];
        EXPECT_EQ(f.at("best_model"), model);
        // Recount from the requests: the second half of the phase, in trace order.
        std::vector<const json*> in_phase;
        for (const json& q : run["requests"]) {
          if (q["phase"] == phase) in_phase.push_back(&q);
        }
        ASSERT_EQ(f.at("requests").get<size_t>(), in_phase.size());
        size_t by_best = 0, second_half = in_phase.size() - in_phase.size() / 2;
        for (size_t k = in_phase.size() / 2; k < in_phase.size(); ++k) {
          by_best += in_phase[k]->at("model") == model ? 1 : 0;
        }
        EXPECT_EQ(f.at("second_half_requests").get<size_t>(), second_half);
        EXPECT_DOUBLE_EQ(f.at("second_half_share").get<double>(),
                         static_cast<double>(by_best) / static_cast<double>(second_half));
        const json& until = f.at("requests_until_best");
        if (until.is_null()) {
          for (const json* q : in_phase) EXPECT_NE(q->at("model"), model);
        } else {
          const size_t k = until.get<size_t>();
          ASSERT_LT(k, in_phase.size());
          EXPECT_EQ(in_phase[k]->at("model"), model);
          for (size_t i = 0; i < k; ++i) EXPECT_NE(in_phase[i]->at("model"), model);
        }
      }
      if (label == "oracle") continue;
      const json& cost = s.at("profiling_cost");
      ASSERT_TRUE(cost.is_object());
      EXPECT_EQ(cost.at("profile_mode"), label == "helios" ? "serve" : "sample");
      EXPECT_GE(cost.at("passes").get<int64_t>(), 1);  // the start-up profile at least
      for (const char* share : {"/profiling_wall_share", "/profiling_step_share"}) {
        EXPECT_GT(number(cost, share), 0.0) << share;
        EXPECT_LE(number(cost, share), 1.0 + 1e-9) << share;
      }
      EXPECT_GT(number(cost, "/engine_step_seconds"), 0.0);
      EXPECT_LE(number(cost, "/profiling_step_seconds"), number(cost, "/engine_step_seconds"));
      EXPECT_GE(number(cost, "/evidence_seconds"), 0.0);
      EXPECT_EQ(cost.at("e2e_during_profiling").at("requests").get<size_t>() +
                    cost.at("e2e_outside_profiling").at("requests").get<size_t>(),
                s.at("ok").get<size_t>());
      // Only sample mode keeps a scoring reserve and scores off the serving path, within it.
      if (label == "helios") {
        EXPECT_EQ(number(cost, "/evidence_reserve_bytes"), 0.0);
      } else {
        EXPECT_GT(number(cost, "/evidence_peak_bytes"), 0.0);
        EXPECT_LE(number(cost, "/evidence_peak_bytes"), number(cost, "/evidence_reserve_bytes"));
      }
    }
  }
}

// The aggregate: every policy with its figures, the ratios, the targets judged from each repeat's
// figure (met only when met in all), following the phases and profiling cost; then the plots.
void expect_aggregate_and_plots(const Output& out) {
  const json a = out.load("result.json");
  EXPECT_EQ(a.at("repeats"), json::array({1}));
  ASSERT_EQ(a.at("load_points").size(), 2u);
  for (const char* point : {"rate", "saturation"}) {
    SCOPED_TRACE(point);
    const json& lp = a["load_points"].at(point);
    const json report = out.load(fs::path("r1") / point / "result.json");
    ASSERT_EQ(lp.at("policies").size(), report.at("runs").size());
    for (size_t i = 0; i < report["runs"].size(); ++i) {
      const json& policy = lp["policies"][i];
      const json& run = report["runs"][i];
      EXPECT_EQ(policy.at("label"), run.at("label"));
      // One repeat: the median, min and max are the run's own figure.
      for (const auto& [key, pointer] :
           std::map<std::string, std::string>{{"throughput_tokens_per_s", "/throughput_tokens_per_s"},
                                              {"largest_batch", "/largest_batch"},
                                              {"kv_capacity_max", "/kv_capacity_sequences/max"},
                                              {"e2e_p95_ms", "/e2e_ms/p95"},
                                              {"e2e_p50_ms", "/e2e_ms/p50"},
                                              {"ttft_p95_ms", "/ttft_ms/p95"},
                                              {"joules_per_token", "/energy/joules_per_token"},
                                              {"prompt_perplexity", "/prompt_perplexity"}}) {
        const double v = run.at(json::json_pointer(pointer)).get<double>();
        EXPECT_DOUBLE_EQ(policy.at(key).at("median").get<double>(), v) << key;
        EXPECT_DOUBLE_EQ(policy[key].at("min").get<double>(), v) << key;
        EXPECT_DOUBLE_EQ(policy[key].at("max").get<double>(), v) << key;
      }
    }
    for (const std::string& h : kHelios) {
      EXPECT_DOUBLE_EQ(lp.at("ratios").at(h).at("vs_best").at("throughput").at("median").get<double>(),
                       report.at("vs_best").at(h).at("throughput").get<double>());
      EXPECT_TRUE(lp["ratios"][h].at("vs_oracle").at("throughput").is_object());
      EXPECT_EQ(lp.at("following_phases").at(h).size(), 4u);
      EXPECT_TRUE(lp.at("profiling_cost").at(h).at("passes").is_object());
    }
    EXPECT_EQ(lp["following_phases"].at("oracle").size(), 4u);
  }
  // Seven targets for each helios mode; each judged at the load points it names.
  const json& targets = a.at("targets");
  ASSERT_EQ(targets.size(), 14u);
  std::set<std::string> names;
  for (const json& t : targets) {
    const std::string name = t.at("name");
    SCOPED_TRACE(name + " " + t.at("helios").get<std::string>());
    names.insert(name);
    const std::string where = t.at("load_point");
    EXPECT_EQ(t.at("per_repeat").size(), where == "every" ? 2u : 1u);
    bool all = true;
    for (const json& p : t["per_repeat"]) {
      if (where != "every") EXPECT_EQ(p.at("load_point"), where);
      const json& m = p.at("measured");
      const double goal = t.at("goal").get<double>();
      const bool met = m.is_number() &&
                       (t.at("at_most").get<bool>() ? m.get<double>() <= goal : m.get<double>() >= goal);
      EXPECT_EQ(p.at("met").get<bool>(), met) << p.dump();
      all &= met;
    }
    EXPECT_EQ(t.at("met").get<bool>(), all);
  }
  EXPECT_EQ(names, (std::set<std::string>{"perplexity_increase", "throughput",
                                          "sequences_held_at_once", "p95_latency_lower",
                                          "energy_per_token_lower", "throughput_vs_oracle",
                                          "perplexity_vs_oracle"}));
  const std::string md = read_file(out.dir / "result.md");
  for (const char* heading : {"### Load point rate", "### Load point saturation", "### Targets",
                              "### Following the phases", "### Profiling cost"}) {
    EXPECT_NE(md.find(heading), std::string::npos) << heading;
  }

  for (const char* point : {"rate", "saturation"}) {
    for (const char* png : {"throughput.png", "batch.png", "kv_capacity.png", "latency.png",
                            "energy.png", "energy_per_token.png", "perplexity.png", "layers.png"}) {
      const fs::path path = out.dir / "r1" / point / "plots" / png;
      ASSERT_TRUE(fs::exists(path)) << path;
      EXPECT_GT(fs::file_size(path), 5000u) << path;
      EXPECT_EQ(read_file(path).substr(1, 3), "PNG") << path;
    }
  }
  // The trace is a file that replays exactly: it lists every request once.
  std::ifstream trace(out.dir / "workload.jsonl");
  size_t lines = 0;
  for (std::string line; std::getline(trace, line);) ++lines;
  EXPECT_EQ(lines, a["workload"]["requests"].get<size_t>() + 1);
}

// One run of the comparison (about two and a half minutes) serves every check.
TEST(CompareQuick, ServesEveryPolicyAtBothLoadPointsWithTheOracleAndAggregates) {
  testing::ScratchDir dir("compare");
  const Output out{dir.path() / "out"};
  const fs::path build = fs::path(HELIOS_BINARY).parent_path();
  const auto result = testing::run_command("HELIOS_BUILD_DIR='" + build.string() + "' bash '" +
                                           HELIOS_SOURCE_DIR "/bench/compare.sh' --quick --out '" +
                                           out.dir.string() + "'");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  {
    SCOPED_TRACE("every request served");
    expect_every_request_served(out);
  }
  {
    SCOPED_TRACE("oracle");
    expect_oracle_pins(out);
  }
  {
    SCOPED_TRACE("following the phases, profiling cost");
    expect_following_and_profiling(out);
  }
  {
    SCOPED_TRACE("aggregate");
    expect_aggregate_and_plots(out);
  }
}

}  // namespace
}  // namespace helios
