#include <fmt/format.h>
#include <fmt/ranges.h>

#include "commands.h"
#include "helios/engine/memory_plan.h"
#include "helios/engine/model_instance.h"

namespace helios::app {

void add_info_command(CLI::App& app) {
  auto dir = std::make_shared<std::filesystem::path>();
  auto max_layers = std::make_shared<int64_t>(0);
  CLI::App* cmd = app.add_subcommand("info", "Describe a model directory");
  cmd->add_option("--model", *dir, "Model directory")->required()->check(CLI::ExistingDirectory);
  cmd->add_option("--max-layers", *max_layers,
                  "Report resident bytes for a load of this many layers (0: all)")
      ->capture_default_str();
  cmd->callback([dir, max_layers] {
    model::LoadOptions load;
    load.max_layers = *max_layers;
    const auto instance = engine::ModelInstance::load(*dir, load);
    const model::ModelConfig& c = instance->config();
    const model::ModelWeights& w = instance->loaded().weights;
    int64_t parameters = 0;  // of the loaded depth
    for (const auto& [name, tensor] : w.named_tensors(c.tie_word_embeddings)) {
      parameters += tensor.numel();
    }
    const engine::ModelFootprint footprint = engine::ModelFootprint::of(instance->transformer());
    fmt::print("model:            {}\n", dir->string());
    fmt::print("architecture:     {} ({} layers, hidden {}, intermediate {}, heads {}/{} kv)\n",
               c.architecture, c.num_hidden_layers, c.hidden_size, c.intermediate_size,
               c.num_attention_heads, c.num_key_value_heads);
    fmt::print("parameters:       {} at the loaded depth\n", parameters);
    fmt::print("vocabulary:       {} ({} tokenizer), bos {}, eos {}\n", c.vocab_size,
               c.tokenizer == model::TokenizerKind::kByte ? "byte" : "tokenizer.json",
               c.bos_token_id, c.eos_token_id);
    fmt::print("context:          {} positions, rope theta {}\n", c.max_position_embeddings,
               c.rope_theta);
    fmt::print("exit layers:      {}\n", fmt::join(c.exit_layers, ", "));
    fmt::print("loaded layers:    {} of {}\n", w.loaded_layers(), c.num_hidden_layers);
    fmt::print("resident weights: {} bytes (float32), {} bytes per layer\n", w.resident_bytes(),
               footprint.layer_bytes);
    fmt::print("kv per token:     {} bytes at the loaded depth\n",
               footprint.kv_bytes_per_token(w.loaded_layers()));
  });
}

}  // namespace helios::app
