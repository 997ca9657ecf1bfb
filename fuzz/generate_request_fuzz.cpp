// libFuzzer target: bytes -> GenerateRequest (the server's own lenient parser) -> validation
// and tokenization, as the Inference service runs them on every call. The expected outcome for
// a bad input is helios::Error(kInvalidArgument); any other exception, a crash, or an accepted
// request that breaks a limit is a bug.
//
// Seeds: fuzz/corpus/generate_request_fuzz/ (serialized GenerateRequests).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "helios/common/error.h"
#include "helios/serve/request_validation.h"
#include "helios/tokenizer/byte_tokenizer.h"

namespace {

// The micro zoo's models use the byte tokenizer (vocabulary 258, BOS 256, EOS 257); their
// context is 256 tokens. Small limits keep every branch within reach of short inputs.
const helios::tokenizer::ByteTokenizer& tokenizer() {
  static const helios::tokenizer::ByteTokenizer instance(258, 256, 257);
  return instance;
}

constexpr helios::serve::RequestLimits kLimits{
    .max_prompt_bytes = 512,
    .max_prompt_tokens = 200,
    .max_output_tokens = 100,
    .context_length = 256,
    .max_stop_strings = 4,
    .max_stop_bytes = 16,
};

void check(bool holds) {
  if (!holds) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const helios::v1::GenerateRequest request = helios::serve::parse_generate_request(
        std::string_view(reinterpret_cast<const char*>(data), size));
    const helios::engine::RequestSpec spec =
        helios::serve::validate_request(request, kLimits, tokenizer());
    // What validation lets through must hold what the engine relies on.
    check(!spec.prompt.empty() && spec.prompt.front() == tokenizer().bos_id());
    check(static_cast<int64_t>(spec.prompt.size()) <= kLimits.max_prompt_tokens);
    check(static_cast<int64_t>(spec.prompt.size()) < kLimits.context_length);
    check(spec.max_tokens >= 1 && spec.max_tokens <= kLimits.max_output_tokens);
    check(spec.id.size() <= helios::serve::kMaxRequestIdBytes);
    check(static_cast<int64_t>(spec.stop.size()) <= kLimits.max_stop_strings);
    for (const std::string& stop : spec.stop) {
      check(!stop.empty() && static_cast<int64_t>(stop.size()) <= kLimits.max_stop_bytes);
    }
    check(spec.sampling.temperature >= 0.0f);
    check(spec.sampling.top_k >= 0);
    check(spec.sampling.top_p > 0.0f && spec.sampling.top_p <= 1.0f);
  } catch (const helios::Error& e) {
    check(e.code() == helios::ErrorCode::kInvalidArgument);
  }
  return 0;
}
