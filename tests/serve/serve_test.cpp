// The real `helios serve` binary on a loopback port, driven through gRPC as a client would.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/impl/codegen/client_unary_call.h>
#include <grpcpp/impl/codegen/sync_stream.h>
#include <google/protobuf/unknown_field_set.h>

#include <future>
#include <optional>

#include "grpc/health/v1/health.grpc.pb.h"
#include "serve/daemon_process.h"

namespace helios::testing {
namespace {

using namespace std::chrono_literals;

constexpr char kModel[] = "prose-micro";

// Polls GetStatus until the KV cache is empty and nothing runs.
bool wait_idle(const DaemonProcess& daemon, std::chrono::milliseconds timeout = 5000ms) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    const v1::GetStatusResponse s = daemon.status();
    if (s.kv_blocks_used() == 0 && s.running_requests() == 0 && s.waiting_requests() == 0) {
      return true;
    }
    std::this_thread::sleep_for(5ms);
  }
  return false;
}

// One-at-a-time results through Complete, the reference for everything batched.
std::vector<std::string> sequential_texts(const DaemonProcess& daemon,
                                          const std::vector<std::string>& prompts,
                                          uint32_t max_tokens) {
  auto stub = daemon.inference();
  std::vector<std::string> texts;
  for (const std::string& prompt : prompts) {
    grpc::ClientContext context;
    v1::CompleteResponse response;
    const grpc::Status status =
        stub->Complete(&context, greedy_request(prompt, max_tokens), &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.finish_reason(), v1::LENGTH);
    EXPECT_EQ(response.usage().completion_tokens(), max_tokens);
    texts.push_back(response.text());
  }
  return texts;
}

TEST(Serve, SixtyFourConcurrentStreamsMatchOneAtATime) {
  DaemonProcess daemon(daemon_config(kModel));
  ASSERT_TRUE(daemon.wait_ready());
  const std::vector<std::string> prompts = test_prompts(64);
  ASSERT_EQ(prompts.size(), 64u);
  constexpr uint32_t kTokens = 24;
  const std::vector<std::string> expected = sequential_texts(daemon, prompts, kTokens);
  const uint64_t steps_before = daemon.status().steps();
  const std::vector<StreamResult> results = concurrent_streams(daemon, prompts, kTokens);
  const uint64_t steps = daemon.status().steps() - steps_before;
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE("prompt " + std::to_string(i));
    ASSERT_TRUE(results[i].status.ok()) << results[i].status.error_message();
    EXPECT_EQ(results[i].text, expected[i]);
    EXPECT_EQ(results[i].finish, v1::LENGTH);
    EXPECT_EQ(results[i].usage.completion_tokens(), kTokens);
    EXPECT_EQ(results[i].token_ids.size(), kTokens);
    EXPECT_GE(results[i].messages, 2);  // streamed, not one blob
  }
  // The batch really was shared: one at a time took 64 x 24 steps; batched, the 64 streams
  // need about 24 decode steps plus prefill steps, more if their arrivals straggle.
  EXPECT_LT(steps, 400u);
  EXPECT_TRUE(wait_idle(daemon));
  EXPECT_EQ(daemon.stop(), 0) << daemon.log();
}

