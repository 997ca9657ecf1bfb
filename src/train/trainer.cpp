#include "helios/train/trainer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>
#include <torch/optim/adamw.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numbers>
#include <unordered_set>

#include "helios/common/error.h"
#include "helios/common/files.h"
#include "helios/model/checkpoint.h"
#include "helios/model/transformer.h"
#include "helios/model/weights.h"
#include "helios/tokenizer/tokenizer.h"
#include "helios/train/progress.h"

namespace helios::train {
namespace {

at::Tensor read_tokens(const std::filesystem::path& path, const tokenizer::Tokenizer& tokenizer) {
  const std::vector<int32_t> ids = tokenizer.encode(read_file(path));
  if (ids.size() < 2) throw Error(ErrorCode::kInvalidArgument, path.string() + ": text too short");
  return at::tensor(ids, at::TensorOptions().dtype(at::kInt)).to(at::kLong);
}

// Windows of seq_len + 1 tokens starting at `starts`: inputs are [:, :-1], targets [:, 1:].
at::Tensor gather_windows(const at::Tensor& tokens, const at::Tensor& starts, int64_t seq_len) {
  const at::Tensor offsets = at::arange(seq_len + 1, at::kLong);
  return tokens.index_select(0, (starts.unsqueeze(1) + offsets).view({-1}))
      .view({starts.size(0), seq_len + 1});
}

// Per-exit mean next-token loss of `windows` [batch, seq_len + 1].
std::vector<at::Tensor> exit_losses(const model::Transformer& transformer,
                                    const at::Tensor& windows) {
  const int64_t seq_len = windows.size(1) - 1;
  const at::Tensor inputs = windows.narrow(1, 0, seq_len);
  const at::Tensor targets = windows.narrow(1, 1, seq_len).reshape({-1});
  std::vector<at::Tensor> losses;
  for (const at::Tensor& hidden : transformer.forward_exits(inputs)) {
    const at::Tensor logits = transformer.exit_logits(hidden);
    losses.push_back(at::cross_entropy_loss(logits.view({-1, logits.size(-1)}), targets));
  }
  return losses;
}

std::vector<double> evaluate(const model::Transformer& transformer, const at::Tensor& windows) {
  at::NoGradGuard no_grad;
  std::vector<double> sums(transformer.exit_points().size(), 0.0);
  constexpr int64_t kChunk = 16;
  for (int64_t first = 0; first < windows.size(0); first += kChunk) {
    const at::Tensor chunk = windows.narrow(0, first, std::min(kChunk, windows.size(0) - first));
    const std::vector<at::Tensor> losses = exit_losses(transformer, chunk);
    for (size_t e = 0; e < losses.size(); ++e) {
      sums[e] += losses[e].item<double>() * static_cast<double>(chunk.size(0));
    }
  }
  for (double& sum : sums) sum /= static_cast<double>(windows.size(0));
  return sums;
}

double learning_rate_at(const TrainOptions& options, int64_t step) {
  if (step < options.warmup_steps) {
    return options.learning_rate * static_cast<double>(step + 1) /
           static_cast<double>(options.warmup_steps);
  }
  const double progress =
      static_cast<double>(step - options.warmup_steps) /
      static_cast<double>(std::max<int64_t>(1, options.steps - options.warmup_steps));
  const double cosine = 0.5 * (1.0 + std::cos(std::numbers::pi * std::min(1.0, progress)));
  const double floor = options.learning_rate * options.min_lr_ratio;
  return floor + (options.learning_rate - floor) * cosine;
}

std::vector<at::Tensor> trainable_tensors(const model::ModelWeights& weights) {
  std::vector<at::Tensor> params;
  std::unordered_set<const void*> seen;
  auto add = [&](const at::Tensor& t) {
    if (seen.insert(t.unsafeGetTensorImpl()).second) params.push_back(t);
  };
  add(weights.embed_tokens);
  for (const model::LayerWeights& layer : weights.layers) {
    for (const at::Tensor& t : layer.tensors()) add(t);
  }
  add(weights.final_norm);
  add(weights.lm_head);
  return params;
}

void write_report(const std::filesystem::path& path, const TrainOptions& options,
                  const TrainReport& report) {
  nlohmann::json json = {
      {"exit_layers", report.exit_layers},
      {"exit_loss_weights", report.exit_weights},
      {"initial_valid_nll", report.initial_valid_nll},
      {"final_valid_nll", report.final_valid_nll},
      {"parameters", report.parameters},
      {"tokens_seen", report.tokens_seen},
      {"train_seconds", report.seconds},
      {"steps", options.steps},
      {"batch_size", options.batch_size},
      {"seq_len", options.seq_len},
      {"learning_rate", options.learning_rate},
      {"seed", options.seed},
      {"train_text", options.train_text.filename().string()},
      {"valid_text", options.valid_text.filename().string()},
  };
  std::ofstream(path) << json.dump(2) << "\n";
}

}  // namespace

std::vector<double> exit_loss_weights(const std::vector<int32_t>& exit_layers) {
  double total = 0.0;
  for (const int32_t layer : exit_layers) total += layer;
  std::vector<double> weights;
  for (const int32_t layer : exit_layers) weights.push_back(layer / total);
  return weights;
}

TrainReport train_model(const TrainOptions& requested) {
  TrainOptions options = requested;
  options.config.validate();
  if (options.seq_len == 0) options.seq_len = options.config.max_position_embeddings;
  if (options.seq_len < options.config.max_position_embeddings) {
    // RoPE positions never seen in training degrade sharply (measured on the zoo: perplexity
    // 5.8 -> 8.3 when a model trained on 128-token windows read 512-token ones).
    spdlog::warn(
        "train: seq_len {} is shorter than the context of {}; later positions are "
        "never trained",
        options.seq_len, options.config.max_position_embeddings);
  }
  if (options.steps <= 0 || options.batch_size <= 0 || options.seq_len <= 1) {
    throw Error(ErrorCode::kInvalidArgument,
                "train: steps and batch_size must be > 0 and seq_len > 1");
  }
  if (options.seq_len > options.config.max_position_embeddings) {
    throw Error(ErrorCode::kInvalidArgument, "train: seq_len exceeds max_position_embeddings");
  }
  if (options.threads > 0) at::set_num_threads(static_cast<int>(options.threads));
  std::filesystem::create_directories(options.out_dir);
  if (!options.tokenizer_json.empty()) {
    std::filesystem::copy_file(options.tokenizer_json, options.out_dir / "tokenizer.json",
                               std::filesystem::copy_options::overwrite_existing);
  }
  const auto tokenizer = tokenizer::load_tokenizer(options.out_dir, options.config);
  const at::Tensor train_tokens = read_tokens(options.train_text, *tokenizer);
  const at::Tensor valid_tokens = read_tokens(options.valid_text, *tokenizer);
  for (const auto& [name, tokens] : {std::pair{"train", &train_tokens}, {"valid", &valid_tokens}}) {
    if (tokens->size(0) <= options.seq_len + 1) {
      throw Error(ErrorCode::kInvalidArgument, std::string(name) + " text shorter than seq_len");
    }
  }

  model::ModelWeights weights = model::init_weights(options.config, options.seed);
  std::vector<at::Tensor> params = trainable_tensors(weights);
  TrainReport report;
  for (at::Tensor& p : params) {
    p.set_requires_grad(true);
    report.parameters += p.numel();
  }
  const model::Transformer transformer(options.config, weights);
  report.exit_layers = transformer.exit_points();
  report.exit_weights = exit_loss_weights(report.exit_layers);

  // Held-out windows evenly spaced over the validation text: the same every evaluation.
  const int64_t valid_span = valid_tokens.size(0) - options.seq_len - 1;
  const at::Tensor valid_starts =
      at::linspace(0, static_cast<double>(valid_span), options.eval_windows).to(at::kLong);
  const at::Tensor valid_windows = gather_windows(valid_tokens, valid_starts, options.seq_len);
  report.initial_valid_nll = evaluate(transformer, valid_windows);

  torch::optim::AdamW optimizer(params, torch::optim::AdamWOptions(options.learning_rate)
                                            .betas({0.9, 0.95})
                                            .weight_decay(options.weight_decay));
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  const int64_t train_span = train_tokens.size(0) - options.seq_len - 1;
  ProgressBar progress(options.steps, options.progress);
  const auto started = std::chrono::steady_clock::now();
  for (int64_t step = 0; step < options.steps; ++step) {
    const double lr = learning_rate_at(options, step);
    for (auto& group : optimizer.param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    }
    const at::Tensor starts =
        at::randint(0, train_span, {options.batch_size}, generator, at::kLong);
    const std::vector<at::Tensor> losses =
        exit_losses(transformer, gather_windows(train_tokens, starts, options.seq_len));
    at::Tensor loss = losses[0] * report.exit_weights[0];
    for (size_t e = 1; e < losses.size(); ++e) loss = loss + losses[e] * report.exit_weights[e];
    optimizer.zero_grad();
    loss.backward();
    if (options.grad_clip > 0) {
      double norm_sq = 0.0;
      for (const at::Tensor& p : params) norm_sq += p.grad().pow(2).sum().item<double>();
      const double norm = std::sqrt(norm_sq);
      if (norm > options.grad_clip) {
        for (at::Tensor& p : params) p.mutable_grad().mul_(options.grad_clip / norm);
      }
    }
    optimizer.step();
    report.tokens_seen += options.batch_size * options.seq_len;
    progress.update(step + 1, report.tokens_seen, losses.front().item<double>(),
                    losses[losses.size() / 2].item<double>(), losses.back().item<double>());
    if (options.checkpoint_every > 0 && (step + 1) % options.checkpoint_every == 0 &&
        step + 1 < options.steps) {
      at::NoGradGuard no_grad;
      model::save_model(options.out_dir, options.config, weights);
      progress.note(
          fmt::format("step {}: checkpoint saved to {}", step + 1, options.out_dir.string()));
    }
    if (options.eval_every > 0 && (step + 1) % options.eval_every == 0 &&
        step + 1 < options.steps) {
      const std::vector<double> nll = evaluate(transformer, valid_windows);
      progress.note(fmt::format("step {}: held-out loss first/last exit {:.3f} / {:.3f}", step + 1,
                                nll.front(), nll.back()));
    }
  }
  progress.finish();
  report.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  report.final_valid_nll = evaluate(transformer, valid_windows);

  for (at::Tensor& p : params) p.set_requires_grad(false);
  model::save_model(options.out_dir, options.config, weights);
  write_report(options.out_dir / "training.json", options, report);
  return report;
}

}  // namespace helios::train
