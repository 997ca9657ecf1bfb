#pragma once

// The daemon's log: spdlog's default logger, as human text or as JSON lines.
//
// Text:  [2026-11-21 12:00:00.123] [info] request finished: id=r-7 prompt_tokens=12 ...
// JSON:  {"ts":"2026-11-21T12:00:00.123Z","level":"info","event":"request_finished",
//         "msg":"request finished","id":"r-7","prompt_tokens":12,...}
//
// Plain messages (spdlog::info("...")) become {"ts", "level", "msg"} objects in JSON; events
// logged through event() carry their fields as typed JSON keys, so a log pipeline can filter
// on them (e.g. finish == "deadline" or ttft_ms > 500) without parsing text.

#include <spdlog/common.h>

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace helios::logging {

enum class Format { kText, kJson };

// "text" or "json"; throws helios::Error(kInvalidArgument) naming logging.format otherwise.
Format parse_format(const std::string& name);

// Sets the default logger's level ("trace" ... "error") and line format. Call once at start-up,
// before other threads log.
void configure(const std::string& level, Format format);
Format format();

// One structured event. `name` is snake_case (request_finished, controller_decision); the text
// form is "<name with spaces>: key=value ..." with strings quoted when they hold spaces.
// Fields keep their order in both forms.
void event(spdlog::level::level_enum level, std::string_view name,
           const nlohmann::ordered_json& fields);

// The text form of an event's fields (exposed for tests). String values pass through
// printable(value, kMaxTextFieldBytes).
std::string text_fields(const nlohmann::ordered_json& fields);

// A string field of a text event (a request id, a model name a client sent) is cut after this
// many bytes; the cut is marked "...(+N bytes)". JSON lines keep whole values (they are
// escaped by construction).
inline constexpr size_t kMaxTextFieldBytes = 256;

// `text` with every control character escaped (C0 and DEL as \n, \r, \t or \xNN; the C1
// controls and U+2028/U+2029 as \uNNNN), so that no client-supplied string can start a forged
// line in a text log; longer than `max_bytes`, it is cut there (never inside a UTF-8
// sequence) and the cut is marked. Every text log line goes through this (without the cap);
// the text format escapes before it prints.
std::string printable(std::string_view text, size_t max_bytes = std::string_view::npos);

}  // namespace helios::logging
