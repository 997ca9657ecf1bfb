#pragma once

#include <CLI/CLI.hpp>

namespace helios::app {

// Each registers a subcommand on `app`; the callback runs it and throws helios::Error on
// failure (main prints one line and exits non-zero).
void add_train_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_perplexity_command(CLI::App& app);
void add_info_command(CLI::App& app);
void add_zoo_command(CLI::App& app);

}  // namespace helios::app
