#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace helios::train {

// A one-line training progress bar on stderr: steps, tokens/s, loss at the first/middle/last
// exit and the ETA. Redrawn in place on a terminal; on a pipe (CI logs) a plain line is
// printed every 10% instead, so logs stay readable.
class ProgressBar {
 public:
  ProgressBar(int64_t total_steps, bool enabled);
  void update(int64_t step, int64_t tokens, double loss_first, double loss_middle,
              double loss_last);
  // Prints a message on its own line without breaking the bar.
  void note(const std::string& message);
  void finish();

 private:
  int64_t total_;
  bool enabled_;
  bool tty_;
  int64_t last_printed_decile_ = -1;
  std::string last_line_;
  std::chrono::steady_clock::time_point started_;
};

}  // namespace helios::train
