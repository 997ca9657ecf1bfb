#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace helios::serve {

// Runs the front end's reactions to engine output on a thread of its own, so that the engine
// thread, which produces a token for every running request each step, never serializes a
// response or enters gRPC's write path itself: it posts the stream that has something new and
// goes on with the next step. A stream posted again before its turn comes runs once (the
// channel merges what piled up, so one write carries it all).
class NotifyThread {
 public:
  class Task {
   public:
    virtual ~Task() = default;
    // Called on the notify thread, once per turn.
    virtual void run() = 0;

   private:
    friend class NotifyThread;
    bool queued_ = false;  // guarded by the NotifyThread's mutex
  };

  NotifyThread();
  // Runs what was posted before, then joins the thread.
  ~NotifyThread();
  NotifyThread(const NotifyThread&) = delete;
  NotifyThread& operator=(const NotifyThread&) = delete;

  // Queues `task` for a run unless it is queued already. A task gone (expired) by its turn is
  // skipped. False once the thread is stopping: the caller runs the task itself.
  bool post(const std::shared_ptr<Task>& task);

  // Tasks run so far.
  int64_t runs() const;

 private:
  void loop();

  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::vector<std::weak_ptr<Task>> queue_;
  bool stopping_ = false;
  int64_t runs_ = 0;
  std::thread thread_;
};

}  // namespace helios::serve
