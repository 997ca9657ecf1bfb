#include "helios/common/json_limits.h"

#include <fstream>
#include <system_error>

namespace helios {
namespace {

using nlohmann::json;

// Thrown from the parser callback and caught around the parse, so the partial document is
// dropped before anything walks it.
struct TooDeep {};

// Cuts `text` to at most `max_bytes` without splitting a UTF-8 sequence.
void cut_utf8(std::string& text, size_t max_bytes) {
  if (text.size() <= max_bytes) return;
  size_t end = max_bytes;
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
  text.resize(end);
  text += "...";
}

// `text` as a JSON string of at most about `max_chars` characters. Cut before quoting, so a
// 100 MB string is not copied whole; the replace handler turns a sequence cut in half into
// U+FFFD instead of throwing.
std::string quoted(std::string_view text, size_t max_chars) {
  const bool cut = text.size() > max_chars;
  const json head = std::string(cut ? text.substr(0, max_chars) : text);
  std::string out = head.dump(-1, ' ', false, json::error_handler_t::replace);
  if (cut) out.insert(out.size() - 1, "...");
  return out;
}

// One value without looking inside containers.
std::string scalar_or_summary(const json& value, size_t max_chars) {
  if (value.is_array()) {
    return value.empty() ? "[]" : "[... " + std::to_string(value.size()) + " items]";
  }
  if (value.is_object()) {
    return value.empty() ? "{}" : "{... " + std::to_string(value.size()) + " keys}";
  }
  if (value.is_string()) return quoted(value.get_ref<const std::string&>(), max_chars);
  return value.dump();  // a number, boolean, null or discarded value: short and flat
}

}  // namespace

json parse_json(std::string_view text, std::string_view source, const JsonParseOptions& options) {
  const int max_depth = options.max_depth;
  // nlohmann reports the depth of a container as the number of containers around it.
  const json::parser_callback_t limit_depth = [max_depth](int depth, json::parse_event_t event,
                                                          json&) {
    if ((event == json::parse_event_t::object_start ||
         event == json::parse_event_t::array_start) &&
        depth >= max_depth) {
      throw TooDeep{};
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), limit_depth, /*allow_exceptions=*/true,
                       options.comments);
  } catch (const TooDeep&) {
    throw Error(ErrorCode::kInvalidArgument,
                std::string(source) + ": JSON nests arrays and objects deeper than the limit of " +
                    std::to_string(max_depth) + " levels");
  } catch (const json::exception& e) {
    // Syntax errors carry "at line L, column C"; out_of_range covers numbers like 1e400.
    throw Error(options.syntax_error, std::string(source) + ": invalid JSON: " + e.what());
  }
}

std::string read_json_file(const std::filesystem::path& path, uint64_t max_bytes) {
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) {
    throw Error(ErrorCode::kNotFound, path.string() + ": cannot open: not a regular file" +
                                          (error ? " (" + error.message() + ")" : ""));
  }
  const uintmax_t size = std::filesystem::file_size(path, error);
  if (error) throw Error(ErrorCode::kNotFound, path.string() + ": cannot open: " + error.message());
  if (size > max_bytes) {
    throw Error(ErrorCode::kInvalidArgument,
                path.string() + ": file is " + std::to_string(size) +
                    " bytes, more than the limit of " + std::to_string(max_bytes) + " bytes");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCode::kNotFound, path.string() + ": cannot open");
  // A file growing after the size check is read up to that size: the limit holds regardless.
  std::string text(static_cast<size_t>(size), '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  return text;
}

std::string json_excerpt(const json& value, size_t max_chars) {
  std::string out;
  if (value.is_array() && !value.empty()) {
    out = "[";
    size_t shown = 0;
    for (const json& item : value) {
      if (out.size() >= max_chars) break;
      out += (shown ? ", " : "") + scalar_or_summary(item, max_chars);
      ++shown;
    }
    if (shown < value.size()) out += ", ... " + std::to_string(value.size() - shown) + " more";
    out += "]";
  } else if (value.is_object() && !value.empty()) {
    out = "{";
    size_t shown = 0;
    for (const auto& [key, item] : value.items()) {
      if (out.size() >= max_chars) break;
      out += (shown ? ", " : "") + quoted(key, max_chars) + ": " +
             scalar_or_summary(item, max_chars);
      ++shown;
    }
    if (shown < value.size()) out += ", ... " + std::to_string(value.size() - shown) + " more";
    out += "}";
  } else {
    out = scalar_or_summary(value, max_chars);
  }
  // The closing bracket and the count of the rest may run past the cut; what matters is that
  // the whole stays short.
  cut_utf8(out, max_chars + 32);
  return out;
}

}  // namespace helios
