// Decode throughput of early-exit models: tokens/s at several batch sizes, early exit on and
// off, for every model of a zoo, on each decode path (the fused CPU step and the ATen ops it
// replaced), measured alternately in one run. Prints a table and, with --json, one JSON object.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <nlohmann/json.hpp>

#include "helios/common/cli_errors.h"
#include "helios/common/error.h"
#include "helios/common/files.h"
#include "helios/engine/memory_plan.h"
#include "helios/engine/model_instance.h"
#include "helios/model/transformer.h"

namespace {

using helios::engine::ModelInstance;

struct Measurement {
  double tokens_per_second = 0.0;
  double mean_exit_layer = 0.0;
};

// Prefills `batch` prompts cut from `text` at different lengths, then times `steps` greedy
// decode steps of the whole batch.
Measurement measure(const ModelInstance& instance, const helios::model::Transformer& transformer,
                    const std::vector<int32_t>& text, int64_t batch, int64_t steps,
                    double threshold) {
  const int64_t bos = instance.config().bos_token_id;
  helios::kv::KvCache cache = helios::engine::make_cache_for(transformer, batch, 64 + steps + 2);
  std::vector<helios::kv::SequenceKv> sequences(batch);
  std::vector<helios::kv::SequenceKv*> pointers;
  std::vector<int32_t> next(batch);
  helios::model::ExitPolicy policy;
  policy.threshold = threshold;
  for (int64_t b = 0; b < batch; ++b) {
    // Prompts of 16..63 tokens from different places in the text.
    const int64_t length = 16 + (b * 13) % 48;
    const int64_t start = (b * 997) % std::max<int64_t>(1, text.size() - length);
    std::vector<int32_t> prompt{static_cast<int32_t>(bos)};
    prompt.insert(prompt.end(), text.begin() + start, text.begin() + start + length);
    cache.reserve(sequences[b], static_cast<int64_t>(prompt.size()) + steps + 1);
    const auto out = transformer.prefill(cache, sequences[b], prompt, policy);
    next[b] = static_cast<int32_t>(out.logits[0].argmax().item<int64_t>());
    pointers.push_back(&sequences[b]);
  }
  double exit_sum = 0.0;
  const auto started = std::chrono::steady_clock::now();
  for (int64_t step = 0; step < steps; ++step) {
    const auto out = transformer.decode(cache, pointers, next, policy);
    const at::Tensor argmax = out.logits.argmax(-1);
    for (int64_t b = 0; b < batch; ++b) {
      next[b] = static_cast<int32_t>(argmax[b].item<int64_t>());
      exit_sum += out.exits[b].exit_layer;
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  const double tokens = static_cast<double>(batch * steps);
  return Measurement{tokens / seconds, exit_sum / tokens};
}

struct Args {
  std::filesystem::path zoo;
  std::vector<std::filesystem::path> models;
  std::filesystem::path text_file;
  std::vector<int64_t> batches{1, 8, 32};
  std::vector<std::string> paths{"fused", "aten"};
  int64_t steps = 64;
  int64_t repeats = 3;
  double threshold = helios::model::kDefaultExitThreshold;
  std::filesystem::path json_out;
};

int run(Args args) {
  namespace fs = std::filesystem;
  if (!args.zoo.empty()) {
    for (const auto& entry : fs::directory_iterator(args.zoo)) {
      if (fs::exists(entry.path() / "config.json")) args.models.push_back(entry.path());
    }
  }
  std::sort(args.models.begin(), args.models.end());
  if (args.models.empty()) {
    throw helios::Error(helios::ErrorCode::kInvalidArgument, "no models (give --zoo or --model)");
  }
  const std::string text = helios::read_file(args.text_file);

  nlohmann::json results = nlohmann::json::array();
  for (const std::string& path : args.paths) {
    if (path != "fused" && path != "aten") {
      throw helios::Error(helios::ErrorCode::kInvalidArgument,
                          "--paths: '" + path + "' is neither fused nor aten");
    }
  }
  // ATen's own ops run on get_num_threads() threads; matmuls run on the BLAS library's threads.
  // The fused step runs every pass on ATen's threads.
  fmt::print("ATen threads: {}, {} decode steps per run, best of {} runs\n", at::get_num_threads(),
             args.steps, args.repeats);
  fmt::print("{:<16} {:<12} {:>6} {:>14} {:>14} {:>10} {:>10}\n", "model", "path", "batch",
             "EE off tok/s", "EE on tok/s", "speed-up", "mean exit");
  for (const auto& dir : args.models) {
    const auto instance = ModelInstance::load(dir);
    const std::vector<int32_t> ids = instance->tokenizer().encode(text.substr(0, 1 << 20));
    // One transformer per path over the instance's weights.
    std::vector<std::unique_ptr<helios::model::Transformer>> transformers;
    std::vector<std::string> labels;
    for (const std::string& path : args.paths) {
      auto t = std::make_unique<helios::model::Transformer>(instance->config(),
                                                            instance->loaded().weights);
      t->set_fused_cpu_decode(path == "fused");
      if (path == "fused" && !t->fused_cpu_decode()) {
        throw helios::Error(helios::ErrorCode::kFailedPrecondition,
                            dir.string() + ": the fused CPU step needs float32 weights on the CPU");
      }
      labels.push_back(path == "fused" ? "fused-" + t->cpu_kernels() : path);
      transformers.push_back(std::move(t));
    }
    for (const int64_t batch : args.batches) {
      for (const auto& t : transformers) measure(*instance, *t, ids, batch, 4, 2.0);  // warm-up
      // Paths, and off and on, alternate, so that a slow spell of the machine hits all alike.
      std::vector<Measurement> off(transformers.size()), on(transformers.size());
      for (int64_t r = 0; r < args.repeats; ++r) {
        for (size_t p = 0; p < transformers.size(); ++p) {
          const Measurement a = measure(*instance, *transformers[p], ids, batch, args.steps, 2.0);
          const Measurement b =
              measure(*instance, *transformers[p], ids, batch, args.steps, args.threshold);
          if (a.tokens_per_second > off[p].tokens_per_second) off[p] = a;
          if (b.tokens_per_second > on[p].tokens_per_second) on[p] = b;
        }
      }
      for (size_t p = 0; p < transformers.size(); ++p) {
        fmt::print("{:<16} {:<12} {:>6} {:>14.1f} {:>14.1f} {:>9.2f}x {:>10.2f}\n",
                   dir.filename().string(), labels[p], batch, off[p].tokens_per_second,
                   on[p].tokens_per_second, on[p].tokens_per_second / off[p].tokens_per_second,
                   on[p].mean_exit_layer);
        results.push_back({{"model", dir.filename().string()},
                           {"path", labels[p]},
                           {"batch", batch},
                           {"layers", instance->config().num_hidden_layers},
                           {"tokens_per_second_ee_off", off[p].tokens_per_second},
                           {"tokens_per_second_ee_on", on[p].tokens_per_second},
                           {"mean_exit_layer_ee_on", on[p].mean_exit_layer},
                           {"threshold", args.threshold}});
      }
    }
  }
  if (!args.json_out.empty()) std::ofstream(args.json_out) << results.dump(2) << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"helios decode benchmark"};
  Args args;
  app.add_option("--zoo", args.zoo, "Directory whose subdirectories are models");
  app.add_option("--model", args.models, "Model directory (repeatable)");
  app.add_option("--text", args.text_file, "Text the prompts are cut from")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--batch", args.batches, "Batch sizes")->delimiter(',')->capture_default_str();
  app.add_option("--paths", args.paths, "Decode paths to measure side by side: fused, aten")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--steps", args.steps, "Decode steps timed per run")->capture_default_str();
  app.add_option("--repeats", args.repeats, "Runs per figure; the fastest is kept (noisy machines)")
      ->capture_default_str();
  app.add_option("--threshold", args.threshold, "Exit threshold with early exit on")
      ->capture_default_str();
  app.add_option("--json", args.json_out, "Also write the results as JSON to this file");
  const helios::CliErrorStyle style{.prefix = "decode_bench", .one_line_parse_errors = false};
  return helios::run_cli(app, argc, argv, style, [&] { return run(args); });
}
