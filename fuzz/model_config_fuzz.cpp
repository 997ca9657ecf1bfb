// config.json text through ModelConfig::parse (what load_model and the controller's repository
// scan read). An accepted config must validate and survive to_json/from_json unchanged.
// helios::Error is an expected rejection; any other exception or signal is a bug.
#include "fuzz_support.h"
#include "helios/common/error.h"
#include "helios/model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using helios::model::ModelConfig;
  try {
    const ModelConfig config = ModelConfig::parse(helios::fuzz::as_text(data, size), "config.json");
    config.validate();
    HELIOS_FUZZ_CHECK(config.num_hidden_layers <= helios::model::kMaxLayers);
    HELIOS_FUZZ_CHECK(config.exit_layers.size() <= static_cast<size_t>(config.num_hidden_layers));
    const nlohmann::json written = config.to_json();
    HELIOS_FUZZ_CHECK(ModelConfig::from_json(written).to_json() == written);
  } catch (const helios::Error&) {
  }
  return 0;
}
