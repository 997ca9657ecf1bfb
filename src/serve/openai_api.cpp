#include "helios/serve/openai_api.h"

#include <fmt/format.h>

#include <cctype>
#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>

#include "helios/common/json_limits.h"

namespace helios::serve {
namespace {

using nlohmann::json;

[[noreturn]] void refuse(const std::string& param, const std::string& message) {
  throw ApiError(400, param + ": " + message, param);
}

const char* type_for(int status) {
  switch (status) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 413: return "invalid_request_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable";
    default: return "server_error";
  }
}

bool absent(const json& body, const char* key) {
  const auto it = body.find(key);
  return it == body.end() || it->is_null();
}

// An integer field within [min, max].
std::optional<int64_t> integer(const json& body, const char* key, int64_t min, int64_t max) {
  if (absent(body, key)) return std::nullopt;
  const json& value = body.at(key);
  if (!value.is_number_integer()) refuse(key, "must be an integer");
  if (value.is_number_unsigned() && value.get<uint64_t>() > static_cast<uint64_t>(max)) {
    refuse(key, fmt::format("must be an integer in [{}, {}]", min, max));
  }
  const int64_t v = value.get<int64_t>();
  if (v < min || v > max)
    refuse(key, fmt::format("must be an integer in [{}, {}], got {}", min, max, v));
  return v;
}

std::optional<double> number(const json& body, const char* key) {
  if (absent(body, key)) return std::nullopt;
  const json& value = body.at(key);
  if (!value.is_number()) refuse(key, "must be a number");
  const double v = value.get<double>();
  if (!std::isfinite(v)) refuse(key, "must be a finite number");
  return v;
}

std::optional<bool> boolean(const json& body, const char* key) {
  if (absent(body, key)) return std::nullopt;
  const json& value = body.at(key);
  if (!value.is_boolean()) refuse(key, "must be true or false");
  return value.get<bool>();
}

// Fields OpenAI defines that helios cannot honour: accepted at their neutral value, refused
// by name otherwise.
void refuse_unsupported(const json& body, bool chat) {
  if (const auto n = integer(body, "n", 1, 128); n && *n != 1) {
    refuse("n", "helios returns one choice per prompt; n must be 1");
  }
  if (const auto best_of = integer(body, "best_of", 1, 128); best_of && *best_of != 1) {
    refuse("best_of", "not supported; best_of must be 1");
  }
  if (boolean(body, "echo").value_or(false)) refuse("echo", "not supported");
  if (chat) {
    if (boolean(body, "logprobs").value_or(false)) refuse("logprobs", "not supported");
    if (!absent(body, "top_logprobs")) refuse("top_logprobs", "not supported");
  } else if (!absent(body, "logprobs")) {
    refuse("logprobs", "not supported");
  }
  if (!absent(body, "suffix")) {
    const json& suffix = body.at("suffix");
    if (!suffix.is_string() || !suffix.get_ref<const std::string&>().empty()) {
      refuse("suffix", "not supported");
    }
  }
  for (const char* penalty : {"presence_penalty", "frequency_penalty"}) {
    if (const auto v = number(body, penalty); v && *v != 0.0)
      refuse(penalty, "not supported; must be 0");
  }
  if (const auto v = number(body, "repetition_penalty"); v && *v != 1.0) {
    refuse("repetition_penalty", "not supported; must be 1");
  }
  if (!absent(body, "logit_bias")) {
    const json& bias = body.at("logit_bias");
    if (!bias.is_object() || !bias.empty()) refuse("logit_bias", "not supported");
  }
  for (const char* key : {"tools", "functions"}) {
    if (!absent(body, key)) {
      const json& value = body.at(key);
      if (!value.is_array() || !value.empty()) refuse(key, "not supported");
    }
  }
  for (const char* key : {"tool_choice", "function_call"}) {
    if (!absent(body, key)) {
      const json& value = body.at(key);
      if (!(value.is_string() && value.get_ref<const std::string&>() == "none")) {
        refuse(key, "not supported");
      }
    }
  }
  if (!absent(body, "response_format")) {
    const json& format = body.at("response_format");
    if (!format.is_object() || format.value("type", json()) != "text") {
      refuse("response_format", "only {\"type\": \"text\"} is supported");
    }
  }
}

std::vector<std::string> strings_of(const json& body, const char* key) {
  std::vector<std::string> out;
  if (absent(body, key)) return out;
  const json& value = body.at(key);
  if (value.is_string()) {
    out.push_back(value.get<std::string>());
  } else if (value.is_array()) {
    for (size_t i = 0; i < value.size(); ++i) {
      if (!value[i].is_string())
        refuse(fmt::format("{}", key), fmt::format("[{}] must be a string", i));
      out.push_back(value[i].get<std::string>());
    }
  } else {
    refuse(key, "must be a string or an array of strings");
  }
  return out;
}

std::vector<ChatMessage> messages_of(const json& body) {
  if (absent(body, "messages")) refuse("messages", "required");
  const json& messages = body.at("messages");
  if (!messages.is_array() || messages.empty()) refuse("messages", "must be a non-empty array");
  if (messages.size() > kMaxChatMessages) {
    refuse("messages",
           fmt::format("{} messages exceed the limit of {}", messages.size(), kMaxChatMessages));
  }
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    const std::string at = fmt::format("messages[{}]", i);
    if (!m.is_object()) refuse("messages", at + " must be an object");
    ChatMessage message;
    const auto role = m.find("role");
    if (role == m.end() || !role->is_string()) refuse("messages", at + ".role must be a string");
    message.role = role->get<std::string>();
    if (message.role != "system" && message.role != "user" && message.role != "assistant" &&
        message.role != "developer") {
      refuse("messages", at + ".role \"" + message.role.substr(0, 32) +
                             "\" is not supported (system, developer, user, assistant)");
    }
    if (message.role == "developer") message.role = "system";
    const auto content = m.find("content");
    if (content == m.end() || content->is_null()) {
      if (message.role != "assistant") refuse("messages", at + ".content is required");
    } else if (content->is_string()) {
      message.content = content->get<std::string>();
    } else if (content->is_array()) {
      for (size_t j = 0; j < content->size(); ++j) {
        const json& part = (*content)[j];
        if (!part.is_object() || part.value("type", json()) != "text" || !part.contains("text") ||
            !part.at("text").is_string()) {
          refuse("messages", fmt::format("{}.content[{}]: only text parts are supported", at, j));
        }
        message.content += part.at("text").get<std::string>();
      }
    } else {
      refuse("messages", at + ".content must be a string or an array of text parts");
    }
    out.push_back(std::move(message));
  }
  return out;
}

}  // namespace

