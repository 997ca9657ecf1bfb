#include <fmt/format.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>

#include "commands.h"
#include "helios/common/error.h"
#include "helios/v1/inference.grpc.pb.h"

namespace helios::app {
namespace {

struct ClientOptions {
  std::string address = "127.0.0.1:50051";
  std::string prompt;
  uint32_t max_tokens = 64;
  float temperature = 0.0f;
  float top_p = 1.0f;
  uint32_t top_k = 0;
  uint64_t seed = 0;
  int64_t priority = -1;  // unset: the server's default class
  std::vector<std::string> stop;
  std::string request_id;
  bool details = false;
  bool unary = false;
  double timeout_seconds = 0.0;
};

std::string_view finish_name(v1::FinishReason reason) {
  switch (reason) {
    case v1::STOP: return "stop";
    case v1::LENGTH: return "length";
    case v1::CANCELLED: return "cancelled";
    case v1::ERROR: return "error";
    default: return "unset";
  }
}

void print_usage(const std::string& id, v1::FinishReason reason, const v1::Usage& usage) {
  fmt::print(stderr,
             "\n[{}] finish={} model={} prompt_tokens={} completion_tokens={} ttft={:.1f} ms "
             "total={:.1f} ms mean_exit_layer={:.2f} preemptions={} priority={}\n",
             id, finish_name(reason), usage.model(), usage.prompt_tokens(),
             usage.completion_tokens(), usage.time_to_first_token_ms(), usage.total_time_ms(),
             usage.mean_exit_layer(), usage.preemptions(), usage.priority());
}

void print_details(const google::protobuf::RepeatedPtrField<v1::TokenDetail>& tokens) {
  for (const v1::TokenDetail& t : tokens) {
    fmt::print(stderr, "  token {:>6} exit_layer {:>3} confidence {:.3f}{}\n", t.token_id(),
               t.exit_layer(), t.confidence(), t.greedy_exit() ? " (greedy)" : "");
  }
}

void run_client(const ClientOptions& o) {
  auto channel = grpc::CreateChannel(o.address, grpc::InsecureChannelCredentials());
  auto stub = v1::Inference::NewStub(channel);
  v1::GenerateRequest request;
  request.set_prompt(o.prompt);
  request.set_max_tokens(o.max_tokens);
  request.set_temperature(o.temperature);
  request.set_top_p(o.top_p);
  request.set_top_k(o.top_k);
  request.set_seed(o.seed);
  if (o.priority >= 0) request.set_priority(static_cast<uint32_t>(o.priority));
  for (const auto& s : o.stop) request.add_stop(s);
  request.set_request_id(o.request_id);
  request.set_include_token_details(o.details);

  grpc::ClientContext context;
  if (o.timeout_seconds > 0) {
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::microseconds(static_cast<int64_t>(o.timeout_seconds * 1e6)));
  }
  grpc::Status status;
  if (o.unary) {
    v1::CompleteResponse response;
    status = stub->Complete(&context, request, &response);
    if (status.ok()) {
      fmt::print("{}", response.text());
      if (o.details) print_details(response.tokens());
      print_usage(response.request_id(), response.finish_reason(), response.usage());
    }
  } else {
    auto reader = stub->Generate(&context, request);
    v1::GenerateResponse response;
    while (reader->Read(&response)) {
      fmt::print("{}", response.text());
      std::fflush(stdout);
      if (o.details) print_details(response.tokens());
      if (response.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
        print_usage(response.request_id(), response.finish_reason(), response.usage());
      }
    }
    status = reader->Finish();
  }
  if (!status.ok()) {
    throw Error(ErrorCode::kUnavailable,
                fmt::format("{} ({}): {}", o.address, static_cast<int>(status.error_code()),
                            status.error_message()));
  }
}

}  // namespace

void add_client_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("client", "Send a prompt to a helios daemon and stream the reply");
  auto o = std::make_shared<ClientOptions>();
  cmd->add_option("--address", o->address, "host:port of the daemon's gRPC endpoint")
      ->capture_default_str();
  cmd->add_option("-p,--prompt", o->prompt, "Prompt text")->required();
  cmd->add_option("-n,--max-tokens", o->max_tokens, "Tokens to generate")
      ->capture_default_str()
      ->check(at_least(1));
  cmd->add_option("--temperature", o->temperature, "0 = greedy")
      ->capture_default_str()
      ->check(at_least(0));
  cmd->add_option("--top-p", o->top_p, "Nucleus mass in (0, 1]")
      ->capture_default_str()
      ->check(number_where([](double x) { return x > 0 && x <= 1; }, "in (0, 1]"));
  cmd->add_option("--top-k", o->top_k, "0 = no cut")->capture_default_str();
  cmd->add_option("--seed", o->seed, "Sampler seed")->capture_default_str();
  cmd->add_option("--stop", o->stop, "Stop string (repeatable)");
  cmd->add_option("--priority", o->priority,
                  "Priority class, 0 = most urgent (unset: the server's default)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
  cmd->add_option("--request-id", o->request_id, "Request id (the server assigns one if empty)");
  cmd->add_flag("--details", o->details, "Print each token's exit layer and confidence");
  cmd->add_flag("--unary", o->unary, "Use Complete (one response) instead of streaming");
  cmd->add_option("--timeout", o->timeout_seconds, "Deadline in seconds (0 = none)")
      ->check(at_least(0));
  cmd->callback([o] { run_client(*o); });
}

}  // namespace helios::app
