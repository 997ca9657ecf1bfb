#include <fmt/format.h>

#include "commands.h"
#include "helios/train/trainer.h"

namespace helios::app {

void add_train_command(CLI::App& app) {
  auto options = std::make_shared<train::TrainOptions>();
  auto exit_layers = std::make_shared<std::vector<int>>();
  auto byte_vocab = std::make_shared<int64_t>(258);
  model::ModelConfig& c = options->config;
  c.hidden_size = 128;
  c.intermediate_size = 384;
  c.num_hidden_layers = 6;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 256;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = true;

  CLI::App* cmd = app.add_subcommand("train", "Train an early-exit model from scratch on text");
  cmd->add_option("--train", options->train_text, "Training text file")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--valid", options->valid_text, "Held-out text file")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--out", options->out_dir, "Output model directory")->required();
  cmd->add_option("--tokenizer-json", options->tokenizer_json,
                  "HF tokenizer.json to use (default: byte-level tokenizer)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--hidden", c.hidden_size, "hidden_size")->capture_default_str();
  cmd->add_option("--intermediate", c.intermediate_size, "intermediate_size")
      ->capture_default_str();
  cmd->add_option("--layers", c.num_hidden_layers, "num_hidden_layers")->capture_default_str();
  cmd->add_option("--heads", c.num_attention_heads, "num_attention_heads")->capture_default_str();
  cmd->add_option("--kv-heads", c.num_key_value_heads, "num_key_value_heads")
      ->capture_default_str();
  cmd->add_option("--context", c.max_position_embeddings, "max_position_embeddings")
      ->capture_default_str();
  cmd->add_option("--exit-layers", *exit_layers, "Exit layers, 1-based (default: every layer)")
      ->delimiter(',');
  cmd->add_option("--byte-vocab", *byte_vocab,
                  "Vocabulary size of the byte tokenizer (256 bytes + bos + eos + spare)")
      ->capture_default_str();
  cmd->add_option("--steps", options->steps, "Optimizer steps")->capture_default_str();
  cmd->add_option("--batch", options->batch_size, "Windows per step")->capture_default_str();
  cmd->add_option("--seq-len", options->seq_len, "Tokens per window (0: the context)")
      ->capture_default_str();
  cmd->add_option("--lr", options->learning_rate, "Peak learning rate")->capture_default_str();
  cmd->add_option("--warmup", options->warmup_steps, "Warm-up steps")->capture_default_str();
  cmd->add_option("--weight-decay", options->weight_decay, "AdamW weight decay")
      ->capture_default_str();
  cmd->add_option("--eval-every", options->eval_every, "Held-out evaluation interval (steps)")
      ->capture_default_str();
  cmd->add_option("--eval-windows", options->eval_windows, "Held-out windows")
      ->capture_default_str();
  cmd->add_option("--checkpoint-every", options->checkpoint_every,
                  "Save the model every N steps (0: only at the end)")
      ->capture_default_str();
  cmd->add_option("--seed", options->seed, "Random seed")->capture_default_str();
  cmd->add_option("--threads", options->threads,
                  "ATen intra-op threads (0: library default; matmuls use the BLAS threads)")
      ->capture_default_str();
  cmd->add_flag("!--no-progress", options->progress, "Hide the progress bar");

  cmd->callback([options, exit_layers, byte_vocab] {
    model::ModelConfig& config = options->config;
    if (options->tokenizer_json.empty()) {
      config.tokenizer = model::TokenizerKind::kByte;
      config.vocab_size = *byte_vocab;
      config.bos_token_id = 256;
      config.eos_token_id = 257;
    }
    config.exit_layers.clear();
    if (exit_layers->empty()) {
      for (int l = 1; l <= config.num_hidden_layers; ++l) config.exit_layers.push_back(l);
    } else {
      config.exit_layers = *exit_layers;
    }
    const train::TrainReport report = train::train_model(*options);
    fmt::print("model: {}\nparameters: {}\ntrain time: {:.1f} s ({:.0f} tokens/s)\n",
               options->out_dir.string(), report.parameters, report.seconds,
               static_cast<double>(report.tokens_seen) / report.seconds);
    fmt::print("{:>10} {:>14} {:>14}\n", "exit", "held-out ppl", "(before)");
    for (size_t e = 0; e < report.exit_layers.size(); ++e) {
      fmt::print("{:>10} {:>14.3f} {:>14.3f}\n", report.exit_layers[e],
                 std::exp(report.final_valid_nll[e]), std::exp(report.initial_valid_nll[e]));
    }
  });
}

}  // namespace helios::app
