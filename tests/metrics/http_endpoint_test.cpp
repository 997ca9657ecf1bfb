#include "helios/metrics/http_endpoint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <string>

#include "common/expect_error.h"
#include "helios/metrics/registry.h"

namespace helios::metrics {
namespace {

using helios::testing::expect_error;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// An endpoint over a real registry, with liveness and readiness the test can flip.
class HttpEndpointTest : public ::testing::Test {
 protected:
  HttpEndpointTest()
      : endpoint_(HttpEndpoint::Handlers{
            .metrics = [this] { return registry_.render(); },
            .live = [this] { return live_.load(); },
            .not_ready =
                [this] {
                  std::lock_guard lock(mutex_);
                  return not_ready_;
                },
        }) {
    registry_.counter("requests_total", "Requests.").get().inc(3);
  }

  void set_not_ready(const std::string& reason) {
    std::lock_guard lock(mutex_);
    not_ready_ = reason;
  }

  Registry registry_;
  std::atomic<bool> live_{true};
  std::mutex mutex_;
  std::string not_ready_;
  HttpEndpoint endpoint_;
};

TEST_F(HttpEndpointTest, ServesMetricsHealthAndReadiness) {
  const int port = endpoint_.start("127.0.0.1", 0);
  ASSERT_GT(port, 0);
  EXPECT_EQ(endpoint_.port(), port);
  httplib::Client client("127.0.0.1", port);

  auto res = client.Get("/metrics");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_THAT(res->get_header_value("Content-Type"), StartsWith("text/plain; version=0.0.4"));
  EXPECT_EQ(res->body, registry_.render());
  EXPECT_THAT(res->body, HasSubstr("\nrequests_total 3\n"));

  res = client.Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "ok\n");
  live_ = false;
  res = client.Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 503);

  res = client.Get("/readyz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "ready\n");
  set_not_ready("loading model tiny");
  res = client.Get("/readyz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 503);
  EXPECT_EQ(res->body, "loading model tiny\n");

  res = client.Get("/nope");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
  res = client.Post("/metrics", "", "text/plain");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
}

TEST_F(HttpEndpointTest, HeadGivesHeadersWithoutBody) {
  const int port = endpoint_.start("127.0.0.1", 0);
  httplib::Client client("127.0.0.1", port);
  auto res = client.Head("/metrics");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_THAT(res->get_header_value("Content-Type"), StartsWith("text/plain; version=0.0.4"));
  EXPECT_EQ(res->body, "");
  res = client.Head("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  set_not_ready("draining");
  res = client.Head("/readyz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 503);
}

TEST_F(HttpEndpointTest, ThrowingHandlerGivesA500WithTheMessage) {
  registry_.on_collect([] { throw std::runtime_error("collector broke"); });
  const int port = endpoint_.start("127.0.0.1", 0);
  httplib::Client client("127.0.0.1", port);
  auto res = client.Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 500);
  EXPECT_THAT(res->body, HasSubstr("collector broke"));
  res = client.Get("/healthz");  // still serving
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

TEST(HttpEndpoint, MissingHandlerGivesA500) {
  HttpEndpoint endpoint(HttpEndpoint::Handlers{.metrics = [] { return std::string("m 1\n"); }});
  const int port = endpoint.start("127.0.0.1", 0);
  httplib::Client client("127.0.0.1", port);
  auto res = client.Get("/readyz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 500);
  EXPECT_THAT(res->body, HasSubstr("no handler"));
  res = client.Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->body, "m 1\n");
}

TEST_F(HttpEndpointTest, BindFailureNamesTheAddress) {
  const int port = endpoint_.start("127.0.0.1", 0);
  // A second server on a taken port must fail rather than share it (httplib's default
  // SO_REUSEPORT would let it).
  HttpEndpoint other(HttpEndpoint::Handlers{});
  expect_error([&] { other.start("127.0.0.1", port); }, ErrorCode::kUnavailable,
               {"127.0.0.1:" + std::to_string(port)});
  // 192.0.2.0/24 is reserved for documentation: never a local address.
  expect_error([&] { other.start("192.0.2.1", 0); }, ErrorCode::kUnavailable, {"192.0.2.1:0"});
  expect_error([&] { other.start("127.0.0.1", 70000); }, ErrorCode::kInvalidArgument, {"70000"});
  other.stop();  // after a failed start: a no-op
  expect_error([&] { endpoint_.start("127.0.0.1", 0); }, ErrorCode::kFailedPrecondition,
               {"already serving"});
}

TEST_F(HttpEndpointTest, StopIsIdempotentAndAllowsARestart) {
  endpoint_.stop();  // never started
  const int first = endpoint_.start("127.0.0.1", 0);
  endpoint_.stop();
  endpoint_.stop();
  EXPECT_EQ(endpoint_.port(), 0);
  EXPECT_FALSE(httplib::Client("127.0.0.1", first).Get("/healthz"));

  const int second = endpoint_.start("127.0.0.1", 0);
  auto res = httplib::Client("127.0.0.1", second).Get("/healthz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  // Straight after start(): the stop must not be lost in the listen thread's start-up.
  endpoint_.stop();
  for (int i = 0; i < 5; ++i) {
    endpoint_.start("127.0.0.1", 0);
    endpoint_.stop();
  }
}

TEST_F(HttpEndpointTest, StopDoesNotWaitLongForAnIdleKeepAliveConnection) {
  const int port = endpoint_.start("127.0.0.1", 0);
  httplib::Client client("127.0.0.1", port);
  client.set_keep_alive(true);
  ASSERT_TRUE(client.Get("/healthz"));
  ASSERT_TRUE(client.Get("/healthz"));
  const auto started = std::chrono::steady_clock::now();
  endpoint_.stop();
  const auto took = std::chrono::steady_clock::now() - started;
  EXPECT_LT(took, std::chrono::seconds(3));
}

}  // namespace
}  // namespace helios::metrics
