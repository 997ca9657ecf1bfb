// Hostile and overloading clients against the real daemon on loopback: a flood of concurrent
// streams, concurrent multi-megabyte prompts, a sustained overload. Each test prints what it
// measured (admitted / refused / failed, the daemon's peak RSS, the slowest /healthz) and
// records it as test properties.
#include <gtest/gtest.h>
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <thread>

#include "serve/daemon_process.h"

namespace helios::testing {
namespace {

using namespace std::chrono_literals;

constexpr char kModel[] = "prose-micro";

// Polls /healthz every 100 ms on a thread of its own; keeps the slowest answer.
class HealthzProbe {
 public:
  explicit HealthzProbe(int port)
      : thread_([this, port] {
          httplib::Client client("127.0.0.1", port);
          client.set_connection_timeout(2, 0);
          client.set_read_timeout(2, 0);
          while (!stop_.load()) {
            const auto t0 = std::chrono::steady_clock::now();
            const auto res = client.Get("/healthz");
            const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
                std::chrono::steady_clock::now() - t0);
            slowest_ms_.store(std::max<int64_t>(slowest_ms_.load(), took.count()));
            probes_.fetch_add(1);
            if (!res || res->status != 200) failures_.fetch_add(1);
            std::this_thread::sleep_for(100ms);
          }
        }) {}
  ~HealthzProbe() { stop(); }
  void stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  int64_t slowest_ms() const { return slowest_ms_.load(); }
  int64_t probes() const { return probes_.load(); }
  int64_t failures() const { return failures_.load(); }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> slowest_ms_{0}, probes_{0}, failures_{0};
  std::thread thread_;
};

// A channel with a connection of its own (gRPC shares one between channels with equal
// arguments otherwise), so a flood spreads over several HTTP/2 connections as real clients do.
std::shared_ptr<grpc::Channel> own_channel(const DaemonProcess& daemon) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxSendMessageSize(64 << 20);
  return grpc::CreateCustomChannel(daemon.address(), grpc::InsecureChannelCredentials(), args);
}

struct Tally {
  std::atomic<int64_t> admitted{0}, refused{0}, failed{0};
  std::atomic<int64_t> slowest_refusal_ms{0};
  std::mutex mutex;
  std::string first_failure;

  void count(const StreamResult& r, std::chrono::milliseconds took) {
    if (r.status.ok() && r.finish == v1::LENGTH) {
      admitted.fetch_add(1);
    } else if (r.status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      refused.fetch_add(1);
      slowest_refusal_ms.store(std::max<int64_t>(slowest_refusal_ms.load(), took.count()));
    } else {
      failed.fetch_add(1);
      std::lock_guard lock(mutex);
      if (first_failure.empty()) {
        first_failure = std::to_string(r.status.error_code()) + " " + r.status.error_message();
      }
    }
  }
};

void report(const std::string& test, const Tally& tally, double peak_rss_mib,
            double start_rss_mib, int64_t healthz_ms) {
  std::cout << "[overload] " << test << ": admitted " << tally.admitted << ", refused "
            << tally.refused << ", failed " << tally.failed << "; slowest refusal "
            << tally.slowest_refusal_ms << " ms; daemon peak RSS " << peak_rss_mib
            << " MiB (" << start_rss_mib << " MiB once serving); slowest /healthz "
            << healthz_ms << " ms" << std::endl;
  ::testing::Test::RecordProperty("admitted", static_cast<int>(tally.admitted));
  ::testing::Test::RecordProperty("refused", static_cast<int>(tally.refused));
  ::testing::Test::RecordProperty("failed", static_cast<int>(tally.failed));
  ::testing::Test::RecordProperty("peak_rss_mib", static_cast<int>(peak_rss_mib));
  ::testing::Test::RecordProperty("max_healthz_ms", static_cast<int>(healthz_ms));
}

// The daemon is idle again: nothing running or waiting.
bool wait_idle(const DaemonProcess& daemon, std::chrono::milliseconds timeout = 10s) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    const v1::GetStatusResponse s = daemon.status();
    if (s.running_requests() == 0 && s.waiting_requests() == 0 && s.kv_blocks_used() == 0) {
      return true;
    }
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

// 200 Generate calls at once against 4 running + 8 queued: those admitted complete, the rest
// get RESOURCE_EXHAUSTED at once, nothing else happens.
TEST(Overload, FloodOfConcurrentStreamsIsAdmittedOrRefusedAtOnce) {
  DaemonProcess daemon(daemon_config(
      kModel, {{"scheduler", {{"max_running_requests", 4}, {"max_queued_requests", 8}}}}));
  ASSERT_TRUE(daemon.wait_ready());
  const double start_rss = daemon.peak_rss_mib();
  HealthzProbe probe(daemon.http_port());
  constexpr int kCalls = 200;
  constexpr int kChannels = 4;
  std::vector<std::unique_ptr<v1::Inference::Stub>> stubs;
  for (int i = 0; i < kChannels; ++i) stubs.push_back(v1::Inference::NewStub(own_channel(daemon)));
  const std::vector<std::string> prompts = test_prompts(16);
  Tally tally;
  std::vector<std::thread> clients;
  for (int i = 0; i < kCalls; ++i) {
    clients.emplace_back([&, i] {
      const auto t0 = std::chrono::steady_clock::now();
      const StreamResult r =
          generate(*stubs[i % kChannels], greedy_request(prompts[i % prompts.size()], 128), 60s);
      tally.count(r, std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::steady_clock::now() - t0));
    });
  }
  for (std::thread& t : clients) t.join();
  probe.stop();
  const double peak_rss = daemon.peak_rss_mib();
  report("200 concurrent streams", tally, peak_rss, start_rss, probe.slowest_ms());

  EXPECT_EQ(tally.failed, 0) << tally.first_failure;
  EXPECT_EQ(tally.admitted + tally.refused, kCalls);
  EXPECT_GE(tally.admitted, 8);  // at least a full queue's worth
  EXPECT_GT(tally.refused, 0);
  EXPECT_LT(tally.slowest_refusal_ms, 5000);  // refused at once, not after a wait for a slot
  EXPECT_EQ(probe.failures(), 0);
  EXPECT_LT(probe.slowest_ms(), 1000);
  EXPECT_LT(peak_rss - start_rss, 512.0);
  EXPECT_TRUE(wait_idle(daemon));
  EXPECT_EQ(daemon.stop(), 0) << daemon.log();
}

