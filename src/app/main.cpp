#include <cstdio>
#include <exception>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "commands.h"
#include "helios/common/error.h"

int main(int argc, char** argv) {
  CLI::App app{"helios: an inference server for early-exit LLMs"};
  app.set_version_flag("--version", std::string("helios ") + HELIOS_VERSION);
  app.require_subcommand(1);
  helios::app::add_train_command(app);
  helios::app::add_generate_command(app);
  helios::app::add_perplexity_command(app);
  helios::app::add_info_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const helios::Error& e) {
    fmt::print(stderr, "helios: error: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "helios: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
