#pragma once

// What every httplib::Server of the daemon shares (the metrics endpoint, the OpenAI API).
//
// cpp-httplib listens with a backlog of 5: a burst of probes and scrapes past it has its SYNs
// dropped and retried a second later. Every file that instantiates httplib::Server includes
// this header first, so that each translation unit's httplib code is the same.
#define CPPHTTPLIB_LISTEN_BACKLOG 128
#include <httplib.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace helios::metrics {

// httplib's task queue: one connection per task. Workers start when every running worker is
// busy (so a few slow clients never leave a probe waiting behind them, up to
// kMaxServerThreads) and are kept until shutdown.
class ConnectionPool final : public httplib::TaskQueue {
 public:
  explicit ConnectionPool(size_t max_threads) : max_threads_(max_threads) {}

  void enqueue(std::function<void()> fn) override {
    {
      std::lock_guard lock(mutex_);
      jobs_.push_back(std::move(fn));
      if (jobs_.size() > available_ && threads_.size() < max_threads_) {
        ++available_;
        threads_.emplace_back([this] { work(); });
      }
    }
    ready_.notify_one();
  }

  // Called by the listen thread (the only caller of enqueue) once it stops accepting; runs the
  // connections still queued, then joins.
  void shutdown() override {
    {
      std::lock_guard lock(mutex_);
      shutdown_ = true;
    }
    ready_.notify_all();
    for (std::thread& thread : threads_) thread.join();
  }

 private:
  void work() {
    std::unique_lock lock(mutex_);
    while (true) {
      ready_.wait(lock, [this] { return !jobs_.empty() || shutdown_; });
      if (jobs_.empty()) return;
      std::function<void()> job = std::move(jobs_.front());
      jobs_.pop_front();
      --available_;
      lock.unlock();
      job();
      lock.lock();
      ++available_;
    }
  }

  const size_t max_threads_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  size_t available_ = 0;  // workers idle or starting
  bool shutdown_ = false;
};

}  // namespace helios::metrics