TEST(Serve, PreemptionUnderASmallPoolKeepsEveryOutput) {
  // A pool a little over one full context (256 tokens = 16 blocks): 16 sequences of ~90 tokens
  // cannot all fit, so the newest are preempted and recomputed.
  DaemonProcess daemon(daemon_config(
      kModel, {{"memory", {{"budget_mib", 1.2}, {"kv_block_size", 16}}}}));
  ASSERT_TRUE(daemon.wait_ready());
  const v1::GetStatusResponse before = daemon.status();
  ASSERT_LT(before.kv_blocks_total() * 16, 16u * 90u) << "pool too large to force preemption";
  const std::vector<std::string> prompts = test_prompts(16, 40);
  constexpr uint32_t kTokens = 48;
  const std::vector<std::string> expected = sequential_texts(daemon, prompts, kTokens);
  const std::vector<StreamResult> results = concurrent_streams(daemon, prompts, kTokens);
  uint32_t preempted = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE("prompt " + std::to_string(i));
    ASSERT_TRUE(results[i].status.ok()) << results[i].status.error_message();
    EXPECT_EQ(results[i].text, expected[i]);
    EXPECT_EQ(results[i].finish, v1::LENGTH);
    preempted += results[i].usage.preemptions();
  }
  EXPECT_GT(preempted, 0u) << "no request was preempted: the test proves nothing";
  EXPECT_GT(daemon.status().preemptions(), 0u);
  EXPECT_TRUE(wait_idle(daemon));
  EXPECT_EQ(daemon.stop(), 0) << daemon.log();
}

TEST(Serve, CancelMidStreamReturnsKvToZero) {
  DaemonProcess daemon(daemon_config(kModel));
  ASSERT_TRUE(daemon.wait_ready());
  auto stub = daemon.inference();
  grpc::ClientContext context;
  auto reader = stub->Generate(&context, greedy_request(test_prompts(1)[0], 190));
  v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));
  EXPECT_GT(daemon.status().kv_blocks_used(), 0u);
  context.TryCancel();
  while (reader->Read(&response)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(wait_idle(daemon)) << "KV blocks still held after the cancel";
  // The server carries on serving.
  const StreamResult after = generate(*stub, greedy_request("The man", 4));
  EXPECT_TRUE(after.status.ok());
  EXPECT_EQ(daemon.stop(), 0) << daemon.log();
}

