#pragma once

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

namespace helios::controller {

// What a poller reports of a file's contents: a change once two consecutive reads agree on
// contents that differ from the last reported ones. An editor that truncates the file and
// writes it in place can be read between the two (empty or half written); such a read is not
// reported unless the next read finds the same bytes. Missing reads (nullopt) change nothing.
class SettledContents {
 public:
  explicit SettledContents(std::optional<std::string> initial) : last_(std::move(initial)) {}
  // The contents to report after this read, if any.
  std::optional<std::string> observe(std::optional<std::string> read);

 private:
  std::optional<std::string> last_;     // reported (or initial)
  std::optional<std::string> pending_;  // read once, differing from last_
};

// Watches one file by polling its contents and calls `on_change` (on the watcher's thread)
// whenever they differ from the last contents seen and have held for two polls
// (SettledContents). Comparing contents rather than mtimes
// catches editors that write a temporary file and rename it over the original, and edits that
// land within the file system's mtime granularity. The first read at start() only records the
// contents; a file that is missing at a poll is retried at the next one. The callback parses
// and validates; an exception it throws is logged and the watcher goes on.
class ConfigWatcher {
 public:
  ConfigWatcher(std::filesystem::path file, std::chrono::milliseconds poll,
                std::function<void(const std::string& contents)> on_change);
  ~ConfigWatcher();
  ConfigWatcher(const ConfigWatcher&) = delete;
  ConfigWatcher& operator=(const ConfigWatcher&) = delete;

  void start();
  // Returns promptly (the thread waits on a condition variable, not a sleep); idempotent.
  void stop();

 private:
  void run();
  std::optional<std::string> read_contents() const;

  std::filesystem::path file_;
  std::chrono::milliseconds poll_;
  std::function<void(const std::string&)> on_change_;
  std::optional<SettledContents> contents_;  // watcher thread only, after start()

  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace helios::controller
