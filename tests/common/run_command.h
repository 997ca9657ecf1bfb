#pragma once

#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "common/scratch_dir.h"

namespace helios::testing {

struct CommandResult {
  int exit_code = -1;  // -1 when the command did not exit normally
  std::string output;  // stdout and stderr together
};

// Runs `command` through the shell, capturing its output.
inline CommandResult run_command(const std::string& command) {
  ScratchDir dir("command");
  const auto output = dir.path() / "output.txt";
  const int status = std::system((command + " > '" + output.string() + "' 2>&1").c_str());
  CommandResult result;
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream in(output, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  result.output = buffer.str();
  return result;
}

// `promtool check metrics` (Prometheus' own parser plus its linter) on an exposition `text`.
inline CommandResult promtool_check(const std::string& text) {
  ScratchDir dir("promtool");
  const auto input = dir.path() / "metrics.txt";
  std::ofstream(input, std::ios::binary) << text;
  return run_command("promtool check metrics < '" + input.string() + "'");
}

}  // namespace helios::testing
