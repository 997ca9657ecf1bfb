#include "helios/metrics/energy_meter.h"

#include <dlfcn.h>
#include <gtest/gtest.h>

#include <ctime>

#include "common/expect_error.h"
#include "helios/common/error.h"

namespace helios::metrics {
namespace {

using helios::testing::expect_error;

double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// Keeps one core busy for about `seconds` of CPU time.
void burn_cpu(double seconds) {
  const double until = process_cpu_seconds() + seconds;
  volatile double sink = 0;
  while (process_cpu_seconds() < until) {
    for (int i = 0; i < 10000; ++i) sink = sink + static_cast<double>(i) * 1e-9;
  }
}

// Whether NVML could answer here; the fallback tests only mean something where it cannot.
bool nvml_loads() {
  void* handle = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) return false;
  dlclose(handle);
  return true;
}

TEST(EnergyMeter, CpuEstimateChargesCpuSecondsAtTheConfiguredWatts) {
  const auto meter = make_energy_meter({.source = "cpu_estimate", .cpu_watts_per_core = 40.0});
  EXPECT_EQ(meter->source(), "cpu_estimate");
  const double cpu_start = process_cpu_seconds();
  const double joules_start = meter->joules();
  EXPECT_GE(joules_start, 0.0);
  burn_cpu(0.3);
  const double cpu = process_cpu_seconds() - cpu_start;
  const double joules = meter->joules() - joules_start;
  // Nothing else in this process burns CPU meanwhile, so the two agree closely.
  EXPECT_NEAR(joules, cpu * 40.0, 0.05 * cpu * 40.0);
  EXPECT_GE(joules, 0.3 * 40.0 * 0.95);
}

TEST(EnergyMeter, NeverDecreases) {
  const auto meter = make_energy_meter({.source = "cpu_estimate"});
  double last = meter->joules();
  for (int i = 0; i < 1000; ++i) {
    const double now = meter->joules();
    ASSERT_GE(now, last);
    last = now;
  }
  burn_cpu(0.05);
  EXPECT_GT(meter->joules(), 0.0);
}

TEST(EnergyMeter, ZeroWattsIsZeroJoules) {
  const auto meter = make_energy_meter({.source = "cpu_estimate", .cpu_watts_per_core = 0.0});
  burn_cpu(0.05);
  EXPECT_EQ(meter->joules(), 0.0);
}

TEST(EnergyMeter, AutoOffTheGpuEstimatesFromCpuTime) {
  const auto meter = make_energy_meter({.source = "auto", .gpu_index = -1});
  EXPECT_EQ(meter->source(), "cpu_estimate");
}

TEST(EnergyMeter, AutoOnAGpuWithoutNvmlFallsBackToTheCpuEstimate) {
  if (nvml_loads()) GTEST_SKIP() << "libnvidia-ml.so.1 loads here, so there is no fallback to see";
  const auto meter = make_energy_meter({.source = "auto", .gpu_index = 0});
  EXPECT_EQ(meter->source(), "cpu_estimate");
}

TEST(EnergyMeter, NvmlWithoutNvmlIsAnErrorSayingWhy) {
  // Off a GPU the reason is the same wherever NVML exists.
  expect_error([] { make_energy_meter({.source = "nvml", .gpu_index = -1}); },
               ErrorCode::kFailedPrecondition, {"energy.source: ", "does not serve on a GPU"});
  if (nvml_loads()) GTEST_SKIP() << "libnvidia-ml.so.1 loads here, so \"nvml\" may work";
  expect_error([] { make_energy_meter({.source = "nvml", .gpu_index = 0}); },
               ErrorCode::kFailedPrecondition, {"energy.source: ", "libnvidia-ml.so.1 not found"});
}

TEST(EnergyMeter, UnknownSourceIsRejected) {
  expect_error([] { make_energy_meter({.source = "rapl"}); }, ErrorCode::kInvalidArgument,
               {"energy.source", "rapl"});
}

}  // namespace
}  // namespace helios::metrics
