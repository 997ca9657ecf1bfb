#pragma once

// Skips a GPU test, saying why, on a machine or build that cannot run it.

#include <ATen/Context.h>
#include <gtest/gtest.h>

#define HELIOS_REQUIRE_CUDA()                                                              \
  do {                                                                                     \
    if (!HELIOS_WITH_CUDA_BUILD) GTEST_SKIP() << "helios was built without HELIOS_CUDA";   \
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device (at::hasCUDA() is false)";         \
  } while (false)

#if HELIOS_WITH_CUDA
#define HELIOS_WITH_CUDA_BUILD true
#else
#define HELIOS_WITH_CUDA_BUILD false
#endif
