#include "helios/serve/notify_thread.h"

#include <pthread.h>

namespace helios::serve {

NotifyThread::NotifyThread() : thread_([this] { loop(); }) {}

NotifyThread::~NotifyThread() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  ready_.notify_one();
  thread_.join();
}

bool NotifyThread::post(const std::shared_ptr<Task>& task) {
  bool wake = false;
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return false;
    if (task->queued_) return true;
    task->queued_ = true;
    wake = queue_.empty();
    queue_.push_back(task);
  }
  // Only the first post of a batch wakes the thread; the rest find it awake or about to be.
  if (wake) ready_.notify_one();
  return true;
}

int64_t NotifyThread::runs() const {
  std::lock_guard lock(mutex_);
  return runs_;
}

void NotifyThread::loop() {
  pthread_setname_np(pthread_self(), "helios-notify");
  std::vector<std::weak_ptr<Task>> batch;
  std::vector<std::shared_ptr<Task>> live;
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      ready_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and nothing left
      batch.swap(queue_);
      // Unmarked before they run: a post that arrives while one runs queues it again, so
      // nothing pushed after its take is left unwritten.
      live.clear();
      for (const std::weak_ptr<Task>& weak : batch) {
        if (std::shared_ptr<Task> task = weak.lock()) {
          task->queued_ = false;
          live.push_back(std::move(task));
        }
      }
      batch.clear();
      runs_ += static_cast<int64_t>(live.size());
    }
    for (const std::shared_ptr<Task>& task : live) task->run();
    live.clear();
  }
}

}  // namespace helios::serve
