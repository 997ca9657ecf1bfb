#include "helios/train/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>

namespace helios::train {
namespace {

std::string format_duration(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, (s / 60) % 60);
  if (s >= 60) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}

}  // namespace

ProgressBar::ProgressBar(int64_t total_steps, bool enabled)
    : total_(total_steps),
      enabled_(enabled),
      tty_(isatty(fileno(stderr)) != 0),
      started_(std::chrono::steady_clock::now()) {}

void ProgressBar::update(int64_t step, int64_t tokens, double loss_first, double loss_middle,
                         double loss_last) {
  if (!enabled_) return;
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  const double fraction = static_cast<double>(step) / static_cast<double>(total_);
  constexpr int kWidth = 24;
  const int filled = static_cast<int>(fraction * kWidth);
  const double eta = fraction > 0 ? elapsed * (1.0 - fraction) / fraction : 0.0;
  last_line_ = fmt::format(
      "[{}{}] {}/{} | {:.0f} tok/s | loss {:.3f} / {:.3f} / {:.3f} (first/mid/last exit) | "
      "ETA {}",
      std::string(filled, '='), std::string(kWidth - filled, ' '), step, total_,
      elapsed > 0 ? static_cast<double>(tokens) / elapsed : 0.0, loss_first, loss_middle, loss_last,
      format_duration(eta));
  if (tty_) {
    fmt::print(stderr, "\r{}\x1b[K", last_line_);
    std::fflush(stderr);
    return;
  }
  const int64_t decile = step * 10 / total_;
  if (decile != last_printed_decile_) {
    last_printed_decile_ = decile;
    fmt::print(stderr, "{}\n", last_line_);
  }
}

void ProgressBar::note(const std::string& message) {
  if (!enabled_) return;
  if (tty_) {
    fmt::print(stderr, "\r\x1b[K{}\n{}", message, last_line_);
  } else {
    fmt::print(stderr, "{}\n", message);
  }
  std::fflush(stderr);
}

void ProgressBar::finish() {
  if (!enabled_) return;
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  if (tty_) fmt::print(stderr, "\n");
  fmt::print(stderr, "trained {} steps in {}\n", total_, format_duration(elapsed));
}

}  // namespace helios::train
