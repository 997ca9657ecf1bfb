// A replayable request trace: prompts cut from the held-out splits of the zoo's domains, in
// phases whose mix of domains drifts (prose, then code, then both), with Poisson arrivals at a
// fixed rate per phase from a fixed seed. Saved as JSON Lines so that every policy under test
// gets exactly the same requests at exactly the same offsets.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace helios::bench {

// One phase: `domain` is prose, code (the data/<domain>/test.txt split) or mix (each request
// drawn from prose or code with equal odds).
struct PhaseSpec {
  std::string domain;
  double seconds = 0;
  double rate = 0;  // requests/s; 0 = the workload's default rate
};

// "DOMAIN:SECONDS" or "DOMAIN:SECONDS@RATE", e.g. "code:60@12"; UsageError naming --phase.
PhaseSpec parse_phase(const std::string& text);

struct WorkloadSpec {
  std::filesystem::path data_dir;  // holds prose/test.txt and code/test.txt
  std::vector<PhaseSpec> phases;
  double rate = 10;                // requests/s for phases without their own
  uint64_t seed = 1;
  size_t min_prompt_bytes = 48, max_prompt_bytes = 160;
  int64_t max_tokens = 48;
};

struct WorkloadRequest {
  double at_seconds = 0;  // arrival offset from the start of the run
  std::string phase;      // "<index>-<domain>", e.g. "2-mix"
  std::string domain;     // where the prompt text came from: prose or code
  std::string prompt;
  int64_t max_tokens = 0;
};

struct Workload {
  nlohmann::json header;  // the spec it was made from, phase boundaries, request count
  std::vector<WorkloadRequest> requests;
};

Workload make_workload(const WorkloadSpec& spec);
void save_workload(const Workload& workload, const std::filesystem::path& path);
Workload load_workload(const std::filesystem::path& path);  // Fatal naming path:line

}  // namespace helios::bench
