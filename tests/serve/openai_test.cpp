// The OpenAI-compatible HTTP API against the real daemon on loopback: the official `openai` npm
// client's suite (tests/openai/client_test.mjs), the refusals as OpenAI error objects (401,
// 413, 404, 429), a chat through a ChatML template, and a client that disconnects.
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/run_command.h"
#include "serve/daemon_process.h"

namespace helios::testing {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

constexpr char kModel[] = "prose-micro";
constexpr char kKey[] = "test-key";

json openai_config(const json& openai = {}, const json& scheduler = {}) {
  json overrides = {{"openai", {{"port", 0}, {"api_keys", {kKey}}}},
                    {"scheduler", {{"priority_levels", 4}}}};
  for (const auto& [key, value] : openai.items()) overrides["openai"][key] = value;
  for (const auto& [key, value] : scheduler.items()) overrides["scheduler"][key] = value;
  return daemon_config(kModel, overrides);
}

httplib::Client client_of(const DaemonProcess& daemon) {
  httplib::Client client("127.0.0.1", daemon.openai_port());
  client.set_read_timeout(60, 0);
  client.set_bearer_token_auth(kKey);
  return client;
}

httplib::Result post(const DaemonProcess& daemon, const std::string& path, const json& body) {
  httplib::Client client = client_of(daemon);
  return client.Post(path.c_str(), body.dump(), "application/json");
}

// The error object of an OpenAI error response.
json error_of(const httplib::Result& result) {
  EXPECT_TRUE(result);
  if (!result) return json();
  const json body = json::parse(result->body, nullptr, false);
  EXPECT_TRUE(body.is_object() && body.contains("error")) << result->body;
  return body.is_object() ? body.value("error", json()) : json();
}

double metric(const DaemonProcess& daemon, const std::string& series) {
  return sample_value(scrape(daemon), series);
}

TEST(OpenAiApi, TheOfficialNodeClientPassesItsSuite) {
  DaemonProcess daemon(openai_config());
  ASSERT_TRUE(daemon.wait_ready());
  const std::string script = std::string(HELIOS_SOURCE_DIR) + "/tests/openai/client_test.mjs";
  const CommandResult run = run_command(
      "node '" + script + "' --base-url http://127.0.0.1:" + std::to_string(daemon.openai_port()) +
      "/v1 --api-key " + kKey + " --model " + kModel);
  std::cout << run.output;
  EXPECT_EQ(run.exit_code, 0) << run.output;
  // The suite aborts a stream after two chunks: the engine cancelled it and freed its blocks.
  EXPECT_GE(metric(daemon, R"(helios_requests_finished_total{reason="cancelled"})"), 1.0);
  EXPECT_GT(metric(daemon, R"(helios_openai_responses_total{endpoint="/v1/completions",status="200"})"), 0.0);
  EXPECT_GT(metric(daemon, R"(helios_openai_responses_total{endpoint="/v1/completions",status="400"})"), 0.0);
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (daemon.status().kv_blocks_used() != 0 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(daemon.status().kv_blocks_used(), 0u);
  EXPECT_EQ(daemon.stop(), 0) << daemon.log();
}

TEST(OpenAiApi, RefusalsAreOpenAiErrorObjectsWithTheirStatus) {
  DaemonProcess daemon(openai_config({{"max_body_bytes", 4096}}));
  ASSERT_TRUE(daemon.wait_ready());
  const json completion = {{"model", kModel}, {"prompt", "The"}, {"max_tokens", 2}};

  {  // No key, then a wrong one.
    httplib::Client client("127.0.0.1", daemon.openai_port());
    auto result = client.Post("/v1/completions", completion.dump(), "application/json");
    ASSERT_TRUE(result);
    EXPECT_EQ(result->status, 401);
    EXPECT_EQ(error_of(result).value("code", ""), "invalid_api_key");
    client.set_bearer_token_auth("wrong");
    result = client.Get("/v1/models");
    ASSERT_TRUE(result);
    EXPECT_EQ(result->status, 401);
  }
  {  // Not JSON; not an object; a body past openai.max_body_bytes; an unknown route.
    httplib::Client client = client_of(daemon);
    auto result = client.Post("/v1/completions", "{\"model\": ", "application/json");
    ASSERT_TRUE(result);
    EXPECT_EQ(result->status, 400);
    EXPECT_EQ(error_of(result).value("type", ""), "invalid_request_error");
    result = client.Post("/v1/completions", "[1, 2]", "application/json");
    ASSERT_TRUE(result);
    EXPECT_EQ(result->status, 400);
    json big = completion;
    big["prompt"] = std::string(8192, 'a');
    result = client.Post("/v1/completions", big.dump(), "application/json");
    ASSERT_TRUE(result);
    EXPECT_EQ(result->status, 413);
    EXPECT_NE(error_of(result).value("message", "").find("openai.max_body_bytes"), std::string::npos);
    result = client.Get("/v1/nothing");
    ASSERT_TRUE(result);
    EXPECT_EQ(result->status, 404);
    EXPECT_TRUE(error_of(result).is_object());
    result = client.Get("/v1/models/no-such-model");
    ASSERT_TRUE(result);
    EXPECT_EQ(result->status, 404);
    EXPECT_EQ(error_of(result).value("code", ""), "model_not_found");
    result = client.Get((std::string("/v1/models/") + kModel).c_str());
    ASSERT_TRUE(result);
    EXPECT_EQ(result->status, 200);
  }
  {  // A field the validation shares with gRPC names itself; an invalid UTF-8 prompt too.
    json body = completion;
    body["stop"] = json::array({"a", ""});
    auto result = post(daemon, "/v1/completions", body);
    ASSERT_TRUE(result);
    EXPECT_EQ(result->status, 400);
    EXPECT_EQ(error_of(result).value("param", ""), "stop");
    EXPECT_NE(error_of(result).value("message", "").find("stop[1]"), std::string::npos);
    body = completion;
    body["priority"] = 4;  // priority_levels is 4: 0..3
    result = post(daemon, "/v1/completions", body);
    ASSERT_TRUE(result);
    EXPECT_EQ(result->status, 400);
    EXPECT_EQ(error_of(result).value("param", ""), "priority");
  }
  EXPECT_EQ(daemon.stop(), 0) << daemon.log();
}

TEST(OpenAiApi, AFullQueueAnswers429AndTheOthersComplete) {
  // One sequence runs at a time and one more may wait per class: a burst of 6 is mostly refused.
  DaemonProcess daemon(openai_config({}, {{"max_running_requests", 1}, {"max_queued_requests", 1}}));
  ASSERT_TRUE(daemon.wait_ready());
  std::vector<std::future<std::pair<int, json>>> calls;
  for (int i = 0; i < 6; ++i) {
    calls.push_back(std::async(std::launch::async, [&daemon, i] {
      const json body = {{"model", kModel}, {"prompt", "Once upon a time " + std::to_string(i)},
                         {"max_tokens", 200}, {"temperature", 0}};
      const auto result = post(daemon, "/v1/completions", body);
      if (!result) return std::make_pair(-1, json(httplib::to_string(result.error())));
      return std::make_pair(result->status, json::parse(result->body, nullptr, false));
    }));
  }
  int ok = 0, refused = 0;
  for (auto& call : calls) {
    const auto [status, body] = call.get();
    if (status == 200) {
      ++ok;
      EXPECT_EQ(body["choices"][0].value("finish_reason", ""), "length");
    } else {
      ASSERT_EQ(status, 429) << body.dump();
      ++refused;
      EXPECT_EQ(body["error"].value("code", ""), "queue_full");
      EXPECT_NE(body["error"].value("message", "").find("scheduler.max_queued_requests"),
                std::string::npos);
    }
  }
  EXPECT_GE(ok, 1);
  EXPECT_GE(refused, 1);
  EXPECT_EQ(metric(daemon, R"(helios_openai_responses_total{endpoint="/v1/completions",status="429"})"),
            refused);
  EXPECT_EQ(daemon.stop(), 0) << daemon.log();
}

TEST(OpenAiApi, AChatIsRenderedThroughTheModelsChatMLTemplate) {
  // The micro model with a ChatML chat_template beside it.
  ScratchDir dir("chatml");
  const auto model = dir.path() / "chat-micro";
  std::filesystem::create_directories(model);
  for (const auto& entry : std::filesystem::directory_iterator(kMicroZoo + "/" + kModel)) {
    std::filesystem::create_symlink(entry.path(), model / entry.path().filename());
  }
  std::ofstream(model / "tokenizer_config.json") << json{
      {"chat_template",
       "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"}}
                                                        .dump();
  json config = openai_config();
  config["model"]["path"] = model.string();
  DaemonProcess daemon(config);
  ASSERT_TRUE(daemon.wait_ready());
  const json body = {{"model", "chat-micro"},
                     {"messages", {{{"role", "system"}, {"content", "Be brief."}},
                                   {{"role", "user"}, {"content", "Tell me a story."}}}},
                     {"max_tokens", 8},
                     {"temperature", 0}};
  auto result = post(daemon, "/v1/chat/completions", body);
  ASSERT_TRUE(result);
  ASSERT_EQ(result->status, 200) << result->body;
  const json reply = json::parse(result->body);
  EXPECT_EQ(reply.value("object", ""), "chat.completion");
  EXPECT_EQ(reply["choices"][0]["message"].value("role", ""), "assistant");
  EXPECT_TRUE(reply["choices"][0]["message"]["content"].is_string());
  // The prompt is the rendered conversation: BOS plus its bytes.
  const std::string rendered =
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nTell me a story.<|im_end|>\n"
      "<|im_start|>assistant\n";
  EXPECT_EQ(reply["usage"].value("prompt_tokens", 0), static_cast<int>(rendered.size()) + 1);

  json bad = body;
  bad["messages"] = {{{"role", "tool"}, {"content", "x"}}};
  result = post(daemon, "/v1/chat/completions", bad);
  ASSERT_TRUE(result);
  EXPECT_EQ(result->status, 400);
  EXPECT_EQ(error_of(result).value("param", ""), "messages");
  EXPECT_EQ(daemon.stop(), 0) << daemon.log();
}

TEST(OpenAiApi, WhileDrainingNewRequestsGet503AndInFlightOnesFinish) {
  DaemonProcess daemon(openai_config({}, {{"max_running_requests", 2}}));
  ASSERT_TRUE(daemon.wait_ready());
  // Seconds of work: 16 prompts x 200 tokens, two at a time.
  auto in_flight = std::async(std::launch::async, [&daemon] {
    const json body = {{"model", kModel},
                       {"prompt", std::vector<std::string>(16, "It was a dark and stormy night")},
                       {"max_tokens", 200}};
    return post(daemon, "/v1/completions", body);
  });
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (daemon.status().running_requests() == 0 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(5ms);
  }
  ::kill(daemon.pid(), SIGTERM);
  // Draining once /readyz says so.
  httplib::Client probe("127.0.0.1", daemon.http_port());
  while (std::chrono::steady_clock::now() < until) {
    const auto ready = probe.Get("/readyz");
    if (ready && ready->status == 503) break;
    std::this_thread::sleep_for(5ms);
  }
  const auto refused = post(daemon, "/v1/completions",
                            {{"model", kModel}, {"prompt", "late"}, {"max_tokens", 2}});
  ASSERT_TRUE(refused) << httplib::to_string(refused.error());
  EXPECT_EQ(refused->status, 503);
  EXPECT_EQ(error_of(refused).value("type", ""), "service_unavailable");
  const auto finished = in_flight.get();
  ASSERT_TRUE(finished);
  EXPECT_EQ(finished->status, 200) << finished->body;
  EXPECT_EQ(json::parse(finished->body)["choices"].size(), 16u);
  EXPECT_EQ(daemon.wait_exit(), 0) << daemon.log();
}

// Sends `request` on a raw connection and closes it after `after` without reading.
void send_and_hang_up(int port, const std::string& request, std::chrono::milliseconds after) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  ASSERT_EQ(::send(fd, request.data(), request.size(), 0), static_cast<ssize_t>(request.size()));
  std::this_thread::sleep_for(after);
  ::close(fd);
}

TEST(OpenAiApi, AClientThatHangsUpHasItsRequestsCancelled) {
  DaemonProcess daemon(openai_config({}, {{"max_running_requests", 4}}));
  ASSERT_TRUE(daemon.wait_ready());
  // 64 prompts x 200 tokens, four at a time: about a second of work on two cores; the client
  // leaves after 100 ms, so most never start (this machine finished 36 of 64 in 300 ms).
  for (const bool stream : {false, true}) {
    const double cancelled_before =
        metric(daemon, R"(helios_requests_finished_total{reason="cancelled"})");
    const json body = {{"model", kModel},
                       {"prompt", std::vector<std::string>(64, "It was a dark and stormy night")},
                       {"max_tokens", 200},
                       {"stream", stream}};
    const std::string payload = body.dump();
    const std::string request = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                "Authorization: Bearer test-key\r\n"
                                "Content-Type: application/json\r\nContent-Length: " +
                                std::to_string(payload.size()) + "\r\n\r\n" + payload;
    const auto t0 = std::chrono::steady_clock::now();
    send_and_hang_up(daemon.openai_port(), request, 100ms);
    const auto until = t0 + 10s;
    while (daemon.status().running_requests() + daemon.status().waiting_requests() > 0 &&
           std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(10ms);
    }
    const v1::GetStatusResponse status = daemon.status();
    EXPECT_EQ(status.running_requests() + status.waiting_requests(), 0u) << (stream ? "stream" : "non-stream");
    EXPECT_EQ(status.kv_blocks_used(), 0u);
    // Most of the 64 never ran to their end.
    EXPECT_GE(metric(daemon, R"(helios_requests_finished_total{reason="cancelled"})") - cancelled_before,
              32.0)
        << (stream ? "stream" : "non-stream");
  }
  EXPECT_EQ(daemon.stop(), 0) << daemon.log();
}

}  // namespace
}  // namespace helios::testing
