#pragma once

// A real Prometheus server for tests: on a free loopback port, scraping one daemon's /metrics
// every second as job "helios", its storage in a scratch directory. Stopped (SIGTERM, then
// waited for up to 5 s, so its storage can be removed) when it goes out of scope.

#include <httplib.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "common/run_command.h"
#include "common/scratch_dir.h"
#include "helios/common/files.h"
#include "serve/daemon_process.h"

namespace helios::testing {

class PrometheusServer {
 public:
  explicit PrometheusServer(int target_http_port) : port_(free_port()) {
    const auto config = dir_.path() / "prometheus.yml";
    std::ofstream(config) << "global:\n  scrape_interval: 1s\n"
                          << "scrape_configs:\n  - job_name: helios\n    static_configs:\n"
                          << "      - targets: ['127.0.0.1:" << target_http_port << "']\n";
    log_path_ = dir_.path() / "prometheus.log";
    start_ = run_command("prometheus --config.file='" + config.string() +
                         "' --storage.tsdb.path='" + (dir_.path() / "data").string() +
                         "' --web.listen-address=127.0.0.1:" + std::to_string(port_) + " > '" +
                         log_path_.string() + "' 2>&1 & echo $!");
    if (start_.exit_code == 0) pid_ = std::stoi(start_.output);
  }
  ~PrometheusServer() { stop(); }
  PrometheusServer(const PrometheusServer&) = delete;
  PrometheusServer& operator=(const PrometheusServer&) = delete;

  // Whether it was launched; start_output() says why not.
  bool started() const { return pid_ > 0; }
  const std::string& start_output() const { return start_.output; }
  httplib::Client client() const { return httplib::Client("127.0.0.1", port_); }
  std::string log() const {
    return std::filesystem::exists(log_path_) ? helios::read_file(log_path_) : "";
  }
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    for (int i = 0; i < 100 && ::kill(pid_, 0) == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    pid_ = -1;
  }

 private:
  ScratchDir dir_{"prometheus"};
  int port_;
  std::filesystem::path log_path_;
  CommandResult start_;
  int pid_ = -1;
};

}  // namespace helios::testing
