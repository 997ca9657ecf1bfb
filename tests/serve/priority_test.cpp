// Priority classes against the real daemon: urgent requests keep their time to first token
// while a flood of low-priority work fills the queue, the flood still completes, the per-class
// queues refuse on their own, and the metrics carry the class.
#include <gtest/gtest.h>

#include <algorithm>
#include <future>
#include <iostream>
#include <thread>

#include "serve/daemon_process.h"

namespace helios::testing {
namespace {

using namespace std::chrono_literals;

constexpr char kModel[] = "prose-micro";
constexpr uint32_t kUrgent = 0, kLow = 2;

// How much slower a sanitized build runs the engine: the latency bound scales with it.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr double kSlowdown = 10.0;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr double kSlowdown = 10.0;
#else
constexpr double kSlowdown = 1.0;
#endif
#else
constexpr double kSlowdown = 1.0;
#endif

v1::GenerateRequest request_of(const std::string& prompt, uint32_t max_tokens, uint32_t priority) {
  v1::GenerateRequest request = greedy_request(prompt, max_tokens);
  request.set_priority(priority);
  return request;
}

double percentile(std::vector<double> values, double q) {
  std::sort(values.begin(), values.end());
  return values.at(static_cast<size_t>(q * static_cast<double>(values.size() - 1) + 0.5));
}

// The server's TTFT of `count` urgent requests sent one after another.
std::vector<double> urgent_ttfts(const DaemonProcess& daemon, int count) {
  auto stub = daemon.inference();
  std::vector<double> ttft;
  for (int i = 0; i < count; ++i) {
    const StreamResult r =
        generate(*stub, request_of("Urgent question number " + std::to_string(i), 8, kUrgent));
    EXPECT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.usage.priority(), kUrgent);
    ttft.push_back(r.usage.time_to_first_token_ms());
  }
  return ttft;
}

TEST(Priority, UrgentRequestsKeepTheirTimeToFirstTokenUnderALowPriorityFlood) {
  // Four sequences in the batch; the low class may queue 64. A flood of 64 low-priority
  // requests of 64 tokens each takes seconds to drain four at a time.
  DaemonProcess daemon(daemon_config(
      kModel, {{"scheduler", {{"max_running_requests", 4}, {"max_queued_requests", 64}}}}));
  ASSERT_TRUE(daemon.wait_ready());
  const std::vector<double> alone = urgent_ttfts(daemon, 12);

  auto stub = daemon.inference();
  std::vector<std::future<StreamResult>> flood;
  const std::vector<std::string> prompts = test_prompts(64);
  for (const std::string& prompt : prompts) {
    flood.push_back(std::async(std::launch::async, [&stub, prompt] {
      return generate(*stub, request_of(prompt, 64, kLow));
    }));
  }
  // Until the flood is queued behind a full batch.
  const auto until = std::chrono::steady_clock::now() + 30s;
  while (daemon.status().waiting_requests() < 32 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(5ms);
  }
  ASSERT_GE(daemon.status().waiting_requests(), 32u) << "the flood did not fill the queue";
  const std::vector<double> flooded = urgent_ttfts(daemon, 12);
  const uint32_t still_waiting = daemon.status().waiting_requests();

  std::vector<double> low_queue;
  int64_t low_preemptions = 0;
  for (auto& f : flood) {
    const StreamResult r = f.get();
    EXPECT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.finish, v1::LENGTH) << "a preempted low-priority request still completes";
    low_queue.push_back(r.usage.queue_time_ms());
    low_preemptions += r.usage.preemptions();
  }
  const double alone_p95 = percentile(alone, 0.95), flooded_p95 = percentile(flooded, 0.95);
  const double low_p50_queue = percentile(low_queue, 0.5);
  std::cout << "urgent p95 TTFT alone " << alone_p95 << " ms, under the flood " << flooded_p95
            << " ms (" << still_waiting << " low-priority requests still waiting after them); "
            << "low-priority p50 queue time " << low_p50_queue << " ms, " << low_preemptions
            << " low-priority preemptions\n";
  ::testing::Test::RecordProperty("urgent_p95_ttft_alone_ms", std::to_string(alone_p95));
  ::testing::Test::RecordProperty("urgent_p95_ttft_flood_ms", std::to_string(flooded_p95));
  // The stated bound: an urgent request waits at most for one step of the full batch plus its
  // own prefill, on a noisy 2-core machine: median alone + 100 ms, p95 alone + 250 ms (one of
  // the 12 may meet a stall of the machine when ctest runs another daemon beside this one; x10
  // in a sanitized build). In FIFO order it would wait for the whole flood ahead of it
  // (seconds; the low class's median queue time shows the scale).
  const double alone_p50 = percentile(alone, 0.5), flooded_p50 = percentile(flooded, 0.5);
  EXPECT_LE(flooded_p50, alone_p50 + 100.0 * kSlowdown);
  EXPECT_LE(flooded_p95, alone_p95 + 250.0 * kSlowdown);
  EXPECT_GT(still_waiting, 0u) << "the urgent requests ran while the flood was still queued";
  EXPECT_GT(low_p50_queue, flooded_p95);
  EXPECT_GE(low_preemptions, 1) << "a full batch gives an urgent request the least urgent place";

