#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace helios {

// Error categories, chosen to map one-to-one onto gRPC status codes at the server edge.
enum class ErrorCode {
  kInvalidArgument,     // bad input from a caller (a field, a flag, a config key)
  kNotFound,            // a file, tensor or model that does not exist
  kDataLoss,            // a file exists but is malformed or truncated
  kOutOfRange,          // an index, length or offset past a limit
  kFailedPrecondition,  // the call is valid but the state does not allow it
  kResourceExhausted,   // a pool, queue or budget is full
  kUnavailable,         // shutting down, or a dependency is not ready
  kInternal,            // a broken invariant: a bug
};

std::string_view error_code_name(ErrorCode code);

// The one exception type helios throws. Every message names what it is about (the file, the
// tensor, the field) so an operator can act on it without a debugger.
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace helios
