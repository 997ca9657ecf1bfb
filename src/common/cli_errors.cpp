#include "helios/common/cli_errors.h"

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

namespace helios {
namespace {

void print(const CliErrorStyle& style, const char* message) {
  fmt::print(stderr, "{}: {}\n", style.prefix, message);
}

}  // namespace

int run_cli(CLI::App& app, int argc, char** argv, const CliErrorStyle& style,
            const std::function<int()>& body) {
  try {
    app.parse(argc, argv);
    return body();
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    if (style.one_line_parse_errors) {
      print(style, e.what());
    } else {
      app.exit(e);
    }
    if (style.parse_error_status != 0) return style.parse_error_status;
    return e.get_exit_code() != 0 ? e.get_exit_code() : 2;
  } catch (const UsageError& e) {
    print(style, e.what());
    return 2;
  } catch (const std::exception& e) {
    print(style, e.what());
    return 1;
  }
}

}  // namespace helios
