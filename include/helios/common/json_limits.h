#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "helios/common/error.h"

namespace helios {

// Deepest nesting of arrays and objects in any JSON file helios reads: 64 levels. The deepest
// legitimate document (a tokenizer.json merge pair) nests 4; the limit keeps every later walk
// of a parsed document (comparisons, copies, dumps) far from the end of the stack.
inline constexpr int kMaxJsonDepth = 64;

// Largest JSON config file helios reads whole (config.json, the server config, the SLO file,
// model.safetensors.index.json): 16 MiB.
inline constexpr uint64_t kMaxJsonConfigBytes = uint64_t{16} << 20;

struct JsonParseOptions {
  bool comments = false;  // accept // and /* */ comments (the operator's config files)
  int max_depth = kMaxJsonDepth;
  // The code of a syntax error: kDataLoss for model files, kInvalidArgument for configs.
  ErrorCode syntax_error = ErrorCode::kInvalidArgument;
};

// Parses `text` as one JSON document. Nesting is counted while parsing, so a document deeper
// than options.max_depth is refused (helios::Error kInvalidArgument naming `source` and the
// limit) before any of it is walked recursively. A syntax error or a number out of range is
// options.syntax_error naming `source` and nlohmann's position. No nlohmann exception escapes.
nlohmann::json parse_json(std::string_view text, std::string_view source,
                          const JsonParseOptions& options = {});

// The whole of a JSON file no larger than `max_bytes`: kNotFound naming the file when it cannot
// be opened or is not a regular file, kInvalidArgument naming it and the limit when it is
// larger (checked before anything is allocated for it).
std::string read_json_file(const std::filesystem::path& path,
                           uint64_t max_bytes = kMaxJsonConfigBytes);

// A short rendering of `value` for error messages, at most about `max_chars` characters:
// scalars as JSON (long strings cut), an array or object as its first members with nested
// containers summarised ("[... 3 items]", "{... 2 keys}"). Never walks deeper than one level,
// so a pathological document cannot exhaust the stack or memory through an error message.
std::string json_excerpt(const nlohmann::json& value, size_t max_chars = 80);

}  // namespace helios
