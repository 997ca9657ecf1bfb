#include "helios/controller/config_watcher.h"

#include "helios/common/exception_message.h"

#include <spdlog/spdlog.h>

#include <fstream>
#include <sstream>

namespace helios::controller {

std::optional<std::string> SettledContents::observe(std::optional<std::string> read) {
  if (!read) return std::nullopt;  // mid-rename or deleted for a moment: keep what was seen
  if (read == last_) {
    pending_.reset();
    return std::nullopt;
  }
  if (read != pending_) {
    pending_ = std::move(read);
    return std::nullopt;
  }
  last_ = std::move(pending_);
  pending_.reset();
  return last_;
}

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
  contents_.emplace(read_contents());
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
    if (std::optional<std::string> changed = contents_->observe(read_contents())) {
      try {
        on_change_(*changed);
      } catch (const std::exception& e) {
        spdlog::warn("{}: change handler failed: {}", file_.string(), exception_message(e));
      }
    }
    lock.lock();
  }
}

}  // namespace helios::controller
