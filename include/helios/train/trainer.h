#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "helios/model/config.h"

namespace helios::train {

struct TrainOptions {
  model::ModelConfig config;  // the shape to train; exit_layers are the supervised exits
  std::filesystem::path train_text;
  std::filesystem::path valid_text;
  std::filesystem::path out_dir;
  // Optional HF tokenizer.json to train with (copied into out_dir); empty: byte tokenizer.
  std::filesystem::path tokenizer_json;

  int64_t steps = 1000;
  int64_t batch_size = 16;
  int64_t seq_len = 0;  // tokens per training window; 0: the model's context
  double learning_rate = 3e-3;
  double min_lr_ratio = 0.1;  // cosine decays to learning_rate * min_lr_ratio
  int64_t warmup_steps = 50;
  double weight_decay = 0.1;
  double grad_clip = 1.0;
  uint64_t seed = 1234;
  int64_t eval_every = 0;        // 0: only before and after training
  int64_t eval_windows = 64;     // held-out windows of seq_len tokens
  int64_t checkpoint_every = 0;  // > 0: also save the model to out_dir every N steps
  int64_t threads = 0;           // ATen intra-op threads; 0: library default
  bool progress = true;
};

struct TrainReport {
  std::vector<int32_t> exit_layers;
  std::vector<double> exit_weights;       // loss weight of each exit (rising with depth)
  std::vector<double> initial_valid_nll;  // nats/token per exit before training
  std::vector<double> final_valid_nll;    // after training
  int64_t parameters = 0;
  int64_t tokens_seen = 0;
  double seconds = 0.0;
};

// Weight of each exit in the early-exit loss: proportional to its depth, summing to 1.
std::vector<double> exit_loss_weights(const std::vector<int32_t>& exit_layers);

// Trains from scratch with the LayerSkip-style early-exit loss (next-token cross-entropy at
// every exit, weighted by exit_loss_weights), AdamW with linear warm-up then cosine decay,
// gradient clipping. Deterministic for a seed and thread count. Writes the model
// (config.json + model.safetensors) and training.json (this report) to out_dir.
TrainReport train_model(const TrainOptions& options);

}  // namespace helios::train
