#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

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
  helios::app::add_zoo_command(app);
  helios::app::add_convert_command(app);
  helios::app::add_serve_command(app);
  helios::app::add_client_command(app);
  helios::app::add_validate_config_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // One line, like every other helios error; --help has the details.
    fmt::print(stderr, "helios: error: {}\n", e.what());
    return e.get_exit_code() != 0 ? e.get_exit_code() : 2;
  } catch (const helios::Error& e) {
    fmt::print(stderr, "helios: error: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "helios: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
