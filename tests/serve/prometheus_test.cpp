// /metrics of the real daemon, as Prometheus' own tools see it: promtool's parser and linter,
// and a real Prometheus server scraping it on loopback.
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdlib>
#include <future>

#include "common/run_command.h"
#include "serve/daemon_process.h"
#include "serve/prometheus_server.h"

namespace helios::testing {
namespace {

using namespace std::chrono_literals;

// Some traffic so that every family has samples: streams, a cancel, a rejected request.
void exercise(const DaemonProcess& daemon) {
  for (const StreamResult& r : concurrent_streams(daemon, test_prompts(8), 16)) {
    ASSERT_TRUE(r.status.ok());
  }
  auto stub = daemon.inference();
  EXPECT_EQ(generate(*stub, greedy_request("", 4)).status.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST(Metrics, PromtoolAcceptsTheDaemonsMetrics) {
  DaemonProcess daemon(daemon_config("prose-micro"));
  ASSERT_TRUE(daemon.wait_ready());
  exercise(daemon);
  const std::string text = scrape(daemon);
  for (const char* family :
       {"helios_time_to_first_token_seconds_bucket", "helios_inter_token_latency_seconds_bucket",
        "helios_request_duration_seconds_bucket", "helios_queue_time_seconds_bucket",
        "helios_requests_running", "helios_requests_waiting", "helios_kv_blocks_capacity",
        "helios_kv_blocks_used", "helios_kv_usage_ratio", "helios_batch_size_bucket",
        "helios_prompt_tokens_total", "helios_generation_tokens_total",
        "helios_requests_finished_total{reason=\"length\"} 8", "helios_token_exits_total{",
        "helios_greedy_exits_total{", "helios_resident_weight_bytes{model=\"prose-micro\"}",
        "helios_loaded_layers{model=\"prose-micro\"} 4", "helios_requests_rejected_total{"}) {
    EXPECT_NE(text.find(family), std::string::npos) << family << " missing from:\n" << text;
  }
  // Energy: the CPU estimate off a GPU, charged for the work just done, and per token the
  // same figure over the tokens generated (one render computes both).
  const double joules = sample_value(text, R"(helios_energy_joules_total{source="cpu_estimate"})");
  const double per_token =
      sample_value(text, R"(helios_energy_joules_per_generated_token{source="cpu_estimate"})");
  const double tokens = sample_value(text, "helios_generation_tokens_total");
  EXPECT_EQ(tokens, 8 * 16);
  EXPECT_GT(joules, 0.0) << text;
  EXPECT_GT(per_token, 0.0) << text;
  EXPECT_NEAR(per_token, joules / tokens, 1e-6 * joules / tokens);
  // Scrapes of an idle daemon add next to nothing: the counter follows the meter, it does
  // not add the meter's whole reading again at every render.
  for (int i = 0; i < 5; ++i) scrape(daemon);
  const double later =
      sample_value(scrape(daemon), R"(helios_energy_joules_total{source="cpu_estimate"})");
  EXPECT_GE(later, joules);
  EXPECT_LT(later, 1.5 * joules);
  const CommandResult promtool = promtool_check(text);
  EXPECT_EQ(promtool.exit_code, 0) << promtool.output;
  EXPECT_EQ(promtool.output, "") << "promtool lint findings";

  httplib::Client client("127.0.0.1", daemon.http_port());
  EXPECT_EQ(client.Get("/healthz")->status, 200);
  EXPECT_EQ(client.Get("/readyz")->status, 200);
  EXPECT_EQ(daemon.stop(), 0) << daemon.log();
}

TEST(Metrics, PrometheusScrapesTheDaemon) {
  ASSERT_EQ(std::system("command -v prometheus > /dev/null"), 0)
      << "prometheus not found (Debian package prometheus)";
  DaemonProcess daemon(daemon_config("prose-micro"));
  ASSERT_TRUE(daemon.wait_ready());
  exercise(daemon);

  PrometheusServer prometheus(daemon.http_port());
  ASSERT_TRUE(prometheus.started()) << prometheus.start_output();

  // Ask Prometheus (not helios) for a helios metric until a scrape has landed.
  httplib::Client client = prometheus.client();
  std::string body;
  bool found = false;
  const auto until = std::chrono::steady_clock::now() + 60s;
  while (!found && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(250ms);
    const auto response =
        client.Get("/api/v1/query?query=helios_generation_tokens_total%7Bjob%3D%22helios%22%7D");
    if (!response || response->status != 200) continue;
    body = response->body;
    const auto json = nlohmann::json::parse(body, nullptr, false);
    if (json.is_discarded() || json.value("status", "") != "success") continue;
    const auto& result = json["data"]["result"];
    if (result.empty()) continue;
    found = true;
    EXPECT_EQ(result[0]["metric"]["__name__"], "helios_generation_tokens_total");
    EXPECT_EQ(std::stod(result[0]["value"][1].get<std::string>()), 8 * 16);
  }
  // The target is healthy from Prometheus' side too.
  const auto targets = client.Get("/api/v1/targets");
  EXPECT_TRUE(found) << "last answer: " << body << "\nprometheus log:\n" << prometheus.log();
  prometheus.stop();
  ASSERT_TRUE(targets);
  EXPECT_NE(targets->body.find("\"health\":\"up\""), std::string::npos) << targets->body;
  EXPECT_EQ(daemon.stop(), 0) << daemon.log();
}

}  // namespace
}  // namespace helios::testing
