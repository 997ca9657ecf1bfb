#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#include "common/scratch_dir.h"
#include "helios/metrics/registry.h"

namespace helios::metrics {
namespace {

struct CheckResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

// Runs `promtool check metrics` (Prometheus' own parser plus its linter) on `text`.
CheckResult promtool_check(const std::string& text) {
  helios::testing::ScratchDir dir("promtool");
  const auto input = dir.path() / "metrics.txt";
  const auto output = dir.path() / "promtool.out";
  std::ofstream(input, std::ios::binary) << text;
  const std::string command =
      "promtool check metrics < '" + input.string() + "' > '" + output.string() + "' 2>&1";
  const int status = std::system(command.c_str());
  CheckResult result;
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream in(output, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  result.output = buffer.str();
  return result;
}

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
  const CheckResult result = promtool_check(text);
  EXPECT_EQ(result.exit_code, 0) << result.output << "\n--- rendered:\n" << text;
  EXPECT_EQ(result.output, "") << "--- rendered:\n" << text;
}

// The check above means something only if promtool does object to bad input.
TEST(Promtool, RejectsWhatItShould) {
  ASSERT_EQ(std::system("command -v promtool > /dev/null"), 0)
      << "promtool not found (Debian package prometheus)";
  const CheckResult lint = promtool_check("# HELP x A counter.\n# TYPE x counter\nx 1\n");
  EXPECT_NE(lint.exit_code, 0);
  EXPECT_NE(lint.output, "");
  const CheckResult parse = promtool_check("# TYPE x gauge\nx{a=\"unterminated} 1\n");
  EXPECT_NE(parse.exit_code, 0);
}

}  // namespace
}  // namespace helios::metrics