TEST(Serve, DeadlineExceededFreesTheRequest) {
  DaemonProcess daemon(daemon_config(kModel, {{"scheduler", {{"max_running_requests", 1}}}}));
  ASSERT_TRUE(daemon.wait_ready());
  auto stub = daemon.inference();
  // Eight long requests hold the only batch slot one after another, so the last, queued
  // behind them all, waits past its deadline however fast a step is (190 tokens of the micro
  // model take about 20 ms on the fused CPU step).
  std::vector<std::future<StreamResult>> first;
  for (const std::string& prompt : test_prompts(8)) {
    first.push_back(std::async(std::launch::async, [&stub, prompt] {
      return generate(*stub, greedy_request(prompt, 190));
    }));
  }
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (daemon.status().waiting_requests() < 6 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(1ms);
  }
  const StreamResult late = generate(*stub, greedy_request("The man", 100), 30ms);
  EXPECT_EQ(late.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  for (auto& f : first) EXPECT_TRUE(f.get().status.ok());
  EXPECT_TRUE(wait_idle(daemon));
  EXPECT_EQ(daemon.stop(), 0) << daemon.log();
}

TEST(Serve, FullQueueRejectsAtOnce) {
  DaemonProcess daemon(daemon_config(
      kModel, {{"scheduler", {{"max_running_requests", 1}, {"max_queued_requests", 2}}}}));
  ASSERT_TRUE(daemon.wait_ready());
  auto stub = daemon.inference();
  const std::vector<std::string> prompts = test_prompts(3);
  // One request runs and two wait while the probe goes out. The running one may finish before
  // the other two are queued (190 tokens of the micro model take tens of milliseconds), so the
  // scene is set up again when the queue never showed two waiting.
  struct Probe {
    StreamResult rejected;
    std::chrono::steady_clock::duration took{};
  };
  const auto probe_at_full_queue = [&]() -> std::optional<Probe> {
    std::vector<std::future<StreamResult>> accepted;
    const auto until = std::chrono::steady_clock::now() + 5s;
    accepted.push_back(std::async(std::launch::async, [&] {
      return generate(*stub, greedy_request(prompts[0], 190));
    }));
    while (daemon.status().running_requests() < 1 && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(1ms);
    }
    for (int i = 1; i <= 2; ++i) {
      accepted.push_back(std::async(std::launch::async, [&, i] {
        return generate(*stub, greedy_request(prompts[i], 190));
      }));
    }
    while (daemon.status().waiting_requests() < 2 && daemon.status().running_requests() > 0 &&
           std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(1ms);
    }
    std::optional<Probe> probe;
    if (daemon.status().waiting_requests() == 2) {
      const auto t0 = std::chrono::steady_clock::now();
      probe = Probe{generate(*stub, greedy_request("The man", 4))};
      probe->took = std::chrono::steady_clock::now() - t0;
    }
    for (auto& f : accepted) EXPECT_TRUE(f.get().status.ok());
    return probe;
  };
  std::optional<Probe> probe;
  for (int attempt = 0; attempt < 5 && !probe; ++attempt) probe = probe_at_full_queue();
  ASSERT_TRUE(probe.has_value()) << "never saw two requests waiting";
  EXPECT_EQ(probe->rejected.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(probe->rejected.status.error_message().find("max_queued_requests"), std::string::npos)
      << probe->rejected.status.error_message();
  EXPECT_LT(probe->took, 2s);  // refused at once, not after a wait
  EXPECT_EQ(daemon.stop(), 0) << daemon.log();
}

// A full queue and an oversized prompt are refused before the prompt is tokenized: at a full
// queue even a prompt too long for the model gets RESOURCE_EXHAUSTED, and a prompt past
// scheduler.max_prompt_bytes is refused by its size in bytes.
TEST(Serve, CheapRefusalsComeBeforeTokenization) {
  DaemonProcess daemon(daemon_config(
      kModel, {{"scheduler",
                {{"max_running_requests", 1}, {"max_queued_requests", 1}, {"max_prompt_bytes", 1000}}}}));
  ASSERT_TRUE(daemon.wait_ready());
  auto stub = daemon.inference();
  const std::vector<std::string> prompts = test_prompts(2);
  // One request runs and one waits while the probe goes out; on a loaded machine the running
  // one may finish first, so the scene is set up again (a drained queue shows as waiting < 1).
  const auto probe_at_full_queue = [&]() -> std::optional<grpc::StatusCode> {
    std::vector<std::future<StreamResult>> accepted;
    const auto until = std::chrono::steady_clock::now() + 10s;
    accepted.push_back(std::async(std::launch::async, [&] {
      return generate(*stub, greedy_request(prompts[0], 190));
    }));
    while (daemon.status().running_requests() < 1 && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(1ms);
    }
    accepted.push_back(std::async(std::launch::async, [&] {
      return generate(*stub, greedy_request(prompts[1], 190));
    }));
    while (daemon.status().waiting_requests() < 1 && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(1ms);
    }
    std::optional<grpc::StatusCode> code;
    if (daemon.status().waiting_requests() == 1) {
      // 300 bytes: within max_prompt_bytes, over the model's 256-token context once tokenized.
      code = generate(*stub, greedy_request(std::string(300, 'a'), 4)).status.error_code();
    }
    for (auto& f : accepted) EXPECT_TRUE(f.get().status.ok());
    return code;
  };
  std::optional<grpc::StatusCode> at_full_queue;
  for (int attempt = 0; attempt < 3 && !at_full_queue; ++attempt) {
    at_full_queue = probe_at_full_queue();
  }
  ASSERT_TRUE(at_full_queue.has_value()) << "never saw a request waiting";
  EXPECT_EQ(*at_full_queue, grpc::StatusCode::RESOURCE_EXHAUSTED);

  const StreamResult too_big = generate(*stub, greedy_request(std::string(1001, 'a'), 4));
  EXPECT_EQ(too_big.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(too_big.status.error_message(),
            "prompt: 1001 bytes exceed the limit of 1000 (scheduler.max_prompt_bytes)");
  const StreamResult too_long = generate(*stub, greedy_request(std::string(300, 'a'), 4));
  EXPECT_EQ(too_long.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(too_long.status.error_message().rfind("prompt: 301 tokens", 0), 0u)
      << too_long.status.error_message();
  // A request id with control characters would forge lines in a text log.
  v1::GenerateRequest forged = greedy_request("The man", 4);
  forged.set_request_id("r1\n[2026-01-01 00:00:00.000] [info] forged");
  const StreamResult control = generate(*stub, forged);
  EXPECT_EQ(control.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(control.status.error_message().rfind("request_id:", 0), 0u)
      << control.status.error_message();
  EXPECT_EQ(daemon.stop(), 0) << daemon.log();
}

// Each bad field: INVALID_ARGUMENT whose message names it, for both RPC shapes.
TEST(Serve, BadFieldsAreInvalidArgumentNamingTheField) {
  DaemonProcess daemon(daemon_config(kModel, {{"scheduler", {{"max_output_tokens", 100}}}}));
  ASSERT_TRUE(daemon.wait_ready());
  auto stub = daemon.inference();
  struct Case {
    std::string name;
    std::function<void(v1::GenerateRequest&)> mutate;
    std::string field;
  };
  const std::vector<Case> cases = {
      {"empty prompt", [](auto& r) { r.set_prompt(""); }, "prompt"},
      {"invalid UTF-8", [](auto& r) { r.set_prompt(std::string("ab\xff\xfe", 4)); }, "prompt"},
      {"max_tokens 0", [](auto& r) { r.set_max_tokens(0); }, "max_tokens"},
      {"max_tokens over the limit", [](auto& r) { r.set_max_tokens(101); }, "max_tokens"},
      {"negative temperature", [](auto& r) { r.set_temperature(-0.5f); }, "temperature"},
      {"top_p 0", [](auto& r) { r.set_top_p(0.0f); }, "top_p"},
      {"top_p above 1", [](auto& r) { r.set_top_p(1.5f); }, "top_p"},
      {"prompt over the context", [](auto& r) { r.set_prompt(std::string(300, 'a')); }, "prompt"},
      {"empty stop string", [](auto& r) { r.add_stop(""); }, "stop[0]"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    v1::GenerateRequest request = greedy_request("The man", 8);
    c.mutate(request);
    const StreamResult streamed = generate(*stub, request);
    EXPECT_EQ(streamed.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << streamed.status.error_message();
    EXPECT_EQ(streamed.status.error_message().rfind(c.field + ":", 0), 0u)
        << streamed.status.error_message();
    grpc::ClientContext context;
    v1::CompleteResponse response;
    const grpc::Status unary = stub->Complete(&context, request, &response);
    EXPECT_EQ(unary.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << unary.error_message();
  }
  // None of that disturbed the server.
  EXPECT_TRUE(generate(*stub, greedy_request("The man", 4)).status.ok());
  EXPECT_EQ(daemon.stop(), 0) << daemon.log();
}

TEST(Serve, StopStringsAndUsage) {
  DaemonProcess daemon(daemon_config(kModel));
  ASSERT_TRUE(daemon.wait_ready());
  auto stub = daemon.inference();
  const std::string prompt = test_prompts(1)[0];
  const StreamResult full = generate(*stub, greedy_request(prompt, 40));
  ASSERT_TRUE(full.status.ok());
  ASSERT_GE(full.text.size(), 12u);
  // Stop at a piece of the greedy continuation: the text ends right before it.
  const std::string stop = full.text.substr(8, 3);
  v1::GenerateRequest request = greedy_request(prompt, 40);
  request.add_stop(stop);
  const StreamResult stopped = generate(*stub, request);
  ASSERT_TRUE(stopped.status.ok());
  EXPECT_EQ(stopped.finish, v1::STOP);
  EXPECT_EQ(stopped.text, full.text.substr(0, full.text.find(stop)));
  EXPECT_EQ(stopped.usage.model(), kModel);
  EXPECT_GT(stopped.usage.prompt_tokens(), 0u);
  EXPECT_GE(stopped.usage.mean_exit_layer(), 1.0);
  EXPECT_GT(stopped.usage.time_to_first_token_ms(), 0.0);
  EXPECT_EQ(stopped.usage.prompt_perplexity(), 0.0);  // not asked for
  // score_prompt: the prompt's perplexity, over every position after BOS.
  request.set_score_prompt(true);
  const StreamResult scored = generate(*stub, request);
  ASSERT_TRUE(scored.status.ok());
  EXPECT_EQ(scored.text, stopped.text);
  EXPECT_EQ(scored.usage.prompt_scored_tokens(), scored.usage.prompt_tokens() - 1);
  EXPECT_GT(scored.usage.prompt_perplexity(), 1.0);
  EXPECT_LT(scored.usage.prompt_perplexity(), 256.0);  // better than uniform over the bytes
  EXPECT_EQ(daemon.stop(), 0) << daemon.log();
}

TEST(Serve, SigtermDuringLoadLosesNoRequest) {
  DaemonProcess daemon(daemon_config(kModel, {{"shutdown", {{"drain_timeout_seconds", 60}}}}));
  ASSERT_TRUE(daemon.wait_ready());
  auto stub = daemon.inference();
  const std::vector<std::string> prompts = test_prompts(24);
  std::vector<std::future<StreamResult>> inflight;
  for (const std::string& prompt : prompts) {
    inflight.push_back(std::async(std::launch::async, [&stub, prompt] {
      return generate(*stub, greedy_request(prompt, 64));
    }));
  }
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (daemon.status().running_requests() + daemon.status().waiting_requests() < 24 &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(1ms);
  }
  auto exit_code = std::async(std::launch::async, [&] { return daemon.stop(SIGTERM); });
  // Once draining (the engine closed, which the daemon logs as "draining N requests in
  // flight"; the signal's own line comes before it), new calls are refused.
  const std::string closed = "requests in flight (timeout";
  const auto drain_deadline = std::chrono::steady_clock::now() + 30s;
  while (daemon.log().find(closed) == std::string::npos &&
         std::chrono::steady_clock::now() < drain_deadline) {
    std::this_thread::sleep_for(5ms);
  }
  ASSERT_NE(daemon.log().find(closed), std::string::npos) << daemon.log();
  const StreamResult refused = generate(*stub, greedy_request("The man", 4), 2000ms);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << refused.status.error_message();
  for (auto& f : inflight) {
    const StreamResult r = f.get();
    EXPECT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.finish, v1::LENGTH);
    EXPECT_EQ(r.usage.completion_tokens(), 64u);
  }
  EXPECT_EQ(exit_code.get(), 0) << daemon.log();
}

TEST(Serve, HealthProtocol) {
  DaemonProcess daemon(daemon_config(kModel, {{"shutdown", {{"drain_timeout_seconds", 30}}}}));
  ASSERT_TRUE(daemon.wait_ready());
  auto health = grpc::health::v1::Health::NewStub(daemon.channel());
  auto check = [&](const std::string& service) {
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    const grpc::Status status = health->Check(&context, request, &response);
    return std::make_pair(status, response.status());
  };
  const auto [ok, serving] = check("");
  ASSERT_TRUE(ok.ok()) << ok.error_message();
  EXPECT_EQ(serving, grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_EQ(check("no.such.Service").first.error_code(), grpc::StatusCode::NOT_FOUND);

  // Watch sees NOT_SERVING once the drain starts; a request in flight keeps the server up.
  auto stub = daemon.inference();
  auto busy = std::async(std::launch::async, [&] {
    return generate(*stub, greedy_request(test_prompts(1)[0], 190));
  });
  grpc::ClientContext watch_context;
  // A drain that never starts fails the test in bounded time rather than hanging the suite.
  watch_context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  grpc::health::v1::HealthCheckRequest watch_request;
  auto watch = health->Watch(&watch_context, watch_request);
  grpc::health::v1::HealthCheckResponse update;
  ASSERT_TRUE(watch->Read(&update));
  EXPECT_EQ(update.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  while (daemon.status().running_requests() < 1) std::this_thread::sleep_for(1ms);
  auto exit_code = std::async(std::launch::async, [&] { return daemon.stop(SIGTERM); });
  ASSERT_TRUE(watch->Read(&update));
  EXPECT_EQ(update.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  watch_context.TryCancel();
  EXPECT_TRUE(busy.get().status.ok());
  EXPECT_EQ(exit_code.get(), 0) << daemon.log();
}

// Server reflection, spoken over raw bytes: ListServices (field 7 of ServerReflectionRequest)
// answered by list_services_response (field 6) holding one ServiceResponse{name} per service.
TEST(Serve, ReflectionListsTheServices) {
  DaemonProcess daemon(daemon_config(kModel));
  ASSERT_TRUE(daemon.wait_ready());
  auto channel = daemon.channel();
  grpc::ClientContext context;
  const grpc::internal::RpcMethod method(
      "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
      grpc::internal::RpcMethod::BIDI_STREAMING);
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
          channel.get(), method, &context));
  const std::string request("\x3a\x01*", 3);
  grpc::Slice slice(request);
  ASSERT_TRUE(stream->Write(grpc::ByteBuffer(&slice, 1)));
  stream->WritesDone();
  grpc::ByteBuffer reply;
  ASSERT_TRUE(stream->Read(&reply));
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(reply.Dump(&slices).ok());
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_TRUE(stream->Finish().ok());

  google::protobuf::UnknownFieldSet response;
  ASSERT_TRUE(response.ParseFromString(bytes));
  std::set<std::string> services;
  for (int i = 0; i < response.field_count(); ++i) {
    if (response.field(i).number() != 6) continue;
    google::protobuf::UnknownFieldSet list;
    ASSERT_TRUE(list.ParseFromString(response.field(i).length_delimited()));
    for (int j = 0; j < list.field_count(); ++j) {
      google::protobuf::UnknownFieldSet service;
      ASSERT_TRUE(service.ParseFromString(list.field(j).length_delimited()));
      services.insert(service.field(0).length_delimited());
    }
  }
  EXPECT_TRUE(services.contains("helios.v1.Inference"));
  EXPECT_TRUE(services.contains("helios.v1.Admin"));
  EXPECT_TRUE(services.contains("grpc.health.v1.Health"));
  EXPECT_TRUE(services.contains("grpc.reflection.v1alpha.ServerReflection"));
  EXPECT_EQ(daemon.stop(), 0) << daemon.log();
}

TEST(Serve, AdminDescribesTheModel) {
  DaemonProcess daemon(daemon_config(kModel, {{"model", {{"max_layers", 3}}}}));
  ASSERT_TRUE(daemon.wait_ready());
  const v1::GetStatusResponse status = daemon.status();
  EXPECT_EQ(status.state(), v1::SERVER_STATE_SERVING);
  EXPECT_EQ(status.model().name(), kModel);
  EXPECT_EQ(status.model().total_layers(), 4u);
  EXPECT_EQ(status.model().loaded_layers(), 3u);
  EXPECT_GT(status.kv_blocks_total(), 0u);
  grpc::ClientContext context;
  v1::ListModelsResponse models;
  ASSERT_TRUE(daemon.admin()->ListModels(&context, v1::ListModelsRequest(), &models).ok());
  ASSERT_EQ(models.models_size(), 1);
  EXPECT_EQ(models.models(0).exit_layers_size(), 3);
  EXPECT_EQ(daemon.stop(), 0) << daemon.log();
}

}  // namespace
}  // namespace helios::testing
