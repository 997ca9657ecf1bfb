#include "helios/serve/notify_thread.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <thread>

namespace helios::serve {
namespace {

class FnTask final : public NotifyThread::Task {
 public:
  explicit FnTask(std::function<void()> f = {}) : f_(std::move(f)) {}
  void run() override {
    thread = std::this_thread::get_id();
    runs.fetch_add(1);
    if (f_) f_();
  }
  std::atomic<int> runs{0};
  std::thread::id thread;

 private:
  std::function<void()> f_;
};

// Waits until `done` or 10 s.
bool eventually(const std::function<bool()>& done) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

TEST(NotifyThread, RunsPostedTasksOffThePostingThread) {
  NotifyThread notify;
  auto task = std::make_shared<FnTask>();
  ASSERT_TRUE(notify.post(task));
  ASSERT_TRUE(eventually([&] { return task->runs.load() == 1; }));
  EXPECT_NE(task->thread, std::this_thread::get_id());
}

TEST(NotifyThread, ATaskPostedAgainBeforeItsTurnRunsOnce) {
  NotifyThread notify;
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  auto blocker = std::make_shared<FnTask>([released] { released.wait(); });
  auto task = std::make_shared<FnTask>();
  ASSERT_TRUE(notify.post(blocker));
  ASSERT_TRUE(eventually([&] { return blocker->runs.load() == 1; }));
  // The thread is busy in blocker: every post of task lands in one queued turn.
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(notify.post(task));
  release.set_value();
  ASSERT_TRUE(eventually([&] { return task->runs.load() >= 1; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(task->runs.load(), 1);
}

TEST(NotifyThread, APostWhileTheTaskRunsQueuesItAgain) {
  // The engine may push a token while the stream's previous run is writing: that token must
  // get a run of its own, or it would wait for the next push (or forever, if it was the last).
  NotifyThread notify;
  std::shared_ptr<FnTask> task;
  task = std::make_shared<FnTask>([&] {
    if (task->runs.load() == 1) EXPECT_TRUE(notify.post(task));
  });
  ASSERT_TRUE(notify.post(task));
  ASSERT_TRUE(eventually([&] { return task->runs.load() == 2; }));
}

TEST(NotifyThread, ATaskGoneBeforeItsTurnIsSkipped) {
  NotifyThread notify;
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  auto blocker = std::make_shared<FnTask>([released] { released.wait(); });
  ASSERT_TRUE(notify.post(blocker));
  ASSERT_TRUE(eventually([&] { return blocker->runs.load() == 1; }));
  std::atomic<int> ran{0};
  {
    auto gone = std::make_shared<FnTask>([&] { ran.fetch_add(1); });
    ASSERT_TRUE(notify.post(gone));
  }
  auto after = std::make_shared<FnTask>();
  ASSERT_TRUE(notify.post(after));
  release.set_value();
  ASSERT_TRUE(eventually([&] { return after->runs.load() == 1; }));
  EXPECT_EQ(ran.load(), 0);
  EXPECT_EQ(notify.runs(), 2);  // blocker and after
}

TEST(NotifyThread, StoppingRunsWhatWasPostedFirst) {
  auto slow = std::make_shared<FnTask>(
      [] { std::this_thread::sleep_for(std::chrono::milliseconds(50)); });
  std::vector<std::shared_ptr<FnTask>> tasks;
  for (int i = 0; i < 8; ++i) tasks.push_back(std::make_shared<FnTask>());
  {
    NotifyThread notify;
    ASSERT_TRUE(notify.post(slow));
    for (const auto& task : tasks) ASSERT_TRUE(notify.post(task));
  }
  EXPECT_EQ(slow->runs.load(), 1);
  for (const auto& task : tasks) EXPECT_EQ(task->runs.load(), 1);
}

}  // namespace
}  // namespace helios::serve
