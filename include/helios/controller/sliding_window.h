#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <vector>

#include "helios/common/error.h"

namespace helios::controller {

// The last `capacity` samples of a latency (or any other figure), for the p95s and means the
// controller compares against the SLO. Percentiles sort a copy: windows are small (tens to
// hundreds of samples) and read far less often than written.
class PercentileWindow {
 public:
  explicit PercentileWindow(size_t capacity) : capacity_(capacity) {
    if (capacity == 0) throw Error(ErrorCode::kInvalidArgument, "window capacity must be >= 1");
    samples_.reserve(capacity);
  }

  void add(double value) {
    if (samples_.size() < capacity_) {
      samples_.push_back(value);
    } else {
      samples_[next_] = value;
    }
    next_ = (next_ + 1) % capacity_;
  }

  size_t size() const { return samples_.size(); }
  size_t capacity() const { return capacity_; }

  // Nearest rank: the smallest sample with at least q of the samples at or below it
  // (q in [0, 1]; 0 when empty).
  double percentile(double q) const {
    if (samples_.empty()) return 0.0;
    std::vector<double> sorted = samples_;
    std::sort(sorted.begin(), sorted.end());
    const double n = static_cast<double>(sorted.size());
    const auto rank = static_cast<size_t>(std::clamp(std::ceil(q * n), 1.0, n));
    return sorted[rank - 1];
  }

  double mean() const {
    if (samples_.empty()) return 0.0;
    double sum = 0.0;
    for (const double s : samples_) sum += s;
    return sum / static_cast<double>(samples_.size());
  }

  void clear() {
    samples_.clear();
    next_ = 0;
  }

 private:
  size_t capacity_;
  std::vector<double> samples_;  // ring buffer once full
  size_t next_ = 0;              // slot the next sample overwrites
};

// The most urgent priority class (lowest value) among the last `span` requests: the class
// whose latency the controller's constraints judge. A class that stops arriving for `span`
// requests hands over to the most urgent of those that did.
class UrgentClass {
 public:
  explicit UrgentClass(size_t span = 256) : span_(std::max<size_t>(1, span)) {}

  // Records a request's class; true when the most urgent class changed.
  bool observe(int32_t priority) {
    const int32_t before = most_urgent();
    recent_.push_back(priority);
    if (recent_.size() > span_) recent_.pop_front();
    return most_urgent() != before;
  }
  // -1 before any request.
  int32_t most_urgent() const {
    if (recent_.empty()) return -1;
    return *std::min_element(recent_.begin(), recent_.end());
  }

 private:
  size_t span_;
  std::deque<int32_t> recent_;
};

}  // namespace helios::controller
