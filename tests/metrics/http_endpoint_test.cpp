#include "helios/metrics/http_endpoint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

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

// A raw TCP connection to the endpoint, for requests no well-behaved client sends.
class RawConnection {
 public:
  explicit RawConnection(int port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  }
  ~RawConnection() { ::close(fd_); }
  bool connected() const { return connected_; }
  bool send(std::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      bytes.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  // What the server sent until it closed or paused for `timeout`.
  std::string receive(std::chrono::seconds timeout) {
    timeval tv{.tv_sec = static_cast<time_t>(timeout.count()), .tv_usec = 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    std::string out;
    char buffer[4096];
    ssize_t n = 0;
    while ((n = ::recv(fd_, buffer, sizeof(buffer), 0)) > 0) out.append(buffer, n);
    closed_ = n == 0;
    return out;
  }
  bool closed() const { return closed_; }  // by the server, as of the last receive()

 private:
  int fd_;
  bool connected_ = false;
  bool closed_ = false;
};

// The peak resident set of this process since the last reset_peak_rss(), in bytes.
int64_t peak_rss() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return -1;
}
void reset_peak_rss() { std::ofstream("/proc/self/clear_refs") << "5"; }

// Twelve clients that send half a request line and hold their connections, and one that posts
// a 256 MiB body, must neither keep /healthz waiting nor have the body buffered.
TEST_F(HttpEndpointTest, SlowClientsAndALargeBodyNeitherStallProbesNorGrowMemory) {
  const int port = endpoint_.start("127.0.0.1", 0);
  std::vector<std::unique_ptr<RawConnection>> slow;
  for (int i = 0; i < 12; ++i) {
    slow.push_back(std::make_unique<RawConnection>(port));
    ASSERT_TRUE(slow.back()->connected());
    ASSERT_TRUE(slow.back()->send("GET /metr"));
  }
  reset_peak_rss();
  const int64_t peak_before = peak_rss();
  constexpr int64_t kBodyBytes = int64_t{256} << 20;
  std::string post_response;
  std::thread poster([&] {
    RawConnection post(port);
    std::string head = "POST /metrics HTTP/1.1\r\nHost: helios\r\nContent-Length: ";
    head += std::to_string(kBodyBytes);
    head += "\r\n\r\n";
    if (!post.send(head)) return;
    const std::string chunk(1 << 20, 'x');
    for (int64_t sent = 0; sent < kBodyBytes && post.send(chunk);) sent += chunk.size();
    post_response = post.receive(std::chrono::seconds(5));
  });

  // A probe queued behind the slow clients would wait at least until they are cut off (the
  // 2 s read timeout): the bound below is that, and the client's own timeouts are wider so a
  // loaded machine's scheduling delays show as a latency, not as a failed probe.
  constexpr auto kStalled = std::chrono::seconds(2);
  httplib::Client probe("127.0.0.1", port);
  probe.set_connection_timeout(5, 0);
  probe.set_read_timeout(5, 0);
  std::chrono::milliseconds slowest{0};
  for (int i = 0; i < 10; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto res = probe.Get("/healthz");
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - t0);
    slowest = std::max(slowest, took);
    // EXPECT, not ASSERT: the poster thread must be joined whatever happens.
    EXPECT_TRUE(res) << "probe " << i << ": " << httplib::to_string(res.error());
    if (res) EXPECT_EQ(res->status, 200);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  poster.join();
  EXPECT_LT(slowest, kStalled);
  EXPECT_THAT(post_response, StartsWith("HTTP/1.1 413"));
  const int64_t grown = peak_rss() - peak_before;
  EXPECT_LT(grown, int64_t{32} << 20) << "peak RSS grew by " << (grown >> 20) << " MiB";
  RecordProperty("max_healthz_latency_ms", static_cast<int>(slowest.count()));
  RecordProperty("peak_rss_growth_mib", static_cast<int>(grown >> 20));

  // A slow client is cut off once it has been silent for the read timeout.
  slow.front()->receive(std::chrono::seconds(10));
  EXPECT_TRUE(slow.front()->closed());
}

// A chunked body has no length to check up front: it is streamed into nothing, not buffered.
TEST_F(HttpEndpointTest, ChunkedBodiesAreDroppedNotBuffered) {
  const int port = endpoint_.start("127.0.0.1", 0);
  reset_peak_rss();
  const int64_t peak_before = peak_rss();
  RawConnection post(port);
  ASSERT_TRUE(post.send("POST /healthz HTTP/1.1\r\nHost: helios\r\n"
                        "Transfer-Encoding: chunked\r\n\r\n"));
  const std::string data(1 << 20, 'x');
  const std::string chunk = "100000\r\n" + data + "\r\n";
  for (int i = 0; i < 128; ++i) ASSERT_TRUE(post.send(chunk));
  ASSERT_TRUE(post.send("0\r\n\r\n"));
  const std::string response = post.receive(std::chrono::seconds(5));
  EXPECT_THAT(response, StartsWith("HTTP/1.1 404"));
  const int64_t grown = peak_rss() - peak_before;
  EXPECT_LT(grown, int64_t{32} << 20) << "peak RSS grew by " << (grown >> 20) << " MiB";
}

}  // namespace
}  // namespace helios::metrics
