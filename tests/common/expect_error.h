#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "helios/common/error.h"

namespace helios::testing {

// Asserts that `action` throws helios::Error of `code` whose message holds every needle (the
// file, tensor or field an operator needs to see).
template <typename Action>
void expect_error(Action action, ErrorCode code, const std::vector<std::string>& needles) {
  try {
    action();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    for (const std::string& needle : needles) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
          << "message \"" << e.what() << "\" lacks \"" << needle << "\"";
    }
  }
}

}  // namespace helios::testing
