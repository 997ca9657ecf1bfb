// SLO file text through SloConfig::parse (what the controller and its file watcher read), with a
// base directory that exists so a relative model_repository can resolve. An accepted config
// must parse back equal from its to_json(). helios::Error is an expected rejection; any other
// exception or signal is a bug.
#include <nlohmann/json.hpp>

#include "fuzz_support.h"
#include "helios/common/error.h"
#include "helios/controller/slo_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using helios::controller::SloConfig;
  static const std::filesystem::path base = std::filesystem::temp_directory_path();
  try {
    const SloConfig config = SloConfig::parse(helios::fuzz::as_text(data, size), base, "slo.json");
    HELIOS_FUZZ_CHECK(config.breach_window_tokens <= helios::controller::kMaxSloCount);
    HELIOS_FUZZ_CHECK(config.drift_window_requests <= helios::controller::kMaxSloCount);
    const SloConfig again = SloConfig::parse(config.to_json().dump(), base, "slo.json");
    HELIOS_FUZZ_CHECK(again == config);
  } catch (const helios::Error&) {
  }
  return 0;
}
