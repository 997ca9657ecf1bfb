#pragma once

// The OpenAI-compatible HTTP API's requests as pure functions (no server, no engine): the body
// of POST /v1/completions or /v1/chat/completions parsed into the same GenerateRequest the gRPC
// front end validates, so both front ends share every limit and every message. The fuzz target
// fuzz/openai_request_fuzz.cpp drives parse_openai_request.

#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "helios/common/error.h"
#include "helios/v1/inference.pb.h"

namespace helios::serve {

// An error as the OpenAI API returns it: the HTTP status and the error object's fields.
struct ApiError : std::runtime_error {
  ApiError(int status, std::string message, std::string param = {}, std::string code = {},
           std::string type = {});
  int status;
  std::string param;  // the request field at fault; empty renders as null
  std::string code;   // e.g. "model_not_found", "invalid_api_key"; empty renders as null
  std::string type;   // invalid_request_error, authentication_error, ...
  // {"error": {"message", "type", "param", "code"}}, keys in that order
  nlohmann::ordered_json body() const;
};

// A helios::Error as the API returns it: kInvalidArgument is 400 naming the field its message
// starts with ("max_tokens: ..." -> param "max_tokens", "stop[2]: ..." -> "stop"),
// kResourceExhausted 429, kUnavailable 503, kNotFound 404, anything else 500.
ApiError to_api_error(const Error& error);
// The field a validation message names first ("stop[2]: ..." -> "stop"); empty when none.
std::string field_of_message(std::string_view message);

// The chat template formats helios renders. A model directory's tokenizer_config.json
// "chat_template" is recognised by its markers; anything else is not rendered (400).
enum class ChatFormat { kChatML };

struct ChatMessage {
  std::string role;  // system | user | assistant
  std::string content;
};

// What a body asks for, before the served model's limits are applied.
struct OpenAiRequest {
  bool chat = false;
  std::string model;
  // One per prompt (a completion's prompt list), in order; a chat has one. Each carries the
  // body's sampling fields; a chat's prompt is empty until render_chat fills it.
  std::vector<v1::GenerateRequest> prompts;
  std::vector<ChatMessage> messages;  // chat only
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
};

// Largest prompt list a completion takes: each prompt is a request of its own in the engine.
inline constexpr size_t kMaxPromptsPerRequest = 64;
// Most messages in one chat request.
inline constexpr size_t kMaxChatMessages = 1024;

// Parses and checks a request body (JSON, nested at most kMaxJsonDepth). Unknown fields are
// ignored, as OpenAI's server does; fields helios cannot honour are refused by name (n > 1,
// best_of > 1, echo, logprobs, suffix, non-zero penalties, logit_bias, tools, response_format).
// Throws ApiError (400 naming the param) and nothing else, for any input.
OpenAiRequest parse_openai_request(std::string_view body, bool chat);

// The chat's prompt in `format`, ending with the assistant's turn opened, and the stop string
// that closes a turn. Throws ApiError 400 (param "messages") for a role the format has no
// place for.
struct RenderedChat {
  std::string prompt;
  std::string stop;
};
RenderedChat render_chat(const std::vector<ChatMessage>& messages, ChatFormat format);

// The format of a chat_template string, or none when helios cannot render it.
std::optional<ChatFormat> detect_chat_format(std::string_view chat_template);

}  // namespace helios::serve
