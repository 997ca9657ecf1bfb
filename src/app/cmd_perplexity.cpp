#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "helios/common/error.h"
#include "helios/common/files.h"
#include "helios/engine/model_instance.h"
#include "helios/model/perplexity.h"

namespace helios::app {
namespace {

struct PerplexityArgs {
  std::filesystem::path model_dir;
  std::filesystem::path text_file;
  double threshold = model::kDefaultExitThreshold;
  int64_t max_layers = 0;
  int64_t window = 0;
  int64_t max_text_tokens = 0;
  bool json = false;
};

void run_perplexity(const PerplexityArgs& args) {
  const std::string text = read_file(args.text_file);
  if (text.empty()) throw Error(ErrorCode::kInvalidArgument, args.text_file.string() + ": empty");

  model::LoadOptions load;
  load.max_layers = args.max_layers;
  const auto instance = engine::ModelInstance::load(args.model_dir, load);
  std::vector<int32_t> ids = instance->tokenizer().encode(text);
  if (args.max_text_tokens > 0 && static_cast<int64_t>(ids.size()) > args.max_text_tokens) {
    ids.resize(args.max_text_tokens);
  }
  model::ExitPolicy policy;
  policy.threshold = args.threshold;
  const model::ExitPerplexity report =
      model::evaluate_perplexity(instance->transformer(), ids, policy, args.window);

  if (args.json) {
    const nlohmann::json json = {{"exit_layers", report.exit_layers},
                                 {"perplexity", report.perplexity},
                                 {"tokens", report.tokens},
                                 {"threshold", args.threshold},
                                 {"exit_histogram", report.exit_histogram}};
    fmt::print("{}\n", json.dump());
    return;
  }
  fmt::print("{}: {} tokens, threshold {}\n", args.text_file.string(), report.tokens,
             args.threshold);
  fmt::print("{:>6} {:>12} {:>16}\n", "exit", "perplexity", "tokens exiting");
  for (size_t e = 0; e < report.exit_layers.size(); ++e) {
    fmt::print(
        "{:>6} {:>12.3f} {:>9} ({:5.1f}%)\n", report.exit_layers[e], report.perplexity[e],
        report.exit_histogram[e],
        100.0 * static_cast<double>(report.exit_histogram[e]) / static_cast<double>(report.tokens));
  }
}

}  // namespace

void add_perplexity_command(CLI::App& app) {
  auto args = std::make_shared<PerplexityArgs>();
  CLI::App* cmd = app.add_subcommand("perplexity", "Perplexity of a text at every exit layer");
  cmd->add_option("--model", args->model_dir, "Model directory")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--text", args->text_file, "Text file")->required()->check(CLI::ExistingFile);
  cmd->add_option("--threshold", args->threshold, "Exit threshold for the histogram")
      ->check(at_least(0))
      ->capture_default_str();
  cmd->add_option("--max-layers", args->max_layers, "Load only this many layers (0: all)")
      ->check(at_least(0))
      ->capture_default_str();
  cmd->add_option("--window", args->window, "Tokens per window (0: model context)")
      ->capture_default_str();
  cmd->add_option("--max-text-tokens", args->max_text_tokens,
                  "Score only the first N tokens of the text (0: all)")
      ->capture_default_str();
  cmd->add_flag("--json", args->json, "Print one JSON object");
  cmd->callback([args] { run_perplexity(*args); });
}

}  // namespace helios::app
