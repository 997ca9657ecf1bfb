#include <CLI/CLI.hpp>

#include "commands.h"
#include "helios/common/cli_errors.h"

int main(int argc, char** argv) {
  CLI::App app{"helios: an inference server for early-exit LLMs"};
  app.set_version_flag("--version", std::string("helios ") + HELIOS_VERSION);
  app.require_subcommand(1);
  helios::app::add_train_command(app);
  helios::app::add_generate_command(app);
  helios::app::add_perplexity_command(app);
  helios::app::add_info_command(app);
  helios::app::add_zoo_command(app);
  helios::app::add_convert_command(app);
  helios::app::add_serve_command(app);
  helios::app::add_client_command(app);
  helios::app::add_validate_config_command(app);
  // The subcommands run inside parsing, as CLI11 callbacks. A parse error is one line, like
  // every other helios error (--help has the details), and exits with CLI11's code for it.
  return helios::run_cli(app, argc, argv, {.prefix = "helios: error"}, [] { return 0; });
}