// Sixteen 4 MiB prompts at once (under grpc.max_message_bytes, over scheduler.max_prompt_bytes)
// are refused naming the field, before tokenization, without memory piling up.
TEST(Overload, ConcurrentMultiMegabytePromptsAreRefusedBeforeTokenizing) {
  DaemonProcess daemon(daemon_config(kModel, {{"grpc", {{"max_message_bytes", 8 << 20}}}}));
  ASSERT_TRUE(daemon.wait_ready());
  const double start_rss = daemon.peak_rss_mib();
  HealthzProbe probe(daemon.http_port());
  constexpr int kCalls = 16;
  const std::string prompt(4 << 20, 'a');
  auto stub = v1::Inference::NewStub(own_channel(daemon));
  Tally tally;
  std::atomic<int> named_field{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < kCalls; ++i) {
    clients.emplace_back([&] {
      const StreamResult r = generate(*stub, greedy_request(prompt, 8), 60s);
      if (r.status.error_code() == grpc::StatusCode::INVALID_ARGUMENT &&
          r.status.error_message().rfind("prompt:", 0) == 0 &&
          r.status.error_message().find("scheduler.max_prompt_bytes") != std::string::npos) {
        named_field.fetch_add(1);
      } else {
        tally.count(r, 0ms);
      }
    });
  }
  for (std::thread& t : clients) t.join();
  probe.stop();
  const double peak_rss = daemon.peak_rss_mib();
  report("16 concurrent 4 MiB prompts", tally, peak_rss, start_rss, probe.slowest_ms());

  EXPECT_EQ(named_field.load(), kCalls) << tally.first_failure;
  EXPECT_EQ(probe.failures(), 0);
  EXPECT_LT(probe.slowest_ms(), 1000);
  // Sixteen prompts of 4 MiB are 64 MiB on the wire; a few copies each at most.
  EXPECT_LT(peak_rss - start_rss, 512.0);
  EXPECT_TRUE(generate(*daemon.inference(), greedy_request("The man", 4)).status.ok());
  EXPECT_EQ(daemon.stop(), 0) << daemon.log();
}

// Ten times the clients the daemon can hold (2 running + 2 queued), each sending again as soon
// as it has an answer, for HELIOS_OVERLOAD_SECONDS (20 s by default;
// scripts/overload_soak.sh runs 60 s).
TEST(Overload, SustainedOverloadKeepsServingAndProbing) {
  const char* env = std::getenv("HELIOS_OVERLOAD_SECONDS");
  const int seconds = env != nullptr ? std::max(1, std::atoi(env)) : 20;
  DaemonProcess daemon(daemon_config(
      kModel, {{"scheduler", {{"max_running_requests", 2}, {"max_queued_requests", 2}}}}));
  ASSERT_TRUE(daemon.wait_ready());
  const double start_rss = daemon.peak_rss_mib();
  HealthzProbe probe(daemon.http_port());
  constexpr int kClients = 40;
  auto stub = v1::Inference::NewStub(own_channel(daemon));
  const std::vector<std::string> prompts = test_prompts(8);
  Tally tally;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      for (int n = 0; std::chrono::steady_clock::now() < until; ++n) {
        const auto t0 = std::chrono::steady_clock::now();
        const StreamResult r =
            generate(*stub, greedy_request(prompts[(i + n) % prompts.size()], 32), 60s);
        tally.count(r, std::chrono::duration_cast<std::chrono::milliseconds>(
                           std::chrono::steady_clock::now() - t0));
        // A refused client retries after a short pause, as a client with backoff would.
        if (!r.status.ok()) std::this_thread::sleep_for(20ms);
      }
    });
  }
  for (std::thread& t : clients) t.join();
  probe.stop();
  const double peak_rss = daemon.peak_rss_mib();
  report("sustained overload, 40 clients for " + std::to_string(seconds) + " s", tally, peak_rss,
         start_rss, probe.slowest_ms());

  EXPECT_EQ(tally.failed, 0) << tally.first_failure;
  EXPECT_GT(tally.admitted, 0);
  EXPECT_GT(tally.refused, 0);
  EXPECT_LT(tally.slowest_refusal_ms, 5000);
  EXPECT_EQ(probe.failures(), 0);
  EXPECT_LT(probe.slowest_ms(), 1000);
  EXPECT_LT(peak_rss - start_rss, 512.0);
  EXPECT_TRUE(wait_idle(daemon));
  EXPECT_EQ(daemon.stop(), 0) << daemon.log();
}

}  // namespace
}  // namespace helios::testing
