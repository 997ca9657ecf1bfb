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

std::string text_value(const nlohmann::ordered_json& value) {
  if (value.is_string()) {
    const std::string& s = value.get_ref<const std::string&>();
    if (!s.empty() && s.find_first_of(" \t\"=") == std::string::npos) return s;
    return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
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
    spdlog::set_pattern("%+");  // spdlog's default text pattern
  }
}

Format format() { return g_format.load(); }

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
