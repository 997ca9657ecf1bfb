#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "helios/common/error.h"
#include "helios/common/files.h"
#include "helios/controller/slo_config.h"
#include "helios/common/json_limits.h"
#include "helios/serve/daemon.h"
#include "helios/serve/server_config.h"

namespace helios::app {
namespace {

namespace fs = std::filesystem;

struct ValidateArgs {
  fs::path file;
  std::string kind = "auto";  // auto | slo | server
};

// Reads the file once to tell the kinds apart; a file that is not even JSON is reported by the
// SLO parser, which accepts comments and names the line.
bool is_slo_file(const fs::path& file) {
  try {
    return controller::looks_like_slo_config(
        parse_json(read_file(file), file.string(), {.comments = true}));
  } catch (const Error&) {
    return true;
  }
}

// The checks the daemon makes before it serves, on the file alone (the admin token file is
// read only at start: it is a mounted secret).
nlohmann::json validate_server_config(const fs::path& file) {
  const serve::ServerConfig config = serve::ServerConfig::from_file(file);
  serve::check_admin_exposure(config);
  return config.to_json();
}

void run_validate(const ValidateArgs& args) {
  const bool slo = args.kind == "slo" || (args.kind == "auto" && is_slo_file(args.file));
  const nlohmann::json effective = slo ? controller::SloConfig::from_file(args.file).to_json()
                                       : validate_server_config(args.file);
  fmt::print("{}: valid {} config\n{}\n", args.file.string(), slo ? "SLO" : "server",
             effective.dump(2));
}

}  // namespace

void add_validate_config_command(CLI::App& app) {
  auto args = std::make_shared<ValidateArgs>();
  CLI::App* cmd = app.add_subcommand(
      "validate-config", "Check an SLO or server config file offline and print its effective form");
  cmd->add_option("file", args->file, "Config file (JSON; SLO files may hold comments)")
      ->required();
  cmd->add_option("--kind", args->kind,
                  "slo, server, or auto (an SLO file has objective, constraints or "
                  "model_repository at the top level)")
      ->check(CLI::IsMember({"auto", "slo", "server"}))
      ->capture_default_str();
  cmd->callback([args] { run_validate(*args); });
}

}  // namespace helios::app
