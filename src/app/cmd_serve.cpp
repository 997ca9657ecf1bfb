#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "commands.h"
#include "helios/common/error.h"
#include "helios/common/logging.h"
#include "helios/serve/daemon.h"

namespace helios::app {
namespace {

// SIGTERM/SIGINT are blocked in every thread (the mask is set before the daemon starts any, and
// threads inherit it) and read from a signalfd by an ordinary thread. No handler runs in an
// arbitrary thread that may sit in a library's futex wait (where a sanitizer's deferred
// signal delivery would never reach it). A thread some library started before the mask was
// set still gets the handler below, which only writes a byte to a pipe (async-signal-safe).
int signal_fd = -1;
int signal_pipe[2] = {-1, -1};

extern "C" void on_signal(int) {
  const int saved = errno;
  const char byte = 1;
  [[maybe_unused]] const ssize_t n = ::write(signal_pipe[1], &byte, 1);
  errno = saved;
}

void install_signal_handlers() {
  sigset_t shutdown_signals;
  sigemptyset(&shutdown_signals);
  sigaddset(&shutdown_signals, SIGTERM);
  sigaddset(&shutdown_signals, SIGINT);
  if (::pthread_sigmask(SIG_BLOCK, &shutdown_signals, nullptr) != 0) {
    throw Error(ErrorCode::kInternal, "serve: cannot block SIGTERM and SIGINT");
  }
  // Non-blocking: a signal the signalfd reported may be taken by the handler in a thread that
  // does not block it before this thread reads it (the read then finds nothing and the byte
  // the handler wrote to the pipe ends the wait instead of a read that never returns).
  signal_fd = ::signalfd(-1, &shutdown_signals, SFD_CLOEXEC | SFD_NONBLOCK);
  if (signal_fd < 0 || ::pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    throw Error(ErrorCode::kInternal, "serve: cannot create the signalfd or the signal pipe");
  }
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  ::sigaction(SIGTERM, &action, nullptr);
  ::sigaction(SIGINT, &action, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
}

// Waits for a shutdown signal (true) or for `done_fd` to become readable (false); a negative
// `done_fd` waits for a signal only.
bool wait_for_signal_or(int done_fd) {
  pollfd fds[3] = {{signal_fd, POLLIN, 0}, {signal_pipe[0], POLLIN, 0}, {done_fd, POLLIN, 0}};
  while (true) {
    if (::poll(fds, 3, -1) < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (fds[2].revents != 0) return false;
    if ((fds[0].revents & POLLIN) != 0) {
      signalfd_siginfo info{};
      if (::read(signal_fd, &info, sizeof info) == static_cast<ssize_t>(sizeof info)) return true;
    }
    char byte = 0;
    if ((fds[1].revents & POLLIN) != 0 && ::read(signal_pipe[0], &byte, 1) == 1) return true;
  }
}

// Returns on a shutdown signal (or should poll itself fail: the daemon then shuts down).
void wait_for_signal() { wait_for_signal_or(-1); }

// Written once the daemon serves, atomically (rename), so a supervisor or a test that polls
// for the file never reads half of it.
void write_ports_file(const std::filesystem::path& path, const serve::Daemon& daemon) {
  const nlohmann::json ports = {
      {"grpc_port", daemon.grpc_port()}, {"http_port", daemon.http_port()},
      {"openai_port", daemon.openai_port()}, {"pid", ::getpid()}};
  const std::filesystem::path temporary = path.string() + ".tmp";
  {
    std::ofstream out(temporary);
    out << ports.dump() << "\n";
    if (!out) throw Error(ErrorCode::kInvalidArgument, "--ports-file: cannot write " + path.string());
  }
  std::filesystem::rename(temporary, path);
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "serve", "Run the inference daemon (gRPC API, /metrics, /healthz, /readyz)");
  struct Options {
    std::string config;
    std::string ports_file;
    std::string log_level;
    std::string log_format;
  };
  auto options = std::make_shared<Options>();
  cmd->add_option("--config", options->config, "Server config (JSON); see the README")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--ports-file", options->ports_file,
                  "Write {grpc_port, http_port, openai_port, pid} as JSON here once serving");
  cmd->add_option("--log-level", options->log_level, "Overrides logging.level")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  cmd->add_option("--log-format", options->log_format, "Overrides logging.format")
      ->check(CLI::IsMember({"text", "json"}));
  cmd->callback([options] {
    serve::ServerConfig config = serve::ServerConfig::from_file(options->config);
    if (!options->log_level.empty()) config.log_level = options->log_level;
    if (!options->log_format.empty()) config.log_format = options->log_format;
    logging::configure(config.log_level, logging::parse_format(config.log_format));
    install_signal_handlers();

    serve::Daemon daemon(config);
    daemon.start();
    if (!options->ports_file.empty()) write_ports_file(options->ports_file, daemon);

    wait_for_signal();
    spdlog::info("shutdown requested: draining (a second signal cancels what is in flight)");
    // A second signal while draining cancels what is in flight. The watcher is joined once the
    // drain is over, so no thread outlives the daemon.
    int drained[2] = {-1, -1};
    if (::pipe2(drained, O_CLOEXEC) != 0) {
      throw Error(ErrorCode::kInternal, "serve: cannot create the shutdown pipe");
    }
    std::thread watcher([&daemon, drained_fd = drained[0]] {
      while (wait_for_signal_or(drained_fd)) daemon.shutdown();
    });
    daemon.shutdown();
    const char byte = 1;
    [[maybe_unused]] const ssize_t n = ::write(drained[1], &byte, 1);
    watcher.join();
    ::close(drained[0]);
    ::close(drained[1]);
  });
}

}  // namespace helios::app
