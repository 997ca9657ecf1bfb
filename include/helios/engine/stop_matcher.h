#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace helios::engine {

// Cuts a streamed completion at the first stop string. Text that could still turn out to be
// the start of a stop string is held back until the next piece decides it, so a client never
// sees part of a stop string.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}

  // Appends `piece`; returns the text that is now safe to send. After a stop string matched,
  // stopped() is true and the text before it has been returned.
  std::string push(std::string_view piece);
  // The held-back text, at the end of the stream (no stop string can complete any more).
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace helios::engine
