#include <fmt/format.h>
#include <fmt/ranges.h>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "helios/common/error.h"
#include "helios/common/files.h"
#include "helios/engine/model_instance.h"
#include "helios/model/perplexity.h"

namespace helios::app {
namespace {

namespace fs = std::filesystem;

struct ZooArgs {
  fs::path zoo_dir;
  fs::path data_dir = "data";
  double threshold = model::kDefaultExitThreshold;
  int64_t max_text_tokens = 100000;
  bool json = false;
};

// One model of the zoo, scored on the held-out test split of the domain it was trained on
// (the first word of its recipe.txt, written by scripts/build_zoo.sh).
nlohmann::json describe(const fs::path& dir, const ZooArgs& args) {
  const std::string recipe = read_file(dir / "recipe.txt");
  const std::string domain = recipe.substr(0, recipe.find(' '));
  const nlohmann::json training = nlohmann::json::parse(read_file(dir / "training.json"));
  const auto instance = engine::ModelInstance::load(dir);
  std::vector<int32_t> ids =
      instance->tokenizer().encode(read_file(args.data_dir / domain / "test.txt"));
  if (args.max_text_tokens > 0 && static_cast<int64_t>(ids.size()) > args.max_text_tokens) {
    ids.resize(args.max_text_tokens);
  }
  const model::ExitPerplexity report =
      model::evaluate_perplexity(instance->transformer(), ids, {args.threshold});
  std::vector<double> shares;
  for (const int64_t count : report.exit_histogram) {
    shares.push_back(static_cast<double>(count) / static_cast<double>(report.tokens));
  }
  return {{"model", dir.filename().string()},
          {"domain", domain},
          {"parameters", training.at("parameters")},
          {"layers", instance->config().num_hidden_layers},
          {"hidden_size", instance->config().hidden_size},
          {"train_seconds", training.at("train_seconds")},
          {"tokens_seen", training.at("tokens_seen")},
          {"exit_layers", report.exit_layers},
          {"test_perplexity", report.perplexity},
          {"exit_share", shares},
          {"test_tokens", report.tokens},
          {"threshold", args.threshold}};
}

void run_zoo(const ZooArgs& args) {
  std::vector<fs::path> dirs;
  for (const auto& entry : fs::directory_iterator(args.zoo_dir)) {
    if (fs::exists(entry.path() / "recipe.txt")) dirs.push_back(entry.path());
  }
  std::sort(dirs.begin(), dirs.end());
  if (dirs.empty()) throw Error(ErrorCode::kNotFound, args.zoo_dir.string() + ": no zoo models");
  nlohmann::json models = nlohmann::json::array();
  for (const auto& dir : dirs) models.push_back(describe(dir, args));
  if (args.json) {
    fmt::print("{}\n", models.dump(2));
    return;
  }
  fmt::print(
      "| model | domain | parameters | layers x hidden | train time | test perplexity "
      "at exit 1..L | tokens exiting at exit 1..L (threshold {}) |\n",
      args.threshold);
  fmt::print("|---|---|---|---|---|---|---|\n");
  for (const auto& m : models) {
    std::vector<std::string> ppl, share;
    for (const double p : m["test_perplexity"]) ppl.push_back(fmt::format("{:.2f}", p));
    for (const double s : m["exit_share"]) share.push_back(fmt::format("{:.0f}%", 100 * s));
    fmt::print("| {} | {} | {:.2f} M | {} x {} | {:.0f} s | {} | {} |\n",
               m["model"].get<std::string>(), m["domain"].get<std::string>(),
               m["parameters"].get<double>() / 1e6, m["layers"].get<int64_t>(),
               m["hidden_size"].get<int64_t>(), m["train_seconds"].get<double>(),
               fmt::join(ppl, " / "), fmt::join(share, " / "));
  }
}

}  // namespace

void add_zoo_command(CLI::App& app) {
  auto args = std::make_shared<ZooArgs>();
  CLI::App* cmd = app.add_subcommand(
      "zoo", "Table of a model zoo: size, training time, held-out perplexity and exits per layer");
  cmd->add_option("--dir", args->zoo_dir, "Zoo directory (made by scripts/build_zoo.sh)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--data", args->data_dir, "Prepared data directory")->capture_default_str();
  cmd->add_option("--threshold", args->threshold, "Exit threshold")->capture_default_str();
  cmd->add_option("--max-text-tokens", args->max_text_tokens,
                  "Score the first N tokens of each test split (0: all)")
      ->capture_default_str();
  cmd->add_flag("--json", args->json, "Print JSON instead of a Markdown table");
  cmd->callback([args] { run_zoo(*args); });
}

}  // namespace helios::app
