#pragma once

#include <string_view>

namespace helios::engine {

// Why a request or a generated sequence ended (kNone while it runs). `generate` ends only with
// kStop or kLength; the serving engine with any of them.
enum class Finish { kNone, kStop, kLength, kCancelled, kDeadline, kError };
std::string_view finish_label(Finish finish);  // "stop", "length", ...

}  // namespace helios::engine
