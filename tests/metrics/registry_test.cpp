#include "helios/metrics/registry.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "common/expect_error.h"

namespace helios::metrics {
namespace {

using helios::testing::expect_error;
using ::testing::HasSubstr;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

TEST(Registry, RendersEveryMetricTypeInTheTextFormat) {
  Registry registry;
  auto& requests = registry.counter("helios_requests_total", "Requests served.", {"model", "code"});
  requests.labels({"tiny", "OK"}).inc();
  requests.labels({"tiny", "OK"}).inc(2);
  requests.labels({"small", "INVALID_ARGUMENT"}).inc(0.5);
  auto& queue = registry.gauge("helios_queue_depth", "Requests waiting.");
  queue.get().set(3);
  queue.get().dec();
  auto& ttft = registry.histogram("helios_ttft_seconds", "Time to first token.", {0.005, 0.25, 1},
                                  {"model"});
  ttft.labels({"tiny"}).observe(0);
  ttft.labels({"tiny"}).observe(0.25);  // on a bound: counts in that bucket
  ttft.labels({"tiny"}).observe(8);
  registry.gauge("helios_kv_blocks_used", "KV blocks in use.");  // never set: exported as 0

  EXPECT_EQ(registry.render(),
            "# HELP helios_requests_total Requests served.\n"
            "# TYPE helios_requests_total counter\n"
            "helios_requests_total{model=\"tiny\",code=\"OK\"} 3\n"
            "helios_requests_total{model=\"small\",code=\"INVALID_ARGUMENT\"} 0.5\n"
            "# HELP helios_queue_depth Requests waiting.\n"
            "# TYPE helios_queue_depth gauge\n"
            "helios_queue_depth 2\n"
            "# HELP helios_ttft_seconds Time to first token.\n"
            "# TYPE helios_ttft_seconds histogram\n"
            "helios_ttft_seconds_bucket{model=\"tiny\",le=\"0.005\"} 1\n"
            "helios_ttft_seconds_bucket{model=\"tiny\",le=\"0.25\"} 2\n"
            "helios_ttft_seconds_bucket{model=\"tiny\",le=\"1\"} 2\n"
            "helios_ttft_seconds_bucket{model=\"tiny\",le=\"+Inf\"} 3\n"
            "helios_ttft_seconds_sum{model=\"tiny\"} 8.25\n"
            "helios_ttft_seconds_count{model=\"tiny\"} 3\n"
            "# HELP helios_kv_blocks_used KV blocks in use.\n"
            "# TYPE helios_kv_blocks_used gauge\n"
            "helios_kv_blocks_used 0\n");
}

TEST(Registry, UnlabelledHistogramPutsLeAlone) {
  Registry registry;
  auto& h = registry.histogram("step_seconds", "Step time.", {1, 2});
  h.get().observe(1.5);
  EXPECT_EQ(registry.render(),
            "# HELP step_seconds Step time.\n"
            "# TYPE step_seconds histogram\n"
            "step_seconds_bucket{le=\"1\"} 0\n"
            "step_seconds_bucket{le=\"2\"} 1\n"
            "step_seconds_bucket{le=\"+Inf\"} 1\n"
            "step_seconds_sum 1.5\n"
            "step_seconds_count 1\n");
}

TEST(Registry, EscapesLabelValuesAndHelp) {
  Registry registry;
  auto& family = registry.counter("escapes_total", "back\\slash \"quoted\"\nsecond line", {"v"});
  family.labels({"a\\b\"c\nd"}).inc();
  EXPECT_EQ(registry.render(),
            "# HELP escapes_total back\\\\slash \"quoted\"\\nsecond line\n"
            "# TYPE escapes_total counter\n"
            "escapes_total{v=\"a\\\\b\\\"c\\nd\"} 1\n");
}

TEST(Registry, FormatsValuesSoPrometheusParsesThem) {
  EXPECT_EQ(format_value(0), "0");
  EXPECT_EQ(format_value(-0.0), "0");
  EXPECT_EQ(format_value(-2), "-2");
  EXPECT_EQ(format_value(1e6), "1000000");
  EXPECT_EQ(format_value(9007199254740993.0), "9007199254740992");
  EXPECT_EQ(format_value(0.1), "0.1");
  EXPECT_EQ(format_value(0.005), "0.005");
  EXPECT_EQ(format_value(1.5e-7), "1.5e-07");
  EXPECT_EQ(format_value(1e300), "1e+300");
  EXPECT_EQ(format_value(kInf), "+Inf");
  EXPECT_EQ(format_value(-kInf), "-Inf");
  EXPECT_EQ(format_value(kNaN), "NaN");
}

TEST(Registry, ChildrenAreCreatedOnceAndKeepTheirAddress) {
  Registry registry;
  auto& family = registry.gauge("g", "A gauge.", {"a"});
  Gauge& first = family.labels({"x"});
  for (int i = 0; i < 100; ++i) family.labels({std::to_string(i)}).set(i);
  EXPECT_EQ(&family.labels({"x"}), &first);
  first.inc(4);
  EXPECT_EQ(family.labels({"x"}).value(), 4);
}

TEST(Registry, FindsCountersByName) {
  Registry registry;
  auto& tokens = registry.counter("tokens_total", "Tokens.");
  registry.gauge("depth", "Queue depth.");
  EXPECT_EQ(registry.find_counter("tokens_total"), &tokens);
  EXPECT_EQ(registry.find_counter("depth"), nullptr);  // a gauge
  EXPECT_EQ(registry.find_counter("missing_total"), nullptr);
}

TEST(Registry, CollectHooksRunInOrderBeforeEachRender) {
  Registry registry;
  Gauge& depth = registry.gauge("depth", "Queue depth.").get();
  std::vector<int> order;
  int live_depth = 7;
  registry.on_collect([&] {
    order.push_back(1);
    depth.set(live_depth);
  });
  registry.on_collect([&] { order.push_back(2); });
  EXPECT_THAT(registry.render(), HasSubstr("\ndepth 7\n"));
  live_depth = 9;
  EXPECT_THAT(registry.render(), HasSubstr("\ndepth 9\n"));
  EXPECT_EQ(order, (std::vector<int>{1, 2, 1, 2}));
}

TEST(Registry, RejectsBadMetricAndLabelNames) {
  Registry registry;
  for (const std::string name : {"", "1abc", "a-b", "a b", "h\xc3\xa9llo"}) {
    expect_error([&] { registry.counter(name, "x"); }, ErrorCode::kInvalidArgument,
                 {"metric name", "[a-zA-Z_:]"});
  }
  for (const std::string label : {"", "1x", "a-b", "a:b"}) {
    expect_error([&] { registry.counter("c_total", "x", {label}); }, ErrorCode::kInvalidArgument,
                 {"c_total", "label name", "[a-zA-Z_]"});
  }
  expect_error([&] { registry.gauge("g", "x", {"__name__"}); }, ErrorCode::kInvalidArgument,
               {"g", "__name__", "reserved"});
  expect_error(
      [&] {
        registry.histogram("h", "x", {1}, {"model", "le"});
      },
      ErrorCode::kInvalidArgument, {"h", "\"le\"", "reserved"});
  expect_error(
      [&] {
        registry.gauge("g", "x", {"a", "b", "a"});
      },
      ErrorCode::kInvalidArgument, {"g", "\"a\"", "twice"});
  // Names that are fine: colons in metric names, `le` outside histograms.
  registry.counter("job:requests:rate5m", "x");
  registry.gauge("bounds", "x", {"le", "_private", "a1"});
  // A failed registration leaves nothing behind, so the name is still free.
  registry.counter("c_total", "x", {"ok"});
}

TEST(Registry, RejectsDuplicateAndClashingNames) {
  Registry registry;
  registry.counter("requests_total", "x");
  expect_error([&] { registry.counter("requests_total", "x"); }, ErrorCode::kInvalidArgument,
               {"requests_total", "already registered"});
  expect_error([&] { registry.gauge("requests_total", "x", {"a"}); }, ErrorCode::kInvalidArgument,
               {"requests_total", "already registered"});
  registry.histogram("latency", "x", {1});
  expect_error([&] { registry.counter("latency_count", "x"); }, ErrorCode::kInvalidArgument,
               {"latency_count", "latency"});
  registry.gauge("queue_sum", "x");
  expect_error([&] { registry.histogram("queue", "x", {1}); }, ErrorCode::kInvalidArgument,
               {"queue", "queue_sum"});
}

TEST(Registry, RejectsWrongLabelArity) {
  Registry registry;
  auto& labelled = registry.counter("c_total", "x", {"model", "code"});
  expect_error([&] { labelled.labels({"tiny"}); }, ErrorCode::kInvalidArgument,
               {"c_total", "1 label values given for 2 labels", "model, code"});
  expect_error([&] { labelled.get(); }, ErrorCode::kInvalidArgument, {"c_total", "labels()"});
  auto& plain = registry.gauge("g", "x");
  expect_error([&] { plain.labels({"extra"}); }, ErrorCode::kInvalidArgument, {"g"});
  EXPECT_EQ(&plain.get(), &plain.labels({}));
}

TEST(Counter, RejectsNegativeAndNaNIncrements) {
  Counter counter;
  counter.inc(0);
  counter.inc(2.5);
  expect_error([&] { counter.inc(-1); }, ErrorCode::kInvalidArgument, {"non-negative"});
  expect_error([&] { counter.inc(kNaN); }, ErrorCode::kInvalidArgument, {"non-negative"});
  EXPECT_EQ(counter.value(), 2.5);
}

TEST(Histogram, CountsIntoBucketsByUpperBound) {
  Histogram h({1, 2, 4});
  for (const double v : {-3.0, 1.0, 1.5, 2.0, 3.0, 4.5, kInf, kNaN}) h.observe(v);
  const Histogram::Snapshot snap = h.snapshot();
  EXPECT_EQ(snap.cumulative, (std::vector<uint64_t>{2, 4, 5, 8}));
  EXPECT_EQ(snap.count, 8u);
  EXPECT_TRUE(std::isnan(snap.sum)) << "NaN poisons the sum, as in the Prometheus clients";
  EXPECT_EQ(h.bounds(), (std::vector<double>{1, 2, 4}));
}

TEST(Buckets, ValidationNamesTheField) {
  const std::string field = "metrics.ttft_buckets_seconds";
  expect_error([&] { validate_buckets({}, field); }, ErrorCode::kInvalidArgument,
               {field + ": bounds must not be empty"});
  expect_error(
      [&] {
        validate_buckets({0.1, 0.5, 0.5}, field);
      },
      ErrorCode::kInvalidArgument,
      {field + ": bounds must be strictly increasing", "0.5 after 0.5"});
  expect_error(
      [&] {
        validate_buckets({2, 1}, field);
      },
      ErrorCode::kInvalidArgument, {field, "strictly increasing", "1 after 2"});
  expect_error(
      [&] {
        validate_buckets({1, kInf}, field);
      },
      ErrorCode::kInvalidArgument, {field, "finite", "+Inf"});
  expect_error([&] { validate_buckets({kNaN}, field); }, ErrorCode::kInvalidArgument,
               {field, "finite", "NaN"});
  validate_buckets({-1, 0, 0.5}, field);

  Registry registry;
  expect_error(
      [&] {
        registry.histogram("ttft_seconds", "x", {1, 0.5});
      },
      ErrorCode::kInvalidArgument, {"ttft_seconds", "buckets: bounds must be strictly increasing"});
  expect_error([] { Histogram h({}); }, ErrorCode::kInvalidArgument, {"bounds: "});
}

TEST(Buckets, ExponentialBucketsPrintAsWritten) {
  EXPECT_EQ(exponential_buckets(1, 2, 4), (std::vector<double>{1, 2, 4, 8}));
  const std::vector<double> decades = exponential_buckets(0.001, 10, 5);
  EXPECT_EQ(decades, (std::vector<double>{0.001, 0.01, 0.1, 1, 10}));
  const std::vector<double> ttft = exponential_buckets(0.005, 1.5, 12);
  ASSERT_EQ(ttft.size(), 12u);
  EXPECT_NEAR(ttft.back(), 0.005 * std::pow(1.5, 11), 1e-12);
  validate_buckets(ttft, "ttft");
  for (const auto& [start, factor, count] : std::vector<std::tuple<double, double, int>>{
           {0, 2, 3}, {-1, 2, 3}, {1, 1, 3}, {1, 2, 0}, {kNaN, 2, 1}, {1, kInf, 2}}) {
    expect_error([&] { exponential_buckets(start, factor, count); }, ErrorCode::kInvalidArgument,
                 {"exponential buckets"});
  }
  expect_error([] { exponential_buckets(1, 1e300, 3); }, ErrorCode::kInvalidArgument, {"finite"});
}

TEST(Registry, ConcurrentUpdatesSumExactlyWhileRendering) {
  Registry registry;
  Counter& tokens = registry.counter("tokens_total", "Tokens.").get();
  Gauge& in_flight = registry.gauge("in_flight", "In flight.").get();
  auto& per_thread = registry.counter("per_thread_total", "Per thread.", {"thread"});
  auto& latency = registry.histogram("latency_seconds", "Latency.", {0.5, 1.5}, {"kind"});

  constexpr int kThreads = 4;
  constexpr int kIterations = 20000;
  std::atomic<bool> done{false};
  std::atomic<int> renders{0};
  std::thread renderer([&] {
    while (!done) {
      const std::string text = registry.render();
      EXPECT_THAT(text, HasSubstr("# TYPE latency_seconds histogram\n"));
      ++renders;
    }
  });
  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      Counter& mine = per_thread.labels({std::to_string(t)});
      for (int i = 0; i < kIterations; ++i) {
        tokens.inc();
        mine.inc(0.5);
        in_flight.inc();
        in_flight.dec();
        // Children and families created while the renderer walks them.
        latency.labels({i % 2 == 0 ? "even" : "odd"}).observe(i % 2);
        if (i % 1000 == 0) {
          registry.gauge("late_" + std::to_string(t) + "_" + std::to_string(i), "Late.")
              .get()
              .set(i);
        }
      }
    });
  }
  for (std::thread& worker : workers) worker.join();
  done = true;
  renderer.join();

  EXPECT_GT(renders.load(), 0);
  EXPECT_EQ(tokens.value(), kThreads * kIterations);
  EXPECT_EQ(in_flight.value(), 0);
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(per_thread.labels({std::to_string(t)}).value(), kIterations * 0.5);
  }
  const Histogram::Snapshot even = latency.labels({"even"}).snapshot();
  const Histogram::Snapshot odd = latency.labels({"odd"}).snapshot();
  EXPECT_EQ(even.cumulative,
            (std::vector<uint64_t>{kThreads * kIterations / 2, kThreads * kIterations / 2,
                                   kThreads * kIterations / 2}));
  EXPECT_EQ(odd.cumulative,
            (std::vector<uint64_t>{0, kThreads * kIterations / 2, kThreads * kIterations / 2}));
  EXPECT_EQ(odd.sum, kThreads * kIterations / 2);
  const std::string text = registry.render();
  EXPECT_THAT(text, HasSubstr("\ntokens_total 80000\n"));
  EXPECT_THAT(text, HasSubstr("\nlate_3_19000 19000\n"));
}

}  // namespace
}  // namespace helios::metrics
