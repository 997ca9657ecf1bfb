#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "helios/engine/request.h"

namespace helios::engine {

// Waits for the request's final update; returns everything it produced, merged.
inline Update result_of(Request& request,
                        std::chrono::seconds timeout = std::chrono::seconds(60)) {
  Update all;
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    Update update;
    if (request.channel().take(update)) all.merge(std::move(update));
    if (all.finished()) return all;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ADD_FAILURE() << "request " << request.spec().id << " did not finish";
  return all;
}

}  // namespace helios::engine
