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

namespace {

// The context a continuation keeps of each prompt: room for max_new_tokens more positions.
int64_t continuation_keep(const ModelConfig& config, int64_t max_new_tokens, int64_t context) {
  return std::min(context, config.max_position_embeddings - max_new_tokens);
}

at::Tensor long_tensor(const std::vector<int64_t>& values, const c10::Device& device) {
  return at::tensor(values, at::kLong).to(device);
}

}  // namespace

int64_t continuation_cache_bytes(const ModelConfig& config, int64_t prompts,
                                 int64_t max_new_tokens, int64_t context, int64_t element_size) {
  const int64_t keep = continuation_keep(config, max_new_tokens, context);
  if (prompts <= 0 || max_new_tokens <= 0 || keep < 1) return 0;
  const int64_t capacity = keep + max_new_tokens - 1;  // the context, then the tokens fed back
  const int64_t kv =
      2 * config.num_hidden_layers * capacity * config.num_key_value_heads * config.head_dim();
  const int64_t states = (keep + capacity) * config.hidden_size;  // contexts' + exit states
  return prompts * (kv + states) * element_size;
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
  const int64_t depth = config.num_hidden_layers;
  StreamedContinuation out;
  out.exit_points = points;
  out.exit_histogram.assign(points.size(), 0);
  out.generated.resize(prompts.size());
  out.exit_layers.resize(prompts.size());
  const int64_t keep = continuation_keep(config, max_new_tokens, context);
  // One row per prompt continued. A row's positions: its context, then the tokens fed back.
  std::vector<size_t> owner;
  std::vector<int64_t> context_length;
  for (size_t p = 0; p < prompts.size(); ++p) {
    if (prompts[p].empty() || keep < 1) continue;
    owner.push_back(p);
    context_length.push_back(std::min(static_cast<int64_t>(prompts[p].size()), keep));
  }
  const auto rows = static_cast<int64_t>(owner.size());
  if (rows == 0 || max_new_tokens == 0) {
    out.bytes_read = reader.bytes_read();
    return out;
  }
  const auto row_count = static_cast<size_t>(rows);
  std::vector<int64_t> length = context_length;  // positions so far
  std::vector<int64_t> next_token(row_count, -1);  // fed at position length - 1 (steps >= 1)
  std::vector<char> live(row_count, 1);            // not ended, so more tokens to generate
  std::vector<char> undecided(row_count, 0);       // live and no token yet this step

  // The contexts, right-padded (causal attention: the padding never reaches a real position),
  // as the input of layer `block_layer`, the first no step has read yet.
  const int64_t width = *std::max_element(context_length.begin(), context_length.end());
  at::Tensor inputs = at::full({rows, width}, config.bos_token_id, at::kLong);
  {
    auto in = inputs.accessor<int64_t, 2>();
    for (int64_t r = 0; r < rows; ++r) {
      const std::vector<int32_t>& prompt = prompts[owner[static_cast<size_t>(r)]];
      const int64_t n = context_length[static_cast<size_t>(r)];
      const auto first = static_cast<int64_t>(prompt.size()) - n;
      for (int64_t t = 0; t < n; ++t) in[r][t] = prompt[static_cast<size_t>(first + t)];
    }
  }
  at::Tensor block = transformer.embed(inputs.to(device));
  std::vector<int64_t> block_rows(row_count);  // the rows of `block`, in order
  for (int64_t r = 0; r < rows; ++r) block_rows[static_cast<size_t>(r)] = r;
  int64_t block_layer = 0;
  out.cache_bytes = static_cast<int64_t>(block.nbytes());

  // Per layer, allocated when first read: keys/values [rows, capacity, kv_heads, head_dim],
  // row r's positions [0, filled[l][r]) written. The exit states [rows, capacity, hidden] of
  // generated tokens that left early, allocated at the first one a later step needs.
  const int64_t capacity = width + max_new_tokens - 1;
  std::vector<at::Tensor> keys(static_cast<size_t>(depth)), values(static_cast<size_t>(depth));
  std::vector<std::vector<int64_t>> filled(static_cast<size_t>(depth),
                                           std::vector<int64_t>(row_count, 0));
  at::Tensor exit_states;
  const auto options = block.options();

  const size_t last_exit = points.size() - 1;
  const bool can_exit_early = Transformer::can_exit_early(policy);
  const auto eos = static_cast<int64_t>(config.eos_token_id);
  for (int64_t step = 0; step < max_new_tokens; ++step) {
    const bool last_step = step + 1 == max_new_tokens;
    std::vector<int64_t> active;  // rows without this step's token, in order
    for (int64_t r = 0; r < rows; ++r) {
      undecided[static_cast<size_t>(r)] = live[static_cast<size_t>(r)];
      if (live[static_cast<size_t>(r)] != 0) active.push_back(r);
    }
    if (active.empty()) break;
    // After the first step: the hidden states [active, hidden] of each row's previous token.
    at::Tensor h;
    if (step > 0) {
      std::vector<int64_t> ids;
      for (const int64_t r : active) ids.push_back(next_token[static_cast<size_t>(r)]);
      h = transformer.embed(long_tensor(ids, device).unsqueeze(1)).squeeze(1);
    }
    size_t next_exit = 0;
    for (int64_t l = 0; l < depth && !active.empty(); ++l) {
      const auto layer_index = static_cast<size_t>(l);
      const LayerWeights layer = reader.layer(l);
      at::Tensor& layer_keys = keys[layer_index];
      at::Tensor& layer_values = values[layer_index];
      std::vector<int64_t>& layer_filled = filled[layer_index];
      if (!layer_keys.defined()) {
        layer_keys = at::zeros({rows, capacity, config.num_key_value_heads, config.head_dim()},
                               options);
        layer_values = at::zeros_like(layer_keys);
        out.cache_bytes += 2 * static_cast<int64_t>(layer_keys.nbytes());
      }
      // The contexts, at the first step that reads this layer: every context position runs
      // it in full, as prefill does (rows that have ended are dropped first).
      if (l == block_layer) {
        std::vector<int64_t> kept, kept_rows;
        for (size_t i = 0; i < block_rows.size(); ++i) {
          if (live[static_cast<size_t>(block_rows[i])] == 0) continue;
          kept.push_back(static_cast<int64_t>(i));
          kept_rows.push_back(block_rows[i]);
        }
        if (kept.size() < block_rows.size()) {
          block = block.index_select(0, long_tensor(kept, device));
          block_rows = std::move(kept_rows);
        }
        Transformer::LayerKv kv;
        block = transformer.forward_layer(layer, block, &kv);
        const at::Tensor index = long_tensor(block_rows, device);
        layer_keys.narrow(1, 0, width).index_copy_(0, index, kv.k);
        layer_values.narrow(1, 0, width).index_copy_(0, index, kv.v);
        for (const int64_t r : block_rows) {
          layer_filled[static_cast<size_t>(r)] = context_length[static_cast<size_t>(r)];
        }
        ++block_layer;
      }
      // Positions of generated tokens that left before this layer, in earlier steps or in this
      // one: their keys/values here are projected from their exit states.
      std::vector<int64_t> fill_rows, fill_positions;
      for (int64_t r = 0; r < rows; ++r) {
        const auto row = static_cast<size_t>(r);
        if (live[row] == 0) continue;
        const int64_t upto = length[row] - (step > 0 && undecided[row] != 0 ? 1 : 0);
        for (int64_t p = layer_filled[row]; p < upto; ++p) {
          fill_rows.push_back(r);
          fill_positions.push_back(p);
        }
        layer_filled[row] = std::max(layer_filled[row], upto);
      }
      if (!fill_rows.empty()) {
        const at::Tensor r_index = long_tensor(fill_rows, device);
        const at::Tensor p_index = long_tensor(fill_positions, device);
        const Transformer::LayerKv kv =
            transformer.layer_kv(layer, exit_states.index({r_index, p_index}), p_index);
        layer_keys.index_put_({r_index, p_index}, kv.k);
        layer_values.index_put_({r_index, p_index}, kv.v);
      }
      // The step's token of every row still running: one query over the row's cache.
      if (step > 0) {
        std::vector<int64_t> positions;
        int64_t longest = 0;
        for (const int64_t r : active) {
          positions.push_back(length[static_cast<size_t>(r)] - 1);
          longest = std::max(longest, length[static_cast<size_t>(r)]);
          layer_filled[static_cast<size_t>(r)] = length[static_cast<size_t>(r)];
        }
        h = transformer.forward_layer_cached(layer, h, long_tensor(active, device),
                                             long_tensor(positions, device), longest, layer_keys,
                                             layer_values);
      }
      if (next_exit >= points.size() || l + 1 != points[next_exit]) continue;
      const size_t e = next_exit++;
      const bool last = e == last_exit;
      if (!last && !can_exit_early) continue;
      // The running rows' states at this exit: at the first step, their contexts' last.
      at::Tensor state = h;
      if (step == 0) {
        std::vector<int64_t> index;
        for (const int64_t r : active) {
          const auto i = std::find(block_rows.begin(), block_rows.end(), r) - block_rows.begin();
          index.push_back(i * width + context_length[static_cast<size_t>(r)] - 1);
        }
        state = block.reshape({-1, config.hidden_size}).index_select(0, long_tensor(index, device));
      }
      const at::Tensor logits = transformer.exit_logits(state).to(at::kFloat).cpu();
      const at::Tensor confidence =
          Transformer::confidence(logits, policy.metric).to(at::kFloat).contiguous();
      const at::Tensor greedy = logits.argmax(-1).contiguous();
      const auto conf = confidence.accessor<float, 1>();
      const auto best = greedy.accessor<int64_t, 1>();
      std::vector<int64_t> staying, staying_rows;
      for (size_t i = 0; i < active.size(); ++i) {
        const int64_t r = active[i];
        const auto row = static_cast<size_t>(r);
        const auto a = static_cast<int64_t>(i);
        if (!last && conf[a] < policy.threshold) {
          staying.push_back(a);
          staying_rows.push_back(r);
          continue;
        }
        const int64_t token = best[a];
        ++out.exit_histogram[e];
        ++out.tokens;
        out.generated[owner[row]].push_back(static_cast<int32_t>(token));
        out.exit_layers[owner[row]].push_back(points[e]);
        undecided[row] = 0;
        if (token == eos || last_step) {
          live[row] = 0;  // nothing more is computed for it
          continue;
        }
        next_token[row] = token;
        if (step > 0 && !last) {
          // Left early: the deeper layers' keys/values of this position come from this state.
          if (!exit_states.defined()) {
            exit_states = at::zeros({rows, capacity, config.hidden_size}, options);
            out.cache_bytes += static_cast<int64_t>(exit_states.nbytes());
          }
          exit_states[r][length[row] - 1].copy_(h[a]);
        }
      }
      if (staying.size() < active.size()) {
        if (step > 0 && !staying.empty()) h = h.index_select(0, long_tensor(staying, device));
        active = std::move(staying_rows);
      }
    }
    for (size_t row = 0; row < row_count; ++row) {
      if (live[row] != 0) ++length[row];  // the token chosen, fed at the next step
    }
  }
  out.bytes_read = reader.bytes_read();
  return out;
}

}  // namespace helios::model
