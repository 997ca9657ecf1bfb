#pragma once

#include <gtest/gtest.h>
#include <grpcpp/grpcpp.h>
#include <fcntl.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/held_out_text.h"
#include "common/scratch_dir.h"
#include "helios/common/files.h"
#include "helios/v1/admin.grpc.pb.h"
#include "helios/v1/inference.grpc.pb.h"

extern char** environ;

namespace helios::testing {

inline const std::string kMicroZoo = HELIOS_MICRO_ZOO_DIR;

// A config for a daemon on loopback with ports picked by the kernel; `overrides` is merged
// into it section by section.
inline nlohmann::json daemon_config(const std::string& model, const nlohmann::json& overrides = {}) {
  nlohmann::json config = {
      {"grpc", {{"address", "127.0.0.1:0"}}},
      {"http", {{"host", "127.0.0.1"}, {"port", 0}}},
      {"model", {{"path", kMicroZoo + "/" + model}}},
      {"memory", {{"budget_mib", 64}}},
      {"logging", {{"level", "info"}}},
  };
  for (const auto& [section, values] : overrides.items()) {
    for (const auto& [key, value] : values.items()) config[section][key] = value;
  }
  return config;
}

// The real `helios serve` binary as a child process, talked to as any client would.
class DaemonProcess {
 public:
  explicit DaemonProcess(const nlohmann::json& config) {
    const auto config_path = dir_.path() / "server.json";
    std::ofstream(config_path) << config.dump(2);
    ports_path_ = dir_.path() / "ports.json";
    log_path_ = dir_.path() / "daemon.log";
    // Clients connect to the configured loopback address (127.0.0.6, say), else to 127.0.0.1.
    const std::string address = config.contains("grpc") ? config["grpc"].value("address", "") : "";
    if (address.rfind("127.", 0) == 0) host_ = address.substr(0, address.rfind(':'));
    std::vector<std::string> args = {HELIOS_BINARY, "serve", "--config", config_path.string(),
                                     "--ports-file", ports_path_.string()};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    const int rc = posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) throw std::runtime_error("cannot start " + args[0]);
  }

  ~DaemonProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  // Waits until the daemon wrote its ports file (it serves from then on).
  bool wait_ready(std::chrono::seconds timeout = std::chrono::seconds(60)) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
      if (std::filesystem::exists(ports_path_)) {
        const auto ports = nlohmann::json::parse(helios::read_file(ports_path_));
        grpc_port_ = ports.at("grpc_port").get<int>();
        http_port_ = ports.at("http_port").get<int>();
        openai_port_ = ports.value("openai_port", 0);
        return true;
      }
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        ADD_FAILURE() << "daemon exited during start-up:\n" << log();
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ADD_FAILURE() << "daemon not ready after " << timeout.count() << " s:\n" << log();
    return false;
  }

  // Waits for a daemon expected to refuse to start; its exit code, or -1 on a crash or when it
  // still runs after `timeout`.
  int wait_exit(std::chrono::seconds timeout = std::chrono::seconds(60)) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    while (std::chrono::steady_clock::now() < until) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }

  pid_t pid() const { return pid_; }

  // The daemon's peak resident set so far (VmHWM), in MiB; -1 when unreadable.
  double peak_rss_mib() const {
    std::ifstream status("/proc/" + std::to_string(pid_) + "/status");
    for (std::string line; std::getline(status, line);) {
      if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
    }
    return -1.0;
  }

  // Sends `signal` and waits for the exit; returns the exit code (or -1 on a crash/timeout).
  int stop(int signal = SIGTERM, std::chrono::seconds timeout = std::chrono::seconds(60)) {
    if (pid_ <= 0) return -1;
    ::kill(pid_, signal);
    const auto until = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    while (std::chrono::steady_clock::now() < until) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return -1;
  }

  std::string address() const { return host_ + ":" + std::to_string(grpc_port_); }
  int http_port() const { return http_port_; }
  int openai_port() const { return openai_port_; }
  std::string log() const {
    return std::filesystem::exists(log_path_) ? helios::read_file(log_path_) : "";
  }
  std::shared_ptr<grpc::Channel> channel() const {
    return grpc::CreateChannel(address(), grpc::InsecureChannelCredentials());
  }
  std::unique_ptr<v1::Inference::Stub> inference() const { return v1::Inference::NewStub(channel()); }
  std::unique_ptr<v1::Admin::Stub> admin() const { return v1::Admin::NewStub(channel()); }

  // The deadline leaves room for a sanitized daemon on two busy cores: in an ASan run a call
  // made while the daemon switched models (a load and a batch recompute) took over 5 s.
  v1::GetStatusResponse status() const {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::GetStatusResponse response;
    const grpc::Status s = admin()->GetStatus(&context, v1::GetStatusRequest(), &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response;
  }

 private:
  ScratchDir dir_{"daemon"};
  std::filesystem::path ports_path_, log_path_;
  pid_t pid_ = -1;
  std::string host_ = "127.0.0.1";
  int grpc_port_ = 0, http_port_ = 0, openai_port_ = 0;
};

