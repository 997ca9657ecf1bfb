#include "helios/serve/request_validation.h"

#include <fmt/format.h>
#include <google/protobuf/unknown_field_set.h>

#include <cmath>
#include <algorithm>
#include <limits>
#include <utility>
#include <vector>

#include "helios/common/error.h"
#include "helios/tokenizer/utf8.h"

namespace helios::serve {
namespace {

[[noreturn]] void invalid(const std::string& message) {
  throw Error(ErrorCode::kInvalidArgument, message);
}

// Byte offset of the first ill-formed UTF-8 sequence, or npos.
size_t invalid_utf8_at(std::string_view text) {
  for (size_t pos = 0; pos < text.size();) {
    const size_t length = tokenizer::utf8_sequence_length(text, pos);
    if (length == 0) return pos;
    pos += length;
  }
  return std::string_view::npos;
}

// A request id ends up in logs and in responses: control characters have no business there.
bool has_control_character(std::string_view text) {
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f) return true;
  }
  return false;
}

}  // namespace

v1::GenerateRequest parse_generate_request(std::string_view bytes) {
  google::protobuf::UnknownFieldSet fields;
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max()) ||
      !fields.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    invalid("request: not a serialized helios.v1.GenerateRequest");
  }
  // Everything but the string fields goes through the regular parser; the string fields are
  // set directly, bytes as sent, for validation to judge.
  v1::GenerateRequest out;
  const google::protobuf::Descriptor* descriptor = out.GetDescriptor();
  const google::protobuf::Reflection* reflection = out.GetReflection();
  google::protobuf::UnknownFieldSet rest;
  std::vector<std::pair<const google::protobuf::FieldDescriptor*, std::string*>> strings;
  for (int i = 0; i < fields.field_count(); ++i) {
    google::protobuf::UnknownField& field = *fields.mutable_field(i);
    const google::protobuf::FieldDescriptor* fd = descriptor->FindFieldByNumber(field.number());
    if (fd != nullptr && fd->type() == google::protobuf::FieldDescriptor::TYPE_STRING) {
      if (field.type() != google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) {
        invalid(fd->name() + ": wrong wire type for a string");
      }
      strings.emplace_back(fd, field.mutable_length_delimited());
    } else {
      rest.AddField(field);
    }
  }
  std::string rest_bytes;
  if (!rest.SerializeToString(&rest_bytes) || !out.ParseFromString(rest_bytes)) {
    invalid("request: not a serialized helios.v1.GenerateRequest");
  }
  // Moved, not copied: a prompt may be megabytes.
  for (const auto& [fd, value] : strings) {
    if (fd->is_repeated()) {
      reflection->AddString(&out, fd, std::move(*value));
    } else {
      reflection->SetString(&out, fd, std::move(*value));
    }
  }
  return out;
}

int32_t requested_priority(const v1::GenerateRequest& request, const RequestLimits& limits) {
  if (!request.has_priority()) return static_cast<int32_t>(limits.default_priority);
  return static_cast<int32_t>(
      std::min<uint32_t>(request.priority(), std::numeric_limits<int32_t>::max()));
}

engine::RequestSpec validate_request(const v1::GenerateRequest& request,
                                     const RequestLimits& limits,
                                     const tokenizer::Tokenizer& tokenizer) {
  engine::RequestSpec spec;

  const std::string& id = request.request_id();
  if (id.size() > kMaxRequestIdBytes) {
    invalid(fmt::format("request_id: longer than {} bytes", kMaxRequestIdBytes));
  }
  if (invalid_utf8_at(id) != std::string_view::npos) invalid("request_id: not valid UTF-8");
  if (has_control_character(id)) invalid("request_id: must not contain control characters");
  spec.id = id;

  const std::string& prompt = request.prompt();
  if (prompt.empty()) invalid("prompt: must not be empty");
  if (static_cast<int64_t>(prompt.size()) > limits.max_prompt_bytes) {
    invalid(fmt::format("prompt: {} bytes exceed the limit of {} (scheduler.max_prompt_bytes)",
                        prompt.size(), limits.max_prompt_bytes));
  }
  if (const size_t at = invalid_utf8_at(prompt); at != std::string_view::npos) {
    invalid(fmt::format("prompt: not valid UTF-8 (ill-formed sequence at byte {})", at));
  }

  if (request.max_tokens() == 0) invalid("max_tokens: must be at least 1");
  if (request.max_tokens() > limits.max_output_tokens) {
    invalid(fmt::format("max_tokens: {} exceeds the limit of {}", request.max_tokens(),
                        limits.max_output_tokens));
  }
  spec.max_tokens = request.max_tokens();

  const float temperature = request.temperature();
  if (!std::isfinite(temperature) || temperature < 0.0f) {
    invalid(fmt::format("temperature: must be a finite number >= 0, got {}", temperature));
  }
  spec.sampling.temperature = temperature;
  if (request.has_top_p()) {
    const float top_p = request.top_p();
    if (!(top_p > 0.0f && top_p <= 1.0f)) {
      invalid(fmt::format("top_p: must be in (0, 1], got {}", top_p));
    }
    spec.sampling.top_p = top_p;
  }
  if (request.top_k() > static_cast<uint32_t>(std::numeric_limits<int32_t>::max())) {
    invalid("top_k: too large");
  }
  spec.sampling.top_k = static_cast<int32_t>(request.top_k());
  spec.sampling.seed = request.seed();

  if (request.stop_size() > limits.max_stop_strings) {
    invalid(fmt::format("stop: {} strings exceed the limit of {}", request.stop_size(),
                        limits.max_stop_strings));
  }
  for (int i = 0; i < request.stop_size(); ++i) {
    const std::string& stop = request.stop(i);
    if (stop.empty()) invalid(fmt::format("stop[{}]: must not be empty", i));
    if (static_cast<int64_t>(stop.size()) > limits.max_stop_bytes) {
      invalid(fmt::format("stop[{}]: {} bytes exceed the limit of {}", i, stop.size(),
                          limits.max_stop_bytes));
    }
    if (invalid_utf8_at(stop) != std::string_view::npos) {
      invalid(fmt::format("stop[{}]: not valid UTF-8", i));
    }
    spec.stop.push_back(stop);
  }
  spec.priority = requested_priority(request, limits);
  if (spec.priority >= limits.priority_levels) {
    invalid(fmt::format("priority: {} is outside 0..{} (scheduler.priority_levels = {}; 0 is "
                        "the most urgent)",
                        request.priority(), limits.priority_levels - 1, limits.priority_levels));
  }
  spec.token_details = request.include_token_details();
  spec.score_prompt = request.score_prompt();

  // Tokenize last: the cheap checks above reject bad requests before any real work.
  spec.prompt.push_back(tokenizer.bos_id());
  const std::vector<int32_t> ids = tokenizer.encode(prompt);
  spec.prompt.insert(spec.prompt.end(), ids.begin(), ids.end());
  const int64_t prompt_tokens = static_cast<int64_t>(spec.prompt.size());
  if (prompt_tokens > limits.max_prompt_tokens) {
    invalid(fmt::format("prompt: {} tokens (with BOS) exceed the limit of {}", prompt_tokens,
                        limits.max_prompt_tokens));
  }
  if (prompt_tokens >= limits.context_length) {
    invalid(fmt::format("prompt: {} tokens (with BOS) leave no room to generate within the "
                        "model's context of {} tokens",
                        prompt_tokens, limits.context_length));
  }
  return spec;
}

}  // namespace helios::serve
