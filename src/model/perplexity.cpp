#include "helios/model/perplexity.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <string>

#include "helios/model/checkpoint.h"

#include "helios/common/error.h"

namespace helios::model {

ExitPerplexity evaluate_perplexity(const Transformer& transformer, std::span<const int32_t> text,
                                   const ExitPolicy& policy, int64_t window,
                                   int64_t batch_windows) {
  c10::InferenceMode inference;
  policy.validate();
  const ModelConfig& config = transformer.config();
  if (text.empty()) throw Error(ErrorCode::kInvalidArgument, "perplexity: empty text");
  // A window holds BOS plus up to `span` text tokens; BOS predicts the first of them.
  const int64_t limit = config.max_position_embeddings;
  const int64_t span = std::min(window > 0 ? window : limit, limit) - 1;
  if (span <= 0) throw Error(ErrorCode::kInvalidArgument, "perplexity: window too small");

  ExitScores scores;
  const int64_t total = static_cast<int64_t>(text.size());
  const auto device = transformer.weights().embed_tokens.device();
  for (int64_t first = 0; first < total; first += span * batch_windows) {
    // Pack up to batch_windows windows, padding the last with BOS (padded targets ignored).
    const int64_t count = std::min(batch_windows, (total - first + span - 1) / span);
    const int64_t length = std::min(span, total - first) + 1;
    at::Tensor inputs = at::full({count, length}, config.bos_token_id, at::kLong);
    at::Tensor targets = at::full({count, length}, -1, at::kLong);
    auto in = inputs.accessor<int64_t, 2>();
    auto tg = targets.accessor<int64_t, 2>();
    for (int64_t w = 0; w < count; ++w) {
      const int64_t begin = first + w * span;
      const int64_t n = std::min(span, total - begin);
      for (int64_t t = 0; t < n; ++t) {
        in[w][t + 1] = text[begin + t];
        tg[w][t] = text[begin + t];
      }
    }
    std::vector<at::Tensor> hidden = transformer.forward_exits(inputs.to(device));
    for (at::Tensor& h : hidden) h = h.reshape({count * length, -1});
    scores.add(transformer.score_exits(hidden, targets.view({-1}).to(device), policy));
  }
  ExitPerplexity out;
  out.exit_layers = transformer.exit_points();
  out.exit_histogram = scores.exit_histogram;
  out.tokens = scores.tokens;
  for (size_t e = 0; e < out.exit_layers.size(); ++e) {
    out.mean_nll.push_back(scores.nll_sum[e] / static_cast<double>(scores.tokens));
    out.perplexity.push_back(scores.perplexity(e));
  }
  return out;
}

namespace {

// Refuses token ids outside the vocabulary, naming the prompt and position.
void check_prompt_ids(std::span<const std::vector<int32_t>> prompts, const ModelConfig& config) {
  for (size_t p = 0; p < prompts.size(); ++p) {
    for (size_t t = 0; t < prompts[p].size(); ++t) {
      const int32_t id = prompts[p][t];
      if (id < 0 || id >= config.vocab_size) {
        throw Error(ErrorCode::kInvalidArgument,
                    "score_prompts: prompt " + std::to_string(p) + " position " +
                        std::to_string(t) + ": token id " + std::to_string(id) +
                        " is outside the vocabulary of " + std::to_string(config.vocab_size));
      }
    }
  }
}

// Prompts [first, last) right-padded into one batch: inputs [count, length] and the targets of
// each position ([count * length], -1 where there is no next prompt token). Prompts are cut
// at max_position_embeddings. Undefined tensors when no prompt of the batch predicts anything.
struct PromptBatch {
  at::Tensor inputs, targets;
};

PromptBatch prompt_batch(std::span<const std::vector<int32_t>> prompts, size_t first, size_t last,
                         const ModelConfig& config) {
  const int64_t limit = config.max_position_embeddings;
  const auto length_of = [limit](const std::vector<int32_t>& prompt) {
    return std::min<int64_t>(static_cast<int64_t>(prompt.size()), limit);
  };
  int64_t length = 0;
  for (size_t p = first; p < last; ++p) length = std::max(length, length_of(prompts[p]));
  if (length < 2) return {};
  const auto count = static_cast<int64_t>(last - first);
  at::Tensor inputs = at::full({count, length}, config.bos_token_id, at::kLong);
  at::Tensor targets = at::full({count, length}, -1, at::kLong);
  auto in = inputs.accessor<int64_t, 2>();
  auto tg = targets.accessor<int64_t, 2>();
  for (int64_t row = 0; row < count; ++row) {
    const std::vector<int32_t>& prompt = prompts[first + static_cast<size_t>(row)];
    const int64_t n = length_of(prompt);
    for (int64_t t = 0; t < n; ++t) in[row][t] = prompt[t];
    for (int64_t t = 0; t + 1 < n; ++t) tg[row][t] = prompt[t + 1];
  }
  return PromptBatch{inputs, targets.view({-1})};
}

// A checkpoint opened for streamed passes: the prompts checked against its vocabulary, its
// embeddings, final norm and head resident, its layers read from `reader` one at a time.
struct StreamedModel {
  StreamedModel(const std::filesystem::path& dir, c10::ScalarType dtype, c10::Device device,
                std::span<const std::vector<int32_t>> prompts)
      : reader(dir, dtype, device),
        weights((check_prompt_ids(prompts, reader.config()), reader.shared_weights())),
        transformer(reader.config(), weights) {}
  LayerReader reader;
  ModelWeights weights;
  const Transformer transformer;
};

}  // namespace

ExitScores score_prompts(const Transformer& transformer,
                         std::span<const std::vector<int32_t>> prompts, const ExitPolicy& policy,
                         int64_t batch, std::vector<ExitScores>* per_batch) {
  c10::InferenceMode inference;
  policy.validate();
  if (batch <= 0) throw Error(ErrorCode::kInvalidArgument, "score_prompts: batch must be > 0");
  const ModelConfig& config = transformer.config();
  check_prompt_ids(prompts, config);
  ExitScores scores;
  const auto device = transformer.weights().embed_tokens.device();
  for (size_t first = 0; first < prompts.size(); first += static_cast<size_t>(batch)) {
    const size_t last = std::min(prompts.size(), first + static_cast<size_t>(batch));
    const PromptBatch b = prompt_batch(prompts, first, last, config);
    if (!b.inputs.defined()) {  // nothing to predict in this batch
      if (per_batch != nullptr) per_batch->emplace_back();
      continue;
    }
    const int64_t rows = b.targets.size(0);
    std::vector<at::Tensor> hidden = transformer.forward_exits(b.inputs.to(device));
    for (at::Tensor& h : hidden) h = h.reshape({rows, -1});
    ExitScores batch_scores = transformer.score_exits(hidden, b.targets.to(device), policy);
    scores.add(batch_scores);
    if (per_batch != nullptr) per_batch->push_back(std::move(batch_scores));
  }
  return scores;
}

StreamedScores score_prompts_streamed(const std::filesystem::path& dir,
                                      std::span<const std::vector<int32_t>> prompts,
                                      const ExitPolicy& policy, c10::ScalarType dtype,
                                      c10::Device device, int64_t batch) {
  c10::InferenceMode inference;
  policy.validate();
  if (batch <= 0) throw Error(ErrorCode::kInvalidArgument, "score_prompts: batch must be > 0");
  StreamedModel model(dir, dtype, device, prompts);
  LayerReader& reader = model.reader;
  const ModelConfig& config = reader.config();
  const Transformer& transformer = model.transformer;
  const std::vector<int32_t>& points = transformer.exit_points();

  StreamedScores out;
  out.exit_points = points;
  const int64_t shared_bytes = model.weights.resident_bytes();
  // Every batch's hidden states and targets stay resident from layer to layer, and each
  // batch's exit columns grow as its exit points are passed.
  struct Pending {
    at::Tensor hidden, targets;
    std::vector<Transformer::ExitColumn> columns;
  };
  std::vector<Pending> pending;
  for (size_t first = 0; first < prompts.size(); first += static_cast<size_t>(batch)) {
    const size_t last = std::min(prompts.size(), first + static_cast<size_t>(batch));
    const PromptBatch b = prompt_batch(prompts, first, last, config);
    Pending p;
    if (!b.inputs.defined()) {  // nothing to predict: an empty entry keeps per_batch in order
      pending.push_back(std::move(p));
      continue;
    }
    p.hidden = transformer.embed(b.inputs.to(device));
    p.targets = b.targets.to(device);
    out.hidden_bytes += static_cast<int64_t>(p.hidden.nbytes());
    pending.push_back(std::move(p));
  }
  size_t next_exit = 0;
  for (int64_t l = 0; l < config.num_hidden_layers && !pending.empty(); ++l) {
    const LayerWeights layer = reader.layer(l);
    int64_t layer_bytes = 0;
    for (const at::Tensor& t : layer.tensors()) layer_bytes += static_cast<int64_t>(t.nbytes());
    out.peak_weight_bytes = std::max(out.peak_weight_bytes, shared_bytes + layer_bytes);
    const bool exits_here = next_exit < points.size() && l + 1 == points[next_exit];
    for (Pending& p : pending) {
      if (!p.hidden.defined()) continue;
      p.hidden = transformer.forward_layer(layer, p.hidden);
      if (exits_here) {
        p.columns.push_back(transformer.score_exit(
            next_exit, p.hidden.reshape({p.targets.size(0), -1}), p.targets, policy));
      }
    }
    if (exits_here) ++next_exit;
  }
  for (const Pending& p : pending) {
    if (!p.hidden.defined()) {
      out.per_batch.emplace_back();
      continue;
    }
    out.per_batch.push_back(Transformer::combine_exit_columns(p.columns, p.targets));
    out.scores.add(out.per_batch.back());
  }
  out.bytes_read = reader.bytes_read();
  return out;
}

StreamedContinuation continue_streamed(const std::filesystem::path& dir,
                                       std::span<const std::vector<int32_t>> prompts,
                                       const ExitPolicy& policy, int64_t max_new_tokens,
                                       int64_t context, c10::ScalarType dtype,
                                       c10::Device device) {
  c10::InferenceMode inference;
  policy.validate();
  if (max_new_tokens < 0 || context < 1) {
    throw Error(ErrorCode::kInvalidArgument,
                "continue_streamed: max_new_tokens must be >= 0 and context >= 1");
  }
  StreamedModel model(dir, dtype, device, prompts);
  LayerReader& reader = model.reader;
  const ModelConfig& config = reader.config();
  const Transformer& transformer = model.transformer;
  const std::vector<int32_t>& points = transformer.exit_points();
  StreamedContinuation out;
  out.exit_points = points;
  out.exit_histogram.assign(points.size(), 0);
  // Room for the continuation within the model's positions.
  const int64_t keep = std::min(context, config.max_position_embeddings - max_new_tokens);
  // Sequences still generating, and the prompt each belongs to.
  std::vector<std::vector<int64_t>> running;
  std::vector<size_t> owner;
  out.generated.resize(prompts.size());
  for (size_t p = 0; p < prompts.size(); ++p) {
    const std::vector<int32_t>& prompt = prompts[p];
    if (prompt.empty() || keep < 1) continue;
    const auto n = static_cast<int64_t>(prompt.size());
    running.emplace_back(prompt.begin() + std::max<int64_t>(0, n - keep), prompt.end());
    owner.push_back(p);
  }
  const auto last_exit = points.size() - 1;
  for (int64_t step = 0; step < max_new_tokens && !running.empty(); ++step) {
    // The running sequences as one batch, right-padded (causal attention: the padding never
    // reaches a real position); each row's next token comes from its last real position.
    const auto rows = static_cast<int64_t>(running.size());
    int64_t length = 0;
    for (const auto& ids : running) length = std::max(length, static_cast<int64_t>(ids.size()));
    at::Tensor inputs = at::full({rows, length}, config.bos_token_id, at::kLong);
    std::vector<int64_t> last_position;
    auto in = inputs.accessor<int64_t, 2>();
    for (int64_t r = 0; r < rows; ++r) {
      const auto& ids = running[static_cast<size_t>(r)];
      for (size_t t = 0; t < ids.size(); ++t) in[r][static_cast<int64_t>(t)] = ids[t];
      last_position.push_back(static_cast<int64_t>(ids.size()) - 1);
    }
    for (int64_t r = 0; r < rows; ++r) last_position[static_cast<size_t>(r)] += r * length;
    const at::Tensor last_rows = at::tensor(last_position, at::kLong).to(device);
    at::Tensor hidden = transformer.embed(inputs.to(device));
    std::vector<int64_t> chosen(running.size(), -1);
    size_t undecided = running.size(), next_exit = 0;
    for (int64_t l = 0; l < config.num_hidden_layers && undecided > 0; ++l) {
      hidden = transformer.forward_layer(reader.layer(l), hidden);
      if (next_exit >= points.size() || l + 1 != points[next_exit]) continue;
      const at::Tensor logits =
          transformer.exit_logits(hidden.reshape({rows * length, -1}).index_select(0, last_rows))
              .to(at::kFloat)
              .cpu();
      const at::Tensor confidence = Transformer::confidence(logits, policy.metric);
      const at::Tensor greedy = logits.argmax(-1);
      for (size_t i = 0; i < running.size(); ++i) {
        const auto r = static_cast<int64_t>(i);
        if (chosen[i] >= 0) continue;
        if (next_exit == last_exit || confidence[r].item<double>() >= policy.threshold) {
          chosen[i] = greedy[r].item<int64_t>();
          ++out.exit_histogram[next_exit];
          ++out.tokens;
          --undecided;
        }
      }
      ++next_exit;
    }
    std::vector<std::vector<int64_t>> next;
    std::vector<size_t> next_owner;
    for (size_t i = 0; i < running.size(); ++i) {
      out.generated[owner[i]].push_back(static_cast<int32_t>(chosen[i]));
      if (chosen[i] == config.eos_token_id) continue;
      running[i].push_back(chosen[i]);
      next.push_back(std::move(running[i]));
      next_owner.push_back(owner[i]);
    }
    running = std::move(next);
    owner = std::move(next_owner);
  }
  out.bytes_read = reader.bytes_read();
  return out;
}

}  // namespace helios::model
