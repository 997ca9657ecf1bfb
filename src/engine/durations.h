#pragma once

#include <chrono>

#include "helios/engine/request.h"

namespace helios::engine {

// Seconds from `from` to `to` on the engine's clock (what latency metrics, usage and
// telemetry report).
inline double seconds_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

}  // namespace helios::engine