// The field a validation message names: "stop[2]: ..." -> "stop", "prompt: ..." -> "prompt".
std::string field_of_message(std::string_view message) {
  const size_t end = message.find_first_of(":[");
  if (end == std::string_view::npos || end == 0 || end > 32) return {};
  const std::string_view field = message.substr(0, end);
  for (const char c : field) {
    if (!(std::islower(static_cast<unsigned char>(c)) || c == '_' || c == '.')) return {};
  }
  return std::string(field);
}

ApiError::ApiError(int status_, std::string message, std::string param_, std::string code_,
                   std::string type_)
    : std::runtime_error(std::move(message)),
      status(status_),
      param(std::move(param_)),
      code(std::move(code_)),
      type(type_.empty() ? type_for(status_) : std::move(type_)) {}

nlohmann::ordered_json ApiError::body() const {
  using json = nlohmann::ordered_json;
  return {{"error",
           {{"message", what()},
            {"type", type},
            {"param", param.empty() ? json() : json(param)},
            {"code", code.empty() ? json() : json(code)}}}};
}

ApiError to_api_error(const Error& error) {
  switch (error.code()) {
    case ErrorCode::kInvalidArgument:
      return ApiError(400, error.what(), field_of_message(error.what()));
    case ErrorCode::kFailedPrecondition:
      return ApiError(400, error.what(), field_of_message(error.what()));
    case ErrorCode::kNotFound: return ApiError(404, error.what());
    case ErrorCode::kResourceExhausted: return ApiError(429, error.what(), {}, "queue_full");
    case ErrorCode::kUnavailable: return ApiError(503, error.what());
    default: return ApiError(500, error.what());
  }
}

