#include <fmt/format.h>

#include <chrono>
#include <map>

#include "commands.h"
#include "helios/common/error.h"
#include "helios/engine/generator.h"
#include "helios/engine/memory_plan.h"
#include "helios/engine/model_instance.h"

namespace helios::app {
namespace {

struct GenerateArgs {
  std::filesystem::path model_dir;
  std::string prompt;
  int64_t max_tokens = 64;
  int64_t max_layers = 0;
  double threshold = model::kDefaultExitThreshold;
  std::string metric = "maxprob";
  engine::SamplingParams sampling;
  bool details = true;
};

// A token's text for the per-token table: printable ASCII as is, anything else escaped.
std::string printable(const std::string& bytes) {
  std::string out;
  for (const unsigned char c : bytes) {
    if (c == '\n') {
      out += "\\n";
    } else if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  return out;
}

void run_generate(const GenerateArgs& args) {
  if (args.prompt.empty()) throw Error(ErrorCode::kInvalidArgument, "--prompt must not be empty");
  if (args.max_tokens <= 0) throw Error(ErrorCode::kInvalidArgument, "--max-tokens must be > 0");
  model::LoadOptions load;
  load.max_layers = args.max_layers;
  const auto instance = engine::ModelInstance::load(args.model_dir, load);
  const tokenizer::Tokenizer& tok = instance->tokenizer();

  engine::GenerationRequest request;
  request.prompt.push_back(tok.bos_id());
  for (const int32_t id : tok.encode(args.prompt)) request.prompt.push_back(id);
  request.max_tokens = args.max_tokens;
  request.sampling = args.sampling;
  const int64_t context = instance->config().max_position_embeddings;
  if (static_cast<int64_t>(request.prompt.size()) + args.max_tokens > context) {
    throw Error(ErrorCode::kInvalidArgument,
                fmt::format("--prompt ({} tokens) plus --max-tokens ({}) exceeds the model "
                            "context of {} tokens",
                            request.prompt.size(), args.max_tokens, context));
  }
  model::ExitPolicy policy;
  policy.threshold = args.threshold;
  if (args.metric == "entropy") policy.metric = model::ConfidenceMetric::kEntropy;

  const auto& transformer = instance->transformer();
  kv::KvCache cache = engine::make_cache_for(
      transformer, 1, static_cast<int64_t>(request.prompt.size()) + args.max_tokens);
  const auto started = std::chrono::steady_clock::now();
  const auto results = engine::generate_batch(
      transformer, cache, std::span<const engine::GenerationRequest>(&request, 1), policy);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  const engine::GenerationResult& result = results.front();

  std::vector<int32_t> ids;
  for (const auto& token : result.tokens) ids.push_back(token.id);
  fmt::print("{}{}\n", args.prompt, tok.decode(ids));
  if (!args.details) return;
  fmt::print("\n{:>5} {:<12} {:>5} {:>7} {}\n", "#", "token", "exit", "conf", "greedy");
  std::map<int32_t, int64_t> histogram;
  double exit_sum = 0.0;
  int64_t greedy = 0;
  for (size_t i = 0; i < result.tokens.size(); ++i) {
    const auto& token = result.tokens[i];
    const int32_t id = token.id;
    fmt::print("{:>5} {:<12} {:>5} {:>7.3f} {}\n", i,
               printable(tok.decode(std::span<const int32_t>(&id, 1))), token.exit.exit_layer,
               token.exit.confidence, token.exit.greedy_exit ? "yes" : "");
    ++histogram[token.exit.exit_layer];
    exit_sum += token.exit.exit_layer;
    greedy += token.exit.greedy_exit ? 1 : 0;
  }
  const double n = static_cast<double>(result.tokens.size());
  fmt::print(
      "\nsummary: {} tokens in {:.3f} s ({:.1f} tokens/s), finish: {}, loaded layers {}/{}\n",
      result.tokens.size(), seconds, n / seconds, engine::finish_label(result.finish_reason),
      transformer.loaded_layers(), instance->config().num_hidden_layers);
  fmt::print("mean exit layer {:.2f}, greedy exits {} ({:.1f}%), threshold {}\n", exit_sum / n,
             greedy, 100.0 * greedy / n, args.threshold);
  for (const auto& [layer, count] : histogram) {
    fmt::print("  exit {:>3}: {:>5} tokens ({:5.1f}%)\n", layer, count, 100.0 * count / n);
  }
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate text with early exit");
  cmd->add_option("--model", args->model_dir, "Model directory")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--prompt", args->prompt, "Prompt text")->required();
  cmd->add_option("--max-tokens", args->max_tokens, "Tokens to generate")
      ->check(at_least(1))
      ->capture_default_str();
  cmd->add_option("--max-layers", args->max_layers, "Load only this many layers (0: all)")
      ->check(at_least(0))
      ->capture_default_str();
  cmd->add_option("--threshold", args->threshold, "Exit confidence threshold (> 1: no early exit)")
      ->check(at_least(0))
      ->capture_default_str();
  cmd->add_option("--metric", args->metric, "Confidence metric")
      ->check(CLI::IsMember({"maxprob", "entropy"}))
      ->capture_default_str();
  cmd->add_option("--temperature", args->sampling.temperature, "0: greedy")
      ->check(at_least(0))
      ->capture_default_str();
  cmd->add_option("--top-p", args->sampling.top_p, "Nucleus mass, in (0, 1]")
      ->check(number_where([](double p) { return p > 0.0 && p <= 1.0; }, "in (0, 1]"))
      ->capture_default_str();
  cmd->add_option("--top-k", args->sampling.top_k, "Top-k cut (0: none)")
      ->check(at_least(0))
      ->capture_default_str();
  cmd->add_option("--seed", args->sampling.seed, "Sampling seed")->capture_default_str();
  cmd->add_flag("!--no-details", args->details, "Print only the text");
  cmd->callback([args] { run_generate(*args); });
}

}  // namespace helios::app
