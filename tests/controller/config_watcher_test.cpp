#include "helios/controller/config_watcher.h"

#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <mutex>
#include <vector>

#include "common/scratch_dir.h"

namespace helios::controller {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

class ConfigWatcherTest : public ::testing::Test {
 protected:
  ConfigWatcherTest() : file_(scratch_.path() / "slo.json") { write(file_, "one"); }

  static void write(const fs::path& path, const std::string& text) {
    std::ofstream(path, std::ios::trunc) << text;
  }
  std::vector<std::string> seen() {
    std::lock_guard lock(mutex_);
    return seen_;
  }
  // Polls until `n` callbacks arrived or `timeout` passed.
  bool wait_for_calls(size_t n, std::chrono::milliseconds timeout = 2000ms) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      if (seen().size() >= n) return true;
      std::this_thread::sleep_for(10ms);
    }
    return seen().size() >= n;
  }
  ConfigWatcher make() {
    return ConfigWatcher(file_, 20ms, [this](const std::string& contents) {
      std::lock_guard lock(mutex_);
      seen_.push_back(contents);
    });
  }

  helios::testing::ScratchDir scratch_{"watch"};
  fs::path file_;
  std::mutex mutex_;
  std::vector<std::string> seen_;
};

TEST(SettledContents, AHalfWrittenReadIsNotReported) {
  SettledContents contents(std::string("one"));
  // An in-place write read between its truncate and its write, then complete.
  EXPECT_EQ(contents.observe(std::string("")), std::nullopt);
  EXPECT_EQ(contents.observe(std::string("two")), std::nullopt);
  EXPECT_EQ(contents.observe(std::string("two")), std::optional<std::string>("two"));
  EXPECT_EQ(contents.observe(std::string("two")), std::nullopt) << "reported once";
  // Missing reads change nothing; a flicker back to the reported contents is no change.
  EXPECT_EQ(contents.observe(std::nullopt), std::nullopt);
  EXPECT_EQ(contents.observe(std::string("three")), std::nullopt);
  EXPECT_EQ(contents.observe(std::string("two")), std::nullopt);
  EXPECT_EQ(contents.observe(std::string("three")), std::nullopt);
  EXPECT_EQ(contents.observe(std::string("three")), std::optional<std::string>("three"));
  // A file that starts missing reports its first settled contents.
  SettledContents late(std::nullopt);
  EXPECT_EQ(late.observe(std::string("x")), std::nullopt);
  EXPECT_EQ(late.observe(std::string("x")), std::optional<std::string>("x"));
}

TEST_F(ConfigWatcherTest, NewContentsAreReportedOnce) {
  ConfigWatcher watcher = make();
  watcher.start();
  std::this_thread::sleep_for(100ms);
  EXPECT_TRUE(seen().empty()) << "the first read only records the contents";
  write(file_, "two");
  ASSERT_TRUE(wait_for_calls(1));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(seen(), std::vector<std::string>{"two"});
}

TEST_F(ConfigWatcherTest, RewritingTheSameContentsIsNoChange) {
  ConfigWatcher watcher = make();
  watcher.start();
  write(file_, "one");
  std::this_thread::sleep_for(200ms);
  EXPECT_TRUE(seen().empty());
}

TEST_F(ConfigWatcherTest, RenameOverAndBriefAbsenceAreHandled) {
  ConfigWatcher watcher = make();
  watcher.start();
  fs::remove(file_);
  std::this_thread::sleep_for(100ms);  // missing for a few polls: ignored
  write(file_, "one");
  std::this_thread::sleep_for(100ms);
  EXPECT_TRUE(seen().empty()) << "the same contents came back";
  const fs::path temp = scratch_.path() / ".slo.json.tmp";
  write(temp, "three");
  fs::rename(temp, file_);
  ASSERT_TRUE(wait_for_calls(1));
  EXPECT_EQ(seen().front(), "three");
}

TEST_F(ConfigWatcherTest, StopIsPromptAndAThrowingHandlerDoesNotEndTheWatch) {
  std::atomic<int> calls{0};
  ConfigWatcher watcher(file_, 10s, [&](const std::string&) { ++calls; });
  watcher.start();
  const auto before = std::chrono::steady_clock::now();
  watcher.stop();
  EXPECT_LT(std::chrono::steady_clock::now() - before, 1s);

  ConfigWatcher throwing(file_, 20ms, [&](const std::string&) {
    ++calls;
    throw std::runtime_error("bad config");
  });
  throwing.start();
  write(file_, "two");
  std::this_thread::sleep_for(200ms);
  write(file_, "three");
  const auto deadline = std::chrono::steady_clock::now() + 2s;
  while (calls < 2 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(calls, 2);
}

}  // namespace
}  // namespace helios::controller
