#include <fmt/format.h>

#include "commands.h"
#include "helios/common/dtype.h"
#include "helios/common/error.h"
#include "helios/model/checkpoint.h"
#include "helios/model/gguf.h"

namespace helios::app {
namespace {

struct ConvertArgs {
  std::filesystem::path model_dir;
  std::filesystem::path out_dir;
  std::string dtype = "f32";
  int64_t max_shard_bytes = 0;
  std::string format = "safetensors";
};

// Writes the model as one GGUF file (llama.cpp's format) at --out.
void run_convert_gguf(const ConvertArgs& args) {
  if (args.dtype != "f32") {
    throw Error(ErrorCode::kInvalidArgument, "--dtype: GGUF export writes f32 only");
  }
  if (args.max_shard_bytes != 0) {
    throw Error(ErrorCode::kInvalidArgument, "--max-shard-bytes: GGUF export writes one file");
  }
  const model::LoadedModel loaded = model::load_model(args.model_dir);
  model::save_gguf(args.out_dir, loaded.config, loaded.weights,
                   std::filesystem::absolute(args.model_dir).lexically_normal().filename().string());
  fmt::print("{} -> {} (GGUF, f32, {} bytes of weights)\n", args.model_dir.string(),
             args.out_dir.string(), loaded.weights.resident_bytes());
}

// Rewrites a checkpoint in another dtype and/or shard layout. The tokenizer file, if any,
// travels with it.
void run_convert(const ConvertArgs& args) {
  if (args.format == "gguf") {
    run_convert_gguf(args);
    return;
  }
  if (std::filesystem::exists(args.out_dir) &&
      std::filesystem::equivalent(args.model_dir, args.out_dir)) {
    throw Error(ErrorCode::kInvalidArgument, "--out must differ from --model");
  }
  const c10::ScalarType dtype = parse_dtype(args.dtype, DtypeSpelling::kShort, "--dtype");
  model::LoadOptions load;
  load.dtype = dtype;  // f16/bf16 values round-trip exactly through their own dtype
  const model::LoadedModel loaded = model::load_model(args.model_dir, load);
  model::SaveOptions save;
  save.dtype = dtype;
  save.max_shard_bytes = args.max_shard_bytes;
  model::save_model(args.out_dir, loaded.config, loaded.weights, save);
  const auto tokenizer = args.model_dir / "tokenizer.json";
  if (std::filesystem::exists(tokenizer)) {
    std::filesystem::copy_file(tokenizer, args.out_dir / "tokenizer.json",
                               std::filesystem::copy_options::overwrite_existing);
  }
  fmt::print("{} -> {} ({}, {} bytes of weights)\n", args.model_dir.string(), args.out_dir.string(),
             args.dtype, loaded.weights.resident_bytes());
}

}  // namespace

void add_convert_command(CLI::App& app) {
  auto args = std::make_shared<ConvertArgs>();
  CLI::App* cmd = app.add_subcommand(
      "convert", "Rewrite a model in another dtype or shard layout, or as GGUF (llama.cpp)");
  cmd->add_option("--model", args->model_dir, "Model directory")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--out", args->out_dir, "Output model directory (with --format gguf: the file)")
      ->required();
  cmd->add_option("--format", args->format,
                  "safetensors (a model directory) or gguf (one llama.cpp file; byte-tokenizer "
                  "models, f32)")
      ->check(CLI::IsMember({"safetensors", "gguf"}))
      ->capture_default_str();
  cmd->add_option("--dtype", args->dtype, "Stored dtype")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}))
      ->capture_default_str();
  cmd->add_option("--max-shard-bytes", args->max_shard_bytes,
                  "Split into shards of at most this many bytes (0: one file)")
      ->check(at_least(0))
      ->capture_default_str();
  cmd->callback([args] { run_convert(*args); });
}

}  // namespace helios::app
