#include "helios/controller/config_watcher.h"

#include "helios/common/exception_message.h"

#include <spdlog/spdlog.h>

#include <fstream>
#include <sstream>

namespace helios::controller {

ConfigWatcher::ConfigWatcher(std::filesystem::path file, std::chrono::milliseconds poll,
                             std::function<void(const std::string& contents)> on_change)
    : file_(std::move(file)), poll_(poll), on_change_(std::move(on_change)) {}

ConfigWatcher::~ConfigWatcher() { stop(); }

void ConfigWatcher::start() {
  if (thread_.joinable()) return;
  {
    std::lock_guard lock(mutex_);
    stopping_ = false;
  }
  last_ = read_contents();
  thread_ = std::thread([this] { run(); });
}

void ConfigWatcher::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::optional<std::string> ConfigWatcher::read_contents() const {
  std::ifstream in(file_, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return std::nullopt;
  return std::move(contents).str();
}

void ConfigWatcher::run() {
  std::unique_lock lock(mutex_);
  while (!wake_.wait_for(lock, poll_, [this] { return stopping_; })) {
    lock.unlock();
    // Missing between polls (mid-rename, or deleted for a moment): keep the last contents so
    // the same file coming back is not reported as a change.
    if (std::optional<std::string> now = read_contents(); now && now != last_) {
      last_ = std::move(now);
      try {
        on_change_(*last_);
      } catch (const std::exception& e) {
        spdlog::warn("{}: change handler failed: {}", file_.string(), exception_message(e));
      }
    }
    lock.lock();
  }
}

}  // namespace helios::controller
