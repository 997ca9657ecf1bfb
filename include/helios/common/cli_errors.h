#pragma once

// How helios's command-line programs end when something goes wrong. Each one parses its flags
// and runs its body through run_cli, so a bad flag, a bad combination of flags and a failure
// end the same way everywhere: one line "<prefix>: <message>" on stderr and a fixed exit
// status. Only the standard library here: the bench tools that talk to helios over the wire
// include it without linking helios_core.

#include <functional>
#include <stdexcept>
#include <string_view>

namespace CLI {
class App;
}

namespace helios {

// A bad flag value or combination of flags found after parsing: exit status 2, like CLI11's
// own parse errors.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What differs between the programs: the prefix, and how CLI11's parse errors are shown.
struct CliErrorStyle {
  // Messages print as "<prefix>: <message>", e.g. prefix "helios: error".
  std::string_view prefix;
  // A parse error as that one line; otherwise in CLI11's own words, which add a "Run with
  // --help" line.
  bool one_line_parse_errors = true;
  // Exit status of a parse error; 0: CLI11's code for it.
  int parse_error_status = 0;
};

// Parses argv into `app` (--help and --version print and return 0), then returns what `body`
// returns. A parse error ends as `style` says, a UsageError with status 2, any other
// exception with status 1.
int run_cli(CLI::App& app, int argc, char** argv, const CliErrorStyle& style,
            const std::function<int()>& body);

}  // namespace helios
