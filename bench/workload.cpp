#include "workload.h"

#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <sstream>

#include "bench_common.h"

namespace helios::bench {

using json = nlohmann::json;

PhaseSpec parse_phase(const std::string& text) {
  PhaseSpec phase;
  const size_t colon = text.find(':');
  const size_t at = text.find('@');
  auto bad = [&](const std::string& why) {
    return UsageError(fmt::format("--phase {}: {} (expected DOMAIN:SECONDS[@RATE])", text, why));
  };
  if (colon == std::string::npos) throw bad("no ':'");
  phase.domain = text.substr(0, colon);
  if (phase.domain != "prose" && phase.domain != "code" && phase.domain != "mix") {
    throw bad("domain must be prose, code or mix");
  }
  auto number = [&](const std::string& s, const char* what) {
    size_t used = 0;
    double v = 0;
    try {
      v = std::stod(s, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != s.size() || !(v > 0) || !std::isfinite(v)) {
      throw bad(fmt::format("{} must be a positive number", what));
    }
    return v;
  };
  phase.seconds = number(text.substr(colon + 1, at == std::string::npos ? std::string::npos
                                                                          : at - colon - 1),
                         "SECONDS");
  if (at != std::string::npos) phase.rate = number(text.substr(at + 1), "RATE");
  return phase;
}

Workload make_workload(const WorkloadSpec& spec) {
  if (spec.phases.empty()) throw UsageError("at least one --phase is required");
  if (spec.min_prompt_bytes < 1 || spec.min_prompt_bytes > spec.max_prompt_bytes) {
    throw UsageError("prompt bytes: need 1 <= min <= max");
  }
  std::map<std::string, TextSlicer> texts;
  for (const char* domain : {"prose", "code"}) {
    const auto path = spec.data_dir / domain / "test.txt";
    texts.emplace(domain, TextSlicer(read_file(path), path.string()));
  }
  // One generator per concern, so that changing the prompt length range keeps the arrival
  // times, and adding a phase keeps the earlier phases' requests.
  std::mt19937_64 arrivals(spec.seed), domains(spec.seed ^ 0xD1B54A32D192ED03ULL),
      prompts(spec.seed ^ 0x9E3779B97F4A7C15ULL);
  std::uniform_int_distribution<size_t> length(spec.min_prompt_bytes, spec.max_prompt_bytes);
  std::bernoulli_distribution coin(0.5);

  Workload w;
  json phases = json::array();
  double start = 0;
  for (size_t p = 0; p < spec.phases.size(); ++p) {
    const PhaseSpec& phase = spec.phases[p];
    const double rate = phase.rate > 0 ? phase.rate : spec.rate;
    const std::string name = fmt::format("{}-{}", p, phase.domain);
    std::exponential_distribution<double> gap(rate);
    for (double t = start + gap(arrivals); t < start + phase.seconds; t += gap(arrivals)) {
      WorkloadRequest r;
      r.at_seconds = t;
      r.phase = name;
      r.domain = phase.domain == "mix" ? (coin(domains) ? "prose" : "code") : phase.domain;
      r.prompt = texts.at(r.domain).slice(prompts, length(prompts), spec.min_prompt_bytes);
      r.max_tokens = spec.max_tokens;
      w.requests.push_back(std::move(r));
    }
    phases.push_back({{"name", name},
                      {"domain", phase.domain},
                      {"start_s", start},
                      {"end_s", start + phase.seconds},
                      {"rate_rps", rate}});
    start += phase.seconds;
  }
  w.header = {{"format", "helios-workload"},
              {"version", 1},
              {"seed", spec.seed},
              {"data_dir", spec.data_dir.string()},
              {"prompt_bytes", {spec.min_prompt_bytes, spec.max_prompt_bytes}},
              {"max_tokens", spec.max_tokens},
              {"duration_s", start},
              {"phases", phases},
              {"requests", w.requests.size()}};
  return w;
}

void save_workload(const Workload& workload, const std::filesystem::path& path) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw Fatal(fmt::format("cannot write {}", path.string()));
  out << workload.header.dump() << '\n';
  for (const WorkloadRequest& r : workload.requests) {
    out << json{{"at_s", r.at_seconds},
                {"phase", r.phase},
                {"domain", r.domain},
                {"max_tokens", r.max_tokens},
                {"prompt", r.prompt}}
               .dump()
        << '\n';
  }
  if (!out.flush()) throw Fatal(fmt::format("cannot write {}", path.string()));
}

Workload load_workload(const std::filesystem::path& path) {
  std::istringstream lines(read_file(path));
  std::string line;
  Workload w;
  int64_t number = 0;
  auto fail = [&](const std::string& why) {
    return Fatal(fmt::format("{}:{}: {}", path.string(), number, why));
  };
  while (std::getline(lines, line)) {
    ++number;
    if (line.empty()) continue;
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      throw fail(fmt::format("not JSON: {}", e.what()));
    }
    if (number == 1) {
      if (j.value("format", "") != "helios-workload" || j.value("version", 0) != 1) {
        throw fail("not a helios-workload version 1 file");
      }
      w.header = std::move(j);
      continue;
    }
    try {
      WorkloadRequest r;
      r.at_seconds = j.at("at_s").get<double>();
      r.phase = j.at("phase").get<std::string>();
      r.domain = j.at("domain").get<std::string>();
      r.max_tokens = j.at("max_tokens").get<int64_t>();
      r.prompt = j.at("prompt").get<std::string>();
      if (!w.requests.empty() && r.at_seconds < w.requests.back().at_seconds) {
        throw fail("at_s goes backwards");
      }
      w.requests.push_back(std::move(r));
    } catch (const json::exception& e) {
      throw fail(e.what());
    }
  }
  if (w.header.is_null()) throw Fatal(fmt::format("{}: empty", path.string()));
  if (w.requests.size() != w.header.value("requests", size_t{0})) {
    throw Fatal(fmt::format("{}: {} requests, the header says {}", path.string(),
                            w.requests.size(), w.header.value("requests", size_t{0})));
  }
  return w;
}

}  // namespace helios::bench
