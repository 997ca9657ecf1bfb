#include <gtest/gtest.h>

#include <cstdlib>
#include <limits>
#include <string>

#include "common/run_command.h"
#include "helios/metrics/registry.h"

namespace helios::metrics {
namespace {

using helios::testing::CommandResult;
using helios::testing::promtool_check;

TEST(Promtool, AcceptsEveryMetricType) {
  ASSERT_EQ(std::system("command -v promtool > /dev/null"), 0)
      << "promtool not found (Debian package prometheus)";
  Registry registry;
  auto& requests = registry.counter("helios_requests_total", "Requests served, by model and code.",
                                    {"model", "code"});
  requests.labels({"tiny", "OK"}).inc(3);
  requests.labels({"odd \"name\"\\with\nnewline", "INTERNAL"}).inc(0.25);
  registry.counter("helios_tokens_generated_total", "Tokens generated.").get().inc(1e12);
  auto& queue = registry.gauge("helios_queue_depth", "Requests waiting.\nSecond \\ line.");
  queue.get().set(-2);
  auto& special = registry.gauge("helios_special_values", "Values with no decimal form.", {"kind"});
  special.labels({"pos_inf"}).set(std::numeric_limits<double>::infinity());
  special.labels({"neg_inf"}).set(-std::numeric_limits<double>::infinity());
  special.labels({"nan"}).set(std::numeric_limits<double>::quiet_NaN());
  special.labels({"tiny"}).set(1.5e-12);
  auto& ttft = registry.histogram("helios_ttft_seconds", "Time to first token.",
                                  exponential_buckets(0.001, 2, 12), {"model"});
  for (const double v : {0.0005, 0.003, 0.02, 0.7, 9.0}) ttft.labels({"tiny"}).observe(v);
  ttft.labels({"small"}).observe(0.1);
  registry.histogram("helios_batch_size", "Sequences per step.", {1, 2, 4, 8, 16, 32})
      .get()
      .observe(5);
  registry.gauge("helios_unused", "Registered with labels, never set.", {"model"});

  const std::string text = registry.render();
  const CommandResult result = promtool_check(text);
  EXPECT_EQ(result.exit_code, 0) << result.output << "\n--- rendered:\n" << text;
  EXPECT_EQ(result.output, "") << "--- rendered:\n" << text;
}

// The check above means something only if promtool does object to bad input.
TEST(Promtool, RejectsWhatItShould) {
  ASSERT_EQ(std::system("command -v promtool > /dev/null"), 0)
      << "promtool not found (Debian package prometheus)";
  const CommandResult lint = promtool_check("# HELP x A counter.\n# TYPE x counter\nx 1\n");
  EXPECT_NE(lint.exit_code, 0);
  EXPECT_NE(lint.output, "");
  const CommandResult parse = promtool_check("# TYPE x gauge\nx{a=\"unterminated} 1\n");
  EXPECT_NE(parse.exit_code, 0);
}

}  // namespace
}  // namespace helios::metrics
