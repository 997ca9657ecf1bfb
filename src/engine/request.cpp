#include "helios/engine/request.h"

namespace helios::engine {

std::string_view finish_label(Finish finish) {
  switch (finish) {
    case Finish::kNone: return "none";
    case Finish::kStop: return "stop";
    case Finish::kLength: return "length";
    case Finish::kCancelled: return "cancelled";
    case Finish::kDeadline: return "deadline";
    case Finish::kError: return "error";
  }
  return "unknown";
}

void Update::merge(Update&& later) {
  text += later.text;
  tokens.insert(tokens.end(), std::make_move_iterator(later.tokens.begin()),
                std::make_move_iterator(later.tokens.end()));
  if (later.finished()) {
    finish = later.finish;
    error = std::move(later.error);
    error_code = later.error_code;
    usage = std::move(later.usage);
  }
}

void ResponseChannel::set_listener(std::weak_ptr<Listener> listener) {
  std::shared_ptr<Listener> live;
  {
    std::lock_guard lock(mutex_);
    listener_ = std::move(listener);
    if (has_pending_) live = listener_.lock();
  }
  if (live) live->on_update();
}

void ResponseChannel::push(Update update) {
  std::shared_ptr<Listener> listener;
  {
    std::lock_guard lock(mutex_);
    if (finished_) return;  // nothing follows the final update
    finished_ = update.finished();
    if (has_pending_) {
      pending_.merge(std::move(update));
    } else {
      pending_ = std::move(update);
      has_pending_ = true;
    }
    listener = listener_.lock();
  }
  if (listener) listener->on_update();
}

bool ResponseChannel::take(Update& out) {
  std::lock_guard lock(mutex_);
  if (!has_pending_) return false;
  out = std::move(pending_);
  pending_ = Update{};
  has_pending_ = false;
  return true;
}

bool ResponseChannel::finished() const {
  std::lock_guard lock(mutex_);
  return finished_;
}

Request::Request(RequestSpec spec) : spec_(std::move(spec)), arrival_(Clock::now()) {}

}  // namespace helios::engine