  const std::string metrics = scrape(daemon);
  EXPECT_GE(sample_value(metrics, R"(helios_preemptions_total{priority="2"})"),
            static_cast<double>(low_preemptions));
  EXPECT_EQ(sample_value(metrics, R"(helios_preemptions_total{priority="0"})"), 0.0);
  EXPECT_EQ(sample_value(metrics, R"(helios_time_to_first_token_seconds_count{priority="0"})"), 24.0);
  EXPECT_EQ(sample_value(metrics, R"(helios_time_to_first_token_seconds_count{priority="2"})"), 64.0);
  EXPECT_EQ(daemon.stop(), 0) << daemon.log();
}

TEST(Priority, EachClassHasItsOwnQueueAndUnknownClassesAreRefused) {
  // One running, one waiting per class.
  DaemonProcess daemon(daemon_config(
      kModel, {{"scheduler", {{"max_running_requests", 1}, {"max_queued_requests", 1}}}}));
  ASSERT_TRUE(daemon.wait_ready());
  auto stub = daemon.inference();
  // Low-priority work fills its own queue...
  std::vector<std::future<StreamResult>> low;
  for (int i = 0; i < 6; ++i) {
    low.push_back(std::async(std::launch::async, [&stub, i] {
      return generate(*stub, request_of("Low " + std::to_string(i), 200, kLow));
    }));
  }
  int refused = 0;
  for (auto& f : low) {
    const StreamResult r = f.get();
    if (!r.status.ok()) {
      EXPECT_EQ(r.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
      EXPECT_NE(r.status.error_message().find("priority 2"), std::string::npos)
          << r.status.error_message();
      ++refused;
    }
  }
  EXPECT_GE(refused, 1);

  // ...and never an urgent one's: with the low queue full, an urgent request is admitted.
  std::vector<std::future<StreamResult>> more_low;
  for (int i = 0; i < 3; ++i) {
    more_low.push_back(std::async(std::launch::async, [&stub, i] {
      return generate(*stub, request_of("Low again " + std::to_string(i), 200, kLow));
    }));
  }
  std::this_thread::sleep_for(50ms);
  const StreamResult urgent = generate(*stub, request_of("Urgent", 4, kUrgent));
  EXPECT_TRUE(urgent.status.ok()) << urgent.status.error_message();
  for (auto& f : more_low) f.get();

  // Classes are 0..2 by default; the server's default class is 1.
  StreamResult r = generate(*stub, request_of("Out of range", 2, 3));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(r.status.error_message().rfind("priority:", 0), 0u) << r.status.error_message();
  r = generate(*stub, greedy_request("No class", 2));
  EXPECT_TRUE(r.status.ok());
  EXPECT_EQ(r.usage.priority(), 1u);
  EXPECT_EQ(daemon.stop(), 0) << daemon.log();
}

}  // namespace
}  // namespace helios::testing
