#include "helios/common/logging.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <memory>

#include "helios/common/error.h"

namespace helios::logging {
namespace {

std::atomic<Format> g_format{Format::kText};

// Marks a payload that is an event's serialized JSON object (a plain message never starts
// with it): the formatter splices it after ts and level instead of parsing it again.
constexpr char kEventMark = '\x1e';

std::string iso8601_utc(std::chrono::system_clock::time_point t) {
  const auto since_epoch = t.time_since_epoch();
  const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
  const auto millis =
      std::chrono::duration_cast<std::chrono::milliseconds>(since_epoch - seconds).count();
  const std::time_t tt = static_cast<std::time_t>(seconds.count());
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buffer[32];
  const size_t n = std::strftime(buffer, sizeof(buffer), "%Y-%m-%dT%H:%M:%S", &tm);
  char out[48];
  std::snprintf(out, sizeof(out), "%.*s.%03dZ", static_cast<int>(n), buffer,
                static_cast<int>(millis));
  return out;
}

// One JSON object per line: ts, level, then the event's fields or the plain message.
class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const auto level = spdlog::level::to_string_view(msg.level);
    // Neither the timestamp nor a level name holds a character JSON escapes.
    std::string line = "{\"ts\":\"" + iso8601_utc(msg.time) + "\",\"level\":\"" +
                       std::string(level.data(), level.size()) + "\",";
    const std::string_view payload(msg.payload.data(), msg.payload.size());
    if (payload.size() > 2 && payload.front() == kEventMark) {
      line += payload.substr(2);  // the event's object without its opening brace
    } else {
      // Invalid UTF-8 in a message (a client's text) is replaced rather than thrown on.
      line += "\"msg\":" +
              nlohmann::json(std::string(payload))
                  .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) +
              "}";
    }
    dest.append(line.data(), line.data() + line.size());
    dest.push_back('\n');
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }
};

// The length of the control character (or line separator) that starts `text`, 0 for none.
size_t control_length(std::string_view text) {
  const auto c = static_cast<unsigned char>(text[0]);
  if (c < 0x20 || c == 0x7f) return 1;
  if (c == 0xc2 && text.size() >= 2) {  // C1 controls: U+0080..U+009F
    const auto next = static_cast<unsigned char>(text[1]);
    return next >= 0x80 && next <= 0x9f ? 2 : 0;
  }
  if (c == 0xe2 && text.size() >= 3 && text[1] == '\x80' &&
      (text[2] == '\xa8' || text[2] == '\xa9')) {  // U+2028, U+2029
    return 3;
  }
  return 0;
}

bool has_control(std::string_view text) {
  for (size_t i = 0; i < text.size(); ++i) {
    if (control_length(text.substr(i)) > 0) return true;
  }
  return false;
}

// The longest prefix of `text` of at most `max_bytes` that does not end inside a UTF-8 sequence.
size_t utf8_prefix(std::string_view text, size_t max_bytes) {
  if (text.size() <= max_bytes) return text.size();
  size_t keep = max_bytes;
  // Back off to the start of a sequence (continuation bytes are 10xxxxxx).
  while (keep > 0 && (static_cast<unsigned char>(text[keep]) & 0xc0) == 0x80) --keep;
  return keep;
}

std::string cut_mark(size_t cut_bytes) { return "...(+" + std::to_string(cut_bytes) + " bytes)"; }

// spdlog's default text pattern over a payload with its control characters escaped.
class TextFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const std::string_view payload(msg.payload.data(), msg.payload.size());
    if (!has_control(payload)) {
      pattern_.format(msg, dest);
      return;
    }
    const std::string escaped = printable(payload);
    spdlog::details::log_msg copy = msg;
    copy.payload = spdlog::string_view_t(escaped.data(), escaped.size());
    pattern_.format(copy, dest);
    // A colour sink reads the level's range from the message it passed in.
    msg.color_range_start = copy.color_range_start;
    msg.color_range_end = copy.color_range_end;
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<TextFormatter>();
  }

 private:
  spdlog::pattern_formatter pattern_{"%+"};  // spdlog's default text pattern
};

std::string text_value(const nlohmann::ordered_json& value) {
  if (value.is_string()) {
    const std::string& s = value.get_ref<const std::string&>();
    if (!s.empty() && s.size() <= kMaxTextFieldBytes &&
        s.find_first_of(" \t\"=\\") == std::string::npos && !has_control(s)) {
      return s;
    }
    // Quoted as a JSON string (which escapes quotes, backslashes and C0 controls); printable()
    // then escapes the C1 controls and line separators JSON leaves as they are.
    const size_t keep = utf8_prefix(s, kMaxTextFieldBytes);
    std::string shown = s.substr(0, keep);
    if (keep < s.size()) shown += cut_mark(s.size() - keep);
    return printable(
        nlohmann::json(shown).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  }
  if (value.is_number_float()) {
    char buffer[32];
    std::snprintf(buffer, sizeof(buffer), "%.4g", value.get<double>());
    return buffer;
  }
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

Format parse_format(const std::string& name) {
  if (name == "text") return Format::kText;
  if (name == "json") return Format::kJson;
  throw Error(ErrorCode::kInvalidArgument,
              "logging.format: must be \"text\" or \"json\", got \"" + name + "\"");
}

void configure(const std::string& level, Format format) {
  spdlog::set_level(spdlog::level::from_str(level));
  g_format.store(format);
  if (format == Format::kJson) {
    spdlog::set_formatter(std::make_unique<JsonFormatter>());
  } else {
    spdlog::set_formatter(std::make_unique<TextFormatter>());
  }
}

Format format() { return g_format.load(); }

std::string printable(std::string_view text, size_t max_bytes) {
  const size_t keep = utf8_prefix(text, max_bytes);
  std::string out;
  out.reserve(keep + 16);
  for (size_t i = 0; i < keep;) {
    const size_t length = control_length(text.substr(i, keep - i));
    if (length == 0) {
      out += text[i++];
      continue;
    }
    const auto c = static_cast<unsigned char>(text[i]);
    char buffer[8];
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (length == 1) {
      std::snprintf(buffer, sizeof(buffer), "\\x%02x", c);
      out += buffer;
    } else {
      const unsigned code = length == 2 ? static_cast<unsigned char>(text[i + 1])
                                        : 0x2000u + (static_cast<unsigned char>(text[i + 2]) - 0x80u);
      std::snprintf(buffer, sizeof(buffer), "\\u%04x", code);
      out += buffer;
    }
    i += length;
  }
  if (keep < text.size()) out += cut_mark(text.size() - keep);
  return out;
}

std::string text_fields(const nlohmann::ordered_json& fields) {
  std::string out;
  for (const auto& [key, value] : fields.items()) {
    if (!out.empty()) out += ' ';
    out += key;
    out += '=';
    out += text_value(value);
  }
  return out;
}

void event(spdlog::level::level_enum level, std::string_view name,
           const nlohmann::ordered_json& fields) {
  if (!spdlog::should_log(level)) return;
  std::string title(name);
  for (char& c : title) {
    if (c == '_') c = ' ';
  }
  if (format() == Format::kJson) {
    nlohmann::ordered_json object = {{"event", std::string(name)}, {"msg", title}};
    for (const auto& [key, value] : fields.items()) object[key] = value;
    spdlog::log(level, "{}{}", kEventMark,
                object.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  } else {
    spdlog::log(level, "{}: {}", title, text_fields(fields));
  }
}

}  // namespace helios::logging
