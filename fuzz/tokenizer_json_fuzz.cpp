// tokenizer.json text through parse_tokenizer_json (what load_tokenizer reads), for a config
// that takes the tokenizer's own vocabulary size. An accepted tokenizer encodes and decodes a
// fixed text. helios::Error is an expected rejection; any other exception or signal is a bug.
#include <spdlog/spdlog.h>

#include "fuzz_support.h"
#include "helios/common/error.h"
#include "helios/tokenizer/tokenizer_json.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);  // the NFC warning would flood the output
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  helios::model::ModelConfig config;
  config.vocab_size = 0;  // the tokenizer's own size
  config.bos_token_id = 0;
  config.eos_token_id = 0;
  try {
    const auto tokenizer =
        helios::tokenizer::parse_tokenizer_json(helios::fuzz::as_text(data, size), config,
                                                "tokenizer.json");
    const std::string text = "Hello, world! 123 caf\xc3\xa9 <s>";
    const std::vector<int32_t> ids = tokenizer->encode(text);
    for (const int32_t id : ids) HELIOS_FUZZ_CHECK(id >= 0 && id < tokenizer->vocab_size());
    tokenizer->decode(ids);
  } catch (const helios::Error&) {
  }
  return 0;
}
