#pragma once

// Shared by the request fuzz targets (gRPC's GenerateRequest, the OpenAI API's bodies): the
// tokenizer and the limits a request is validated against.
#include "helios/serve/request_validation.h"
#include "helios/tokenizer/byte_tokenizer.h"

namespace helios::fuzz {

// The micro zoo's models use the byte tokenizer (vocabulary 258, BOS 256, EOS 257); their
// context is 256 tokens.
inline const tokenizer::ByteTokenizer& micro_tokenizer() {
  static const tokenizer::ByteTokenizer instance(258, 256, 257);
  return instance;
}

// Small limits keep every branch within reach of short inputs.
inline constexpr serve::RequestLimits kMicroLimits{
    .max_prompt_bytes = 512,
    .max_prompt_tokens = 200,
    .max_output_tokens = 100,
    .context_length = 256,
    .max_stop_strings = 4,
    .max_stop_bytes = 16,
    .priority_levels = 3,
    .default_priority = 1,
};

}  // namespace helios::fuzz