// The result of one streamed Generate call.
struct StreamResult {
  grpc::Status status;
  std::string text;
  int messages = 0;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  v1::Usage usage;
  std::vector<int32_t> token_ids;
};

inline StreamResult generate(v1::Inference::Stub& stub, const v1::GenerateRequest& request,
                             std::chrono::milliseconds timeout = std::chrono::seconds(120)) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  StreamResult result;
  auto reader = stub.Generate(&context, request);
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    ++result.messages;
    result.text += response.text();
    for (const auto& t : response.tokens()) result.token_ids.push_back(t.token_id());
    if (response.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      result.finish = response.finish_reason();
      result.usage = response.usage();
    }
  }
  result.status = reader->Finish();
  return result;
}

inline v1::GenerateRequest greedy_request(const std::string& prompt, uint32_t max_tokens) {
  v1::GenerateRequest request;
  request.set_prompt(prompt);
  request.set_max_tokens(max_tokens);
  request.set_include_token_details(true);
  return request;
}

// The value of `series` (the name and labels as /metrics renders them, e.g.
// `helios_energy_joules_total{source="cpu_estimate"}`) in a scraped text; 0 when absent.
inline double sample_value(const std::string& metrics_text, const std::string& series) {
  std::istringstream in(metrics_text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return 0.0;
}

// Distinct prompts cut from the held-out prose text.
inline std::vector<std::string> test_prompts(size_t count, size_t bytes = 60) {
  return held_out_prompts("prose", count, 0, 997, [bytes](size_t) { return bytes; });
}

// The prompts as concurrent greedy streams (they batch in the engine), results in order.
inline std::vector<StreamResult> concurrent_streams(const DaemonProcess& daemon,
                                                    const std::vector<std::string>& prompts,
                                                    uint32_t max_tokens) {
  auto stub = daemon.inference();
  std::vector<std::future<StreamResult>> futures;
  for (const std::string& prompt : prompts) {
    futures.push_back(std::async(std::launch::async, [&stub, prompt, max_tokens] {
      return generate(*stub, greedy_request(prompt, max_tokens));
    }));
  }
  std::vector<StreamResult> results;
  for (auto& f : futures) results.push_back(f.get());
  return results;
}

// GET `path` from the daemon's HTTP endpoint: the body of a 200, else "".
inline std::string scrape(const DaemonProcess& daemon, const std::string& path = "/metrics") {
  httplib::Client client("127.0.0.1", daemon.http_port());
  const auto response = client.Get(path.c_str());
  return response && response->status == 200 ? response->body : "";
}

// A loopback port that was free a moment ago (for servers that cannot pick one and report it).
inline int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  socklen_t length = sizeof(address);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  ::close(fd);
  return ntohs(address.sin_port);
}

}  // namespace helios::testing
