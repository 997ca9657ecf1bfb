#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "helios/common/error.h"

namespace helios::controller {

// The Confidence Breach Counter: how many of the last `window` generated tokens left the
// network below the confidence threshold (greedy exits at the last loaded layer). A ring
// buffer, O(1) per token, because it is fed on every decode step.
class BreachCounter {
 public:
  explicit BreachCounter(int64_t window) { set_window(window); }

  void record(bool breach) {
    if (size_ == window()) {
      count_ -= flags_[head_];
    } else {
      ++size_;
    }
    flags_[head_] = breach ? 1 : 0;
    count_ += flags_[head_];
    head_ = (head_ + 1) % window();
  }

  int64_t count() const { return count_; }
  int64_t size() const { return size_; }
  int64_t window() const { return static_cast<int64_t>(flags_.size()); }

  void reset() {
    std::fill(flags_.begin(), flags_.end(), 0);
    head_ = size_ = count_ = 0;
  }

  // Resizes the window, keeping the newest tokens (a live SLO edit must not forget a breach
  // streak in progress).
  void set_window(int64_t window) {
    if (window < 1) {
      throw Error(ErrorCode::kInvalidArgument,
                  "breach window must be >= 1 token, got " + std::to_string(window));
    }
    std::vector<uint8_t> newest;  // oldest first
    for (int64_t i = size_; i > 0; --i) {
      newest.push_back(flags_[(head_ - i + this->window()) % this->window()]);
    }
    if (static_cast<int64_t>(newest.size()) > window) {
      newest.erase(newest.begin(), newest.end() - window);
    }
    flags_.assign(static_cast<size_t>(window), 0);
    head_ = size_ = count_ = 0;
    for (const uint8_t flag : newest) record(flag != 0);
  }

 private:
  std::vector<uint8_t> flags_;
  int64_t head_ = 0;  // where the next token goes
  int64_t size_ = 0;
  int64_t count_ = 0;
};

}  // namespace helios::controller
