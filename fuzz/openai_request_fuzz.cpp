// libFuzzer target: bytes -> an OpenAI API request body (the first byte picks /v1/completions
// or /v1/chat/completions) -> parse_openai_request -> each prompt validated and tokenized as
// the OpenAI front end does (a chat rendered as ChatML first). The expected outcome for a bad
// body is ApiError 400 or helios::Error(kInvalidArgument); any other exception, a crash, or an
// accepted request that breaks a limit is a bug.
//
// Seeds: fuzz/corpus/openai_request_fuzz/ (a mode byte, then a JSON body).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fuzz_support.h"
#include "helios/common/error.h"
#include "helios/serve/openai_api.h"
#include "helios/serve/request_validation.h"
#include "request_fuzz_support.h"

using helios::fuzz::kMicroLimits;
using helios::fuzz::micro_tokenizer;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool chat = (data[0] & 1) != 0;
  const std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    helios::serve::OpenAiRequest request = helios::serve::parse_openai_request(body, chat);
    HELIOS_FUZZ_CHECK(!request.model.empty());
    HELIOS_FUZZ_CHECK(!request.prompts.empty() &&
                      request.prompts.size() <= helios::serve::kMaxPromptsPerRequest);
    HELIOS_FUZZ_CHECK(!request.include_usage || request.stream);
    if (chat) {
      HELIOS_FUZZ_CHECK(request.prompts.size() == 1 && !request.messages.empty());
      const helios::serve::RenderedChat rendered =
          helios::serve::render_chat(request.messages, helios::serve::ChatFormat::kChatML);
      request.prompts[0].set_prompt(rendered.prompt);
      request.prompts[0].add_stop(rendered.stop);
      if (request.prompts[0].max_tokens() == 0) request.prompts[0].set_max_tokens(100);
    }
    for (const helios::v1::GenerateRequest& prompt : request.prompts) {
      const helios::engine::RequestSpec spec =
          helios::serve::validate_request(prompt, kMicroLimits, micro_tokenizer());
      HELIOS_FUZZ_CHECK(static_cast<int64_t>(spec.prompt.size()) < kMicroLimits.context_length);
      HELIOS_FUZZ_CHECK(spec.max_tokens >= 1 && spec.max_tokens <= kMicroLimits.max_output_tokens);
      HELIOS_FUZZ_CHECK(spec.priority >= 0 && spec.priority < kMicroLimits.priority_levels);
      HELIOS_FUZZ_CHECK(spec.sampling.temperature >= 0.0f && spec.sampling.temperature <= 2.0f);
      HELIOS_FUZZ_CHECK(spec.token_details);
    }
  } catch (const helios::serve::ApiError& e) {
    HELIOS_FUZZ_CHECK(e.status == 400);
  } catch (const helios::Error& e) {
    HELIOS_FUZZ_CHECK(e.code() == helios::ErrorCode::kInvalidArgument);
  }
  return 0;
}
