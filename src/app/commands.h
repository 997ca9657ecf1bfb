#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>

namespace helios::app {

// A numeric flag check whose failure reads "--flag: must be <requirement>, got <value>".
inline CLI::Validator number_where(std::function<bool(double)> accept, std::string requirement) {
  return CLI::Validator(
      [accept, requirement](std::string& value) -> std::string {
        double number = 0.0;
        if (!CLI::detail::lexical_cast(value, number) || !accept(number)) {
          return "must be " + requirement + ", got " + value;
        }
        return {};
      },
      requirement);
}
inline CLI::Validator at_least(double minimum) {
  return number_where([minimum](double x) { return x >= minimum; },
                      ">= " + CLI::detail::to_string(minimum));
}

// Each registers a subcommand on `app`; the callback runs it and throws helios::Error on
// failure (main prints one line and exits non-zero).
void add_train_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_perplexity_command(CLI::App& app);
void add_info_command(CLI::App& app);
void add_zoo_command(CLI::App& app);
void add_convert_command(CLI::App& app);
void add_serve_command(CLI::App& app);
void add_client_command(CLI::App& app);
void add_validate_config_command(CLI::App& app);

}  // namespace helios::app
