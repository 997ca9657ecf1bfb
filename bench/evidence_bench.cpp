// Cost of the controller's same-prompt evidence for every model of a zoo: scoring a prompt
// sample with the model loaded whole (profile mode "serve") against streaming its checkpoint
// one layer at a time (profile mode "sample"), the early-exit continuations that give a
// streamed row its generated-token exits, and the bytes each holds. Prints a table and, with
// --json, one JSON object per model.
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "helios/common/cli_errors.h"
#include "helios/common/error.h"
#include "helios/common/files.h"
#include "helios/controller/slo_config.h"
#include "helios/engine/model_instance.h"
#include "helios/model/perplexity.h"

namespace {

namespace fs = std::filesystem;

struct Args {
  fs::path zoo;
  std::vector<fs::path> models;
  fs::path text_file;
  int64_t prompts = 16;
  int64_t prompt_tokens = 64;
  int64_t repeats = 3;
  double threshold = 0.3;
  fs::path json_out;
};

// Fastest of `repeats` runs of `body`, in seconds.
double best_seconds(int64_t repeats, const std::function<void()>& body) {
  double best = 0;
  for (int64_t r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    body();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (r == 0 || s < best) best = s;
  }
  return best;
}

int run(Args args) {
  if (!args.zoo.empty()) {
    for (const auto& entry : fs::directory_iterator(args.zoo)) {
      if (fs::exists(entry.path() / "config.json")) args.models.push_back(entry.path());
    }
  }
  std::sort(args.models.begin(), args.models.end());
  if (args.models.empty()) {
    throw helios::Error(helios::ErrorCode::kInvalidArgument, "no models (give --zoo or --model)");
  }
  if (args.prompts < 1 || args.prompt_tokens < 2) {
    throw helios::Error(helios::ErrorCode::kInvalidArgument,
                        "--prompts must be >= 1 and --prompt-tokens >= 2");
  }
  const std::string text = helios::read_file(args.text_file);
  const helios::model::ExitPolicy policy{args.threshold};
  using helios::controller::kEvidenceContinuationContext;
  using helios::controller::kEvidenceContinuationPrompts;
  using helios::controller::kEvidenceContinuationTokens;
  fmt::print("ATen threads: {}; {} prompts of {} tokens; {} continuations of {} tokens; best of "
             "{} runs\n",
             at::get_num_threads(), args.prompts, args.prompt_tokens, kEvidenceContinuationPrompts,
             kEvidenceContinuationTokens, args.repeats);
  fmt::print("{:<14} {:>7} {:>11} {:>11} {:>11} {:>11} {:>11} {:>8}\n", "model", "layers",
             "whole ms", "streamed ms", "contin. ms", "weights MiB", "held MiB", "held %");
  nlohmann::json results = nlohmann::json::array();
  for (const fs::path& dir : args.models) {
    const auto instance = helios::engine::ModelInstance::load(dir);
    const std::vector<int32_t> ids = instance->tokenizer().encode(text.substr(0, 1 << 20));
    const auto bos = static_cast<int32_t>(instance->config().bos_token_id);
    std::vector<std::vector<int32_t>> prompts;
    const auto span = static_cast<size_t>(args.prompt_tokens - 1);
    for (int64_t p = 0; p < args.prompts && ids.size() > span; ++p) {
      const size_t start = (static_cast<size_t>(p) * 7919) % (ids.size() - span);
      std::vector<int32_t> prompt{bos};
      prompt.insert(prompt.end(), ids.begin() + static_cast<std::ptrdiff_t>(start),
                    ids.begin() + static_cast<std::ptrdiff_t>(start + span));
      prompts.push_back(std::move(prompt));
    }
    std::vector<std::vector<int32_t>> continued;
    const size_t count = std::min(prompts.size(), static_cast<size_t>(kEvidenceContinuationPrompts));
    for (size_t i = 0; i < count; ++i) continued.push_back(prompts[i * prompts.size() / count]);

    helios::model::StreamedScores streamed;
    helios::model::StreamedContinuation continuation;
    const double whole_s = best_seconds(args.repeats, [&] {
      helios::model::score_prompts(instance->transformer(), prompts, policy);
    });
    const double streamed_s = best_seconds(args.repeats, [&] {
      streamed = helios::model::score_prompts_streamed(dir, prompts, policy, c10::kFloat, c10::kCPU);
    });
    const double continued_s = best_seconds(args.repeats, [&] {
      continuation = helios::model::continue_streamed(dir, continued, policy,
                                                      kEvidenceContinuationTokens,
                                                      kEvidenceContinuationContext, c10::kFloat,
                                                      c10::kCPU);
    });
    const auto weights = instance->loaded().weights.resident_bytes();
    const int64_t held = streamed.peak_weight_bytes + streamed.hidden_bytes;
    constexpr double kMiB = 1 << 20;
    fmt::print("{:<14} {:>7} {:>11.1f} {:>11.1f} {:>11.1f} {:>11.2f} {:>11.2f} {:>7.0f}%\n",
               dir.filename().string(), instance->config().num_hidden_layers, whole_s * 1e3,
               streamed_s * 1e3, continued_s * 1e3, static_cast<double>(weights) / kMiB,
               static_cast<double>(held) / kMiB,
               100.0 * static_cast<double>(held) / static_cast<double>(weights));
    results.push_back({{"model", dir.filename().string()},
                       {"layers", instance->config().num_hidden_layers},
                       {"prompts", prompts.size()},
                       {"prompt_tokens", args.prompt_tokens},
                       {"whole_seconds", whole_s},
                       {"streamed_seconds", streamed_s},
                       {"continuation_seconds", continued_s},
                       {"continuation_tokens", continuation.tokens},
                       {"continuation_bytes_read", continuation.bytes_read},
                       {"weight_bytes", weights},
                       {"streamed_peak_weight_bytes", streamed.peak_weight_bytes},
                       {"streamed_hidden_bytes", streamed.hidden_bytes}});
  }
  if (!args.json_out.empty()) std::ofstream(args.json_out) << results.dump(2) << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"helios evidence benchmark: the cost of scoring candidates on a prompt sample"};
  Args args;
  app.add_option("--zoo", args.zoo, "Directory whose subdirectories are models");
  app.add_option("--model", args.models, "Model directory (repeatable)");
  app.add_option("--text", args.text_file, "Text the prompts are cut from")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--prompts", args.prompts, "Prompts in the sample")->capture_default_str();
  app.add_option("--prompt-tokens", args.prompt_tokens, "Tokens per prompt, BOS included")
      ->capture_default_str();
  app.add_option("--repeats", args.repeats, "Runs per figure; the fastest is kept")
      ->capture_default_str();
  app.add_option("--threshold", args.threshold, "Exit threshold")->capture_default_str();
  app.add_option("--json", args.json_out, "Also write the results as JSON to this file");
  const helios::CliErrorStyle style{.prefix = "evidence_bench", .one_line_parse_errors = false};
  return helios::run_cli(app, argc, argv, style, [&] { return run(args); });
}