OpenAiRequest parse_openai_request(std::string_view text, bool chat) {
  json body;
  try {
    body = parse_json(text, "request body");
  } catch (const Error& e) {
    throw ApiError(400, e.what());
  }
  if (!body.is_object()) throw ApiError(400, "request body: must be a JSON object");

  OpenAiRequest out;
  out.chat = chat;
  if (absent(body, "model") || !body.at("model").is_string() ||
      body.at("model").get_ref<const std::string&>().empty()) {
    refuse("model", "required: the id of a model GET /v1/models lists");
  }
  out.model = body.at("model").get<std::string>();
  refuse_unsupported(body, chat);

  // The sampling fields every prompt shares.
  v1::GenerateRequest shared;
  std::optional<int64_t> max_tokens =
      integer(body, "max_tokens", 1, std::numeric_limits<uint32_t>::max());
  if (chat && !max_tokens) {
    max_tokens = integer(body, "max_completion_tokens", 1, std::numeric_limits<uint32_t>::max());
  }
  // A completion's default is OpenAI's (16); a chat's is left to the server (0 here).
  shared.set_max_tokens(static_cast<uint32_t>(max_tokens.value_or(chat ? 0 : 16)));
  const double temperature = number(body, "temperature").value_or(1.0);
  if (temperature < 0.0 || temperature > 2.0) {
    refuse("temperature", fmt::format("must be in [0, 2], got {}", temperature));
  }
  shared.set_temperature(static_cast<float>(temperature));
  if (const auto top_p = number(body, "top_p")) {
    if (!(*top_p > 0.0 && *top_p <= 1.0))
      refuse("top_p", fmt::format("must be in (0, 1], got {}", *top_p));
    shared.set_top_p(static_cast<float>(*top_p));
  }
  if (const auto top_k = integer(body, "top_k", -1, std::numeric_limits<int32_t>::max())) {
    shared.set_top_k(static_cast<uint32_t>(std::max<int64_t>(0, *top_k)));  // -1: no cut (vLLM)
  }
  if (const auto seed = integer(body, "seed", std::numeric_limits<int64_t>::min(),
                                std::numeric_limits<int64_t>::max())) {
    shared.set_seed(static_cast<uint64_t>(*seed));
  }
  for (const std::string& stop : strings_of(body, "stop")) shared.add_stop(stop);
  if (const auto priority = integer(body, "priority", 0, std::numeric_limits<int32_t>::max())) {
    shared.set_priority(static_cast<uint32_t>(*priority));
  }
  if (!absent(body, "user") && !body.at("user").is_string()) refuse("user", "must be a string");
  if (!absent(body, "helios")) {
    const json& extension = body.at("helios");
    if (!extension.is_object()) refuse("helios", "must be an object");
    if (const auto score = boolean(extension, "score_prompt")) shared.set_score_prompt(*score);
  }
  shared.set_include_token_details(true);  // the exit layers of the helios extension

  out.stream = boolean(body, "stream").value_or(false);
  if (!absent(body, "stream_options")) {
    if (!out.stream) refuse("stream_options", "only allowed when stream is true");
    const json& options = body.at("stream_options");
    if (!options.is_object()) refuse("stream_options", "must be an object");
    if (const auto include = options.find("include_usage");
        include != options.end() && !include->is_null()) {
      if (!include->is_boolean()) refuse("stream_options", "include_usage must be true or false");
      out.include_usage = include->get<bool>();
    }
  }

  if (chat) {
    out.messages = messages_of(body);
    out.prompts.push_back(std::move(shared));
    return out;
  }
  if (absent(body, "prompt")) refuse("prompt", "required");
  const json& prompt = body.at("prompt");
  std::vector<std::string> prompts;
  if (prompt.is_string()) {
    prompts.push_back(prompt.get<std::string>());
  } else if (prompt.is_array()) {
    if (prompt.empty()) refuse("prompt", "must not be an empty list");
    if (prompt.size() > kMaxPromptsPerRequest) {
      refuse("prompt", fmt::format("{} prompts exceed the limit of {}", prompt.size(),
                                   kMaxPromptsPerRequest));
    }
    for (size_t i = 0; i < prompt.size(); ++i) {
      if (prompt[i].is_number_integer() || prompt[i].is_array()) {
        refuse("prompt", "token-id prompts are not supported; send text");
      }
      if (!prompt[i].is_string()) refuse("prompt", fmt::format("[{}] must be a string", i));
      prompts.push_back(prompt[i].get<std::string>());
    }
  } else {
    refuse("prompt", "must be a string or an array of strings");
  }
  for (std::string& text : prompts) {
    v1::GenerateRequest request = shared;
    request.set_prompt(std::move(text));
    out.prompts.push_back(std::move(request));
  }
  return out;
}

std::optional<ChatFormat> detect_chat_format(std::string_view chat_template) {
  if (chat_template.find("<|im_start|>") != std::string_view::npos &&
      chat_template.find("<|im_end|>") != std::string_view::npos) {
    return ChatFormat::kChatML;
  }
  return std::nullopt;
}

RenderedChat render_chat(const std::vector<ChatMessage>& messages, ChatFormat format) {
  RenderedChat out;
  switch (format) {
    case ChatFormat::kChatML:
      for (const ChatMessage& message : messages) {
        out.prompt += "<|im_start|>" + message.role + "\n" + message.content + "<|im_end|>\n";
      }
      out.prompt += "<|im_start|>assistant\n";
      out.stop = "<|im_end|>";
      break;
  }
  return out;
}

}  // namespace helios::serve
