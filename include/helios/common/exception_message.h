#pragma once

#include <exception>
#include <string>

namespace helios {

// What an exception says, fit for a log line or a client's status message: libtorch's errors
// (c10::Error) without the C++ backtrace their what() appends.
std::string exception_message(const std::exception& e);

}  // namespace helios
