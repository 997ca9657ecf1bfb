#pragma once

// What the Inference service does to a request before the engine sees it, as pure functions
// (no server, no model): parsing the wire bytes, validating every field against the limits,
// tokenizing the prompt. The fuzz target fuzz/generate_request_fuzz.cpp drives exactly these.

#include <cstdint>
#include <string_view>

#include "helios/engine/request.h"
#include "helios/tokenizer/tokenizer.h"
#include "helios/v1/inference.pb.h"

namespace helios::serve {

// A client-chosen request_id longer than this gets INVALID_ARGUMENT naming request_id.
inline constexpr size_t kMaxRequestIdBytes = 128;

// The limits a GenerateRequest is checked against: the server config's, resolved against the
// served model's context.
struct RequestLimits {
  int64_t max_prompt_bytes = int64_t{1} << 20;  // scheduler.max_prompt_bytes
  int64_t max_prompt_tokens = 0;                // with BOS; scheduler.max_prompt_tokens or the context
  int64_t max_output_tokens = 0;                // scheduler.max_output_tokens or the context
  int64_t context_length = 0;                   // the model's max_position_embeddings
  int64_t max_stop_strings = 8;                 // scheduler.max_stop_strings
  int64_t max_stop_bytes = 64;                  // scheduler.max_stop_bytes
  int64_t priority_levels = 3;                  // scheduler.priority_levels
  int64_t default_priority = 1;                 // scheduler.default_priority
};

// Parses serialized GenerateRequest bytes without protobuf's UTF-8 check on string fields, so
// that a prompt with invalid UTF-8 reaches validation (and gets INVALID_ARGUMENT naming the
// field) instead of failing inside gRPC with a status that names nothing. Throws
// helios::Error(kInvalidArgument) for bytes that are not a GenerateRequest.
v1::GenerateRequest parse_generate_request(std::string_view bytes);

// The scheduling class `request` asks for: its priority (not yet checked against
// limits.priority_levels; saturated at INT32_MAX), else limits.default_priority.
int32_t requested_priority(const v1::GenerateRequest& request, const RequestLimits& limits);

// Validates every field, cheap checks first (sizes, UTF-8, ranges), then tokenizes the prompt
// (BOS first) and checks its length in tokens. The spec's id is the client's request_id (empty
// when none was sent) and it has no deadline. Throws helios::Error(kInvalidArgument) whose
// message starts with the field ("prompt: ...", "stop[2]: ..."); nothing else, for any input.
engine::RequestSpec validate_request(const v1::GenerateRequest& request,
                                     const RequestLimits& limits,
                                     const tokenizer::Tokenizer& tokenizer);

}  // namespace helios::serve
