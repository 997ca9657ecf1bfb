// Server config text through ServerConfig::parse (what `helios serve --config` and
// validate-config read). An accepted config must survive to_json/from_json.
// helios::Error is an expected rejection; any other exception or signal is a bug.
#include <nlohmann/json.hpp>

#include "fuzz_support.h"
#include "helios/common/error.h"
#include "helios/serve/server_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using helios::serve::ServerConfig;
  const std::filesystem::path base = "/etc/helios";
  try {
    const ServerConfig config =
        ServerConfig::parse(helios::fuzz::as_text(data, size), base, "server.json");
    HELIOS_FUZZ_CHECK(config.limits.max_queued >= 1);
    HELIOS_FUZZ_CHECK(config.http_port >= -1 && config.http_port <= 65535);
    const nlohmann::json written = config.to_json();
    const nlohmann::json again = ServerConfig::from_json(written, base).to_json();
    HELIOS_FUZZ_CHECK(again == written);
  } catch (const helios::Error&) {
  }
  return 0;
}
