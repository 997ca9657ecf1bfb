// libFuzzer target: bytes -> GenerateRequest (the server's own lenient parser) -> validation
// and tokenization, as the Inference service runs them on every call. The expected outcome for
// a bad input is helios::Error(kInvalidArgument); any other exception, a crash, or an accepted
// request that breaks a limit is a bug.
//
// Seeds: fuzz/corpus/generate_request_fuzz/ (serialized GenerateRequests).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fuzz_support.h"
#include "helios/common/error.h"
#include "helios/serve/request_validation.h"
#include "request_fuzz_support.h"

using helios::fuzz::kMicroLimits;
using helios::fuzz::micro_tokenizer;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const helios::v1::GenerateRequest request = helios::serve::parse_generate_request(
        std::string_view(reinterpret_cast<const char*>(data), size));
    const helios::engine::RequestSpec spec =
        helios::serve::validate_request(request, kMicroLimits, micro_tokenizer());
    // What validation lets through must hold what the engine relies on.
    HELIOS_FUZZ_CHECK(!spec.prompt.empty() && spec.prompt.front() == micro_tokenizer().bos_id());
    HELIOS_FUZZ_CHECK(static_cast<int64_t>(spec.prompt.size()) <= kMicroLimits.max_prompt_tokens);
    HELIOS_FUZZ_CHECK(static_cast<int64_t>(spec.prompt.size()) < kMicroLimits.context_length);
    HELIOS_FUZZ_CHECK(spec.max_tokens >= 1 && spec.max_tokens <= kMicroLimits.max_output_tokens);
    HELIOS_FUZZ_CHECK(spec.id.size() <= helios::serve::kMaxRequestIdBytes);
    HELIOS_FUZZ_CHECK(static_cast<int64_t>(spec.stop.size()) <= kMicroLimits.max_stop_strings);
    for (const std::string& stop : spec.stop) {
      HELIOS_FUZZ_CHECK(!stop.empty() &&
                        static_cast<int64_t>(stop.size()) <= kMicroLimits.max_stop_bytes);
    }
    HELIOS_FUZZ_CHECK(spec.sampling.temperature >= 0.0f);
    HELIOS_FUZZ_CHECK(spec.sampling.top_k >= 0);
    HELIOS_FUZZ_CHECK(spec.sampling.top_p > 0.0f && spec.sampling.top_p <= 1.0f);
  } catch (const helios::Error& e) {
    HELIOS_FUZZ_CHECK(e.code() == helios::ErrorCode::kInvalidArgument);
  }
  return 0;
}
