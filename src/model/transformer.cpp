#include "helios/model/transformer.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <utility>

#include "cpu_decode.h"
#include "decode_graphs.h"
#include "decode_steps.h"
#include "helios/common/error.h"
#include "helios/ops/activation.h"
#include "helios/ops/attention.h"
#include "helios/ops/exit_head.h"
#include "helios/ops/rms_norm.h"

namespace helios::model {
namespace {

constexpr float kMasked = -std::numeric_limits<float>::infinity();

at::Tensor long_tensor(const std::vector<int64_t>& values, const at::Device& device) {
  return at::tensor(values, at::TensorOptions().dtype(at::kLong)).to(device);
}

// Projections of one layer for flattened rows h [N, hidden]: q [N, heads, hd] and k/v
// [N, kv_heads, hd], rotary applied to q and k.
struct Kv {
  at::Tensor k, v;
};
struct Qkv {
  at::Tensor q, k, v;
};

}  // namespace

void ExitPolicy::validate() const {
  if (!(threshold >= 0.0)) {
    throw Error(
        ErrorCode::kInvalidArgument,
        "threshold must be >= 0 (above 1 disables early exit), got " + std::to_string(threshold));
  }
}

Transformer::Transformer(const ModelConfig& config, const ModelWeights& weights)
    : config_(config),
      weights_(weights),
      rotary_(config.head_dim(), config.rope_theta, config.max_position_embeddings,
              weights.embed_tokens.device()),
      attention_scale_(1.0 / std::sqrt(static_cast<double>(config.head_dim()))) {
  const int32_t depth = static_cast<int32_t>(weights.loaded_layers());
  if (depth <= 0) throw Error(ErrorCode::kFailedPrecondition, "model has no loaded layers");
  for (const int exit_layer : config.exit_layers) {
    if (exit_layer < depth) exit_points_.push_back(exit_layer);
  }
  exit_points_.push_back(depth);
  const char* path = std::getenv("HELIOS_CPU_DECODE");
  set_fused_cpu_decode(path == nullptr || std::strcmp(path, "aten") != 0);
}

void Transformer::set_fused_cpu_decode(bool enabled, const std::string& kernels) {
  cpu_decode_ = enabled ? std::shared_ptr<CpuDecode>(CpuDecode::create(*this, kernels)) : nullptr;
}

std::string Transformer::cpu_kernels() const {
  return cpu_decode_ != nullptr ? cpu_decode_->kernels_name() : "";
}

kv::KvCacheShape Transformer::kv_shape(int64_t block_size) const {
  return kv::KvCacheShape{loaded_layers(), config_.num_key_value_heads, config_.head_dim(),
                          block_size};
}

at::Tensor Transformer::exit_logits(const at::Tensor& hidden) const {
  return linear(ops::rms_norm(hidden, weights_.final_norm, config_.rms_norm_eps),
                weights_.lm_head);
}

at::Tensor Transformer::linear(const at::Tensor& x, const at::Tensor& w) const {
  // Autograd (training) needs ATen's op; the kernels compute values only.
  if (cpu_decode_ != nullptr && !at::GradMode::is_enabled()) {
    at::Tensor y = cpu_decode_->linear(x, w);
    if (y.defined()) return y;
  }
  return at::linear(x, w);
}

at::Tensor Transformer::confidence(const at::Tensor& logits, ConfidenceMetric metric) {
  return confidence_of(ops::exit_head_stats(logits, metric == ConfidenceMetric::kEntropy), metric,
                       logits.size(-1));
}

at::Tensor Transformer::confidence_of(const ops::ExitHeadStats& stats, ConfidenceMetric metric,
                                      int64_t vocab) {
  if (metric == ConfidenceMetric::kMaxProb) return stats.max_prob;
  return 1.0 - stats.entropy / std::log(static_cast<double>(vocab));
}

at::Tensor Transformer::mlp(const LayerWeights& layer, const at::Tensor& h) const {
  const at::Tensor x = ops::rms_norm(h, layer.post_norm, config_.rms_norm_eps);
  return linear(at::silu(linear(x, layer.gate_proj)) * linear(x, layer.up_proj),
                layer.down_proj);
}

namespace {

// Keys and values of `layer` from its normalised input x. Shared by the layer's own forward
// and by the fill of layers an exited token skipped, so both write identical cache entries.
Kv project_kv(const Transformer& t, const LayerWeights& layer, const at::Tensor& x,
              const at::Tensor& positions) {
  const ModelConfig& config = t.config();
  const ops::RotaryEmbedding& rotary = t.rotary();
  const int64_t rows = x.size(0), hd = config.head_dim();
  return Kv{rotary.apply(t.linear(x, layer.k_proj).view({rows, config.num_key_value_heads, hd}),
                         positions),
            t.linear(x, layer.v_proj).view({rows, config.num_key_value_heads, hd})};
}

Qkv project_qkv(const Transformer& t, const LayerWeights& layer, const at::Tensor& h,
                const at::Tensor& positions) {
  const ModelConfig& config = t.config();
  const int64_t rows = h.size(0), hd = config.head_dim();
  const at::Tensor x = ops::rms_norm(h, layer.input_norm, config.rms_norm_eps);
  Kv kv = project_kv(t, layer, x, positions);
  const at::Tensor q = t.linear(x, layer.q_proj).view({rows, config.num_attention_heads, hd});
  return Qkv{t.rotary().apply(q, positions), std::move(kv.k), std::move(kv.v)};
}

// Inference: the layer's keys/values of normalised rows x, rotated and written to the cache
// at `slots`, through the device ops (one rotary and one cache-write kernel on CUDA). With q
// (query projection, [N, heads, hd]) it is rotated in the same launch. Decode, prefill and
// the fill of skipped layers all write through here, so their cache entries agree exactly.
void cache_kv(const Transformer& t, const LayerWeights& layer, const at::Tensor& x,
              const at::Tensor& positions, const at::Tensor& slots, kv::KvCache& cache, int64_t l,
              at::Tensor& q) {
  const ModelConfig& config = t.config();
  const int64_t rows = x.size(0), hd = config.head_dim();
  at::Tensor k = t.linear(x, layer.k_proj).view({rows, config.num_key_value_heads, hd});
  const at::Tensor v = t.linear(x, layer.v_proj);
  t.rotary().rotate(q, k, positions);
  ops::write_kv(cache.keys(l), cache.values(l), k, v, slots);
}

// Query of rows x, rotated, with the layer's keys/values cached: [N, heads, hd].
at::Tensor query_and_cache(const Transformer& t, const LayerWeights& layer, const at::Tensor& x,
                           const at::Tensor& positions, const at::Tensor& slots,
                           kv::KvCache& cache, int64_t l) {
  const ModelConfig& config = t.config();
  at::Tensor q =
      t.linear(x, layer.q_proj).view({x.size(0), config.num_attention_heads, config.head_dim()});
  cache_kv(t, layer, x, positions, slots, cache, l, q);
  return q;
}

}  // namespace

namespace {

// Positions and causal mask of `batch` windows of `time` positions from 0.
struct WindowInputs {
  at::Tensor positions, causal;
};

WindowInputs window_inputs(int64_t batch, int64_t time, const at::Device& device) {
  return WindowInputs{
      at::arange(time, at::TensorOptions().dtype(at::kLong).device(device)).repeat({batch}),
      at::full({time, time}, kMasked, at::TensorOptions().dtype(at::kFloat).device(device))
          .triu(1)};
}

}  // namespace

at::Tensor Transformer::embed(const at::Tensor& tokens) const {
  const auto device = weights_.embed_tokens.device();
  if (tokens.size(1) > rotary_.max_positions()) {
    throw Error(ErrorCode::kOutOfRange, "window of " + std::to_string(tokens.size(1)) +
                                            " tokens exceeds max_position_embeddings");
  }
  return at::embedding(weights_.embed_tokens, tokens.to(device));
}

at::Tensor Transformer::forward_layer(const LayerWeights& layer, const at::Tensor& h,
                                     LayerKv* kv) const {
  const int64_t batch = h.size(0), time = h.size(1);
  const WindowInputs in = window_inputs(batch, time, h.device());
  const at::Tensor rows = h.reshape({batch * time, -1});
  const Qkv qkv = project_qkv(*this, layer, rows, in.positions);
  if (kv != nullptr) {
    kv->k = qkv.k.view({batch, time, config_.num_key_value_heads, -1});
    kv->v = qkv.v.view({batch, time, config_.num_key_value_heads, -1});
  }
  const at::Tensor attended =
      ops::attention(qkv.q.view({batch, time, config_.num_attention_heads, -1}),
                     qkv.k.view({batch, time, config_.num_key_value_heads, -1}),
                     qkv.v.view({batch, time, config_.num_key_value_heads, -1}), in.causal,
                     attention_scale_);
  at::Tensor out = rows + linear(attended.view({batch * time, -1}), layer.o_proj);
  out = out + mlp(layer, out);
  return out.view({batch, time, -1});
}

Transformer::LayerKv Transformer::layer_kv(const LayerWeights& layer, const at::Tensor& h,
                                           const at::Tensor& positions) const {
  Kv kv = project_kv(*this, layer,
                     ops::rms_norm(h, layer.input_norm, config_.rms_norm_eps), positions);
  return LayerKv{std::move(kv.k), std::move(kv.v)};
}

at::Tensor Transformer::forward_layer_cached(const LayerWeights& layer, const at::Tensor& h,
                                             const at::Tensor& rows, const at::Tensor& positions,
                                             int64_t context, at::Tensor& keys,
                                             at::Tensor& values) const {
  const int64_t batch = h.size(0);
  const Qkv qkv = project_qkv(*this, layer, h, positions);
  keys.index_put_({rows, positions}, qkv.k);
  values.index_put_({rows, positions}, qkv.v);
  // Row b's query sees keys [0, positions[b]]; the later ones (other rows' longer contexts,
  // or nothing cached yet) are masked, as the paged decode masks past a row's context.
  const at::Tensor seen = at::arange(context, positions.options()).unsqueeze(0).le(
      positions.unsqueeze(1));  // [B, context]
  const at::Tensor mask =
      at::zeros({batch, context}, h.options().dtype(at::kFloat))
          .masked_fill_(seen.logical_not(), kMasked)
          .view({batch, 1, 1, 1, context});
  const at::Tensor attended = ops::attention(
      qkv.q.unsqueeze(1), keys.narrow(1, 0, context).index_select(0, rows),
      values.narrow(1, 0, context).index_select(0, rows), mask, attention_scale_);
  at::Tensor out = h + linear(attended.view({batch, -1}), layer.o_proj);
  return out + mlp(layer, out);
}

std::vector<at::Tensor> Transformer::forward_exits(const at::Tensor& tokens) const {
  at::Tensor h = embed(tokens);
  std::vector<at::Tensor> exits;
  size_t next_exit = 0;
  for (int64_t l = 0; l < loaded_layers(); ++l) {
    h = forward_layer(weights_.layers[l], h);
    if (next_exit < exit_points_.size() && l + 1 == exit_points_[next_exit]) {
      exits.push_back(h);
      ++next_exit;
    }
  }
  return exits;
}

void DecodeSteps::fill_skipped_layers(const Transformer& t, kv::KvCache& cache, int64_t first_layer,
                                      const at::Tensor& hidden, const at::Tensor& positions,
                                      const at::Tensor& slots) {
  for (int64_t l = first_layer; l < t.loaded_layers(); ++l) {
    const LayerWeights& layer = t.weights_.layers[l];
    const at::Tensor x = ops::rms_norm(hidden, layer.input_norm, t.config_.rms_norm_eps);
    at::Tensor no_query;
    cache_kv(t, layer, x, positions, slots, cache, l, no_query);
  }
}

Transformer::ExitColumn Transformer::score_exit(size_t exit_index, const at::Tensor& hidden,
                                               const at::Tensor& targets,
                                               const ExitPolicy& policy) const {
  const at::Tensor logits = exit_logits(hidden).to(at::kFloat);
  ExitColumn column;
  column.nll =
      at::nll_loss(at::log_softmax(logits, -1), targets.clamp_min(0), {}, at::Reduction::None);
  if (exit_index + 1 < exit_points_.size()) {
    column.confident = confidence(logits, policy.metric).ge(policy.threshold);
  }
  return column;
}

ExitScores Transformer::combine_exit_columns(const std::vector<ExitColumn>& columns,
                                             const at::Tensor& targets) {
  const size_t exits = columns.size();
  const int64_t last = static_cast<int64_t>(exits) - 1;
  const at::Tensor valid = targets.ge(0);
  ExitScores scores;
  scores.nll_sum.assign(exits, 0.0);
  // Positions not yet confident carry `last`: the last loaded layer is where they leave.
  at::Tensor first_exit = at::full({targets.size(0)}, last, targets.options());
  std::vector<at::Tensor> nlls;  // [N] per exit point, zero where there is no target
  for (size_t e = 0; e < exits; ++e) {
    const at::Tensor& nll = columns[e].nll;
    scores.nll_sum[e] = nll.masked_select(valid).sum().item<double>();
    nlls.push_back(nll.to(at::kDouble).masked_fill(valid.logical_not(), 0.0));
    if (static_cast<int64_t>(e) < last) {
      first_exit.masked_fill_(columns[e].confident.logical_and(first_exit.eq(last)),
                              static_cast<int64_t>(e));
    }
  }
  const at::Tensor counts =
      at::bincount(first_exit.masked_select(valid).cpu(), {}, static_cast<int64_t>(exits));
  for (size_t e = 0; e < exits; ++e) scores.exit_histogram.push_back(counts[e].item<int64_t>());
  // Capped at exit point e, a position leaves at min(first confident exit, e).
  const at::Tensor all_nll = at::stack(nlls);  // [exits, N]
  for (size_t e = 0; e < exits; ++e) {
    const at::Tensor leave = first_exit.clamp_max(static_cast<int64_t>(e)).unsqueeze(0);
    scores.policy_nll_sum.push_back(all_nll.gather(0, leave).sum().item<double>());
  }
  scores.tokens = valid.sum().item<int64_t>();
  return scores;
}

ExitScores Transformer::score_exits(const std::vector<at::Tensor>& hidden,
                                    const at::Tensor& targets, const ExitPolicy& policy) const {
  std::vector<ExitColumn> columns;
  for (size_t e = 0; e < hidden.size(); ++e) {
    columns.push_back(score_exit(e, hidden[e], targets, policy));
  }
  return combine_exit_columns(columns, targets);
}

StepOutput Transformer::prefill(kv::KvCache& cache, kv::SequenceKv& sequence,
                                std::span<const int32_t> tokens, const ExitPolicy& policy,
                                bool score_prompt, std::span<const int32_t> exit_layers,
                                int32_t next_prompt_token) const {
  c10::InferenceMode inference;
  const auto device = weights_.embed_tokens.device();
  const int64_t start = sequence.length, count = static_cast<int64_t>(tokens.size());
  const int64_t total = start + count;
  if (count == 0) throw Error(ErrorCode::kInvalidArgument, "prefill: no tokens");
  const bool replay = !exit_layers.empty();
  if (replay && static_cast<int64_t>(exit_layers.size()) != count) {
    throw Error(ErrorCode::kInvalidArgument,
                "prefill: exit_layers has " + std::to_string(exit_layers.size()) + " entries for " +
                    std::to_string(count) + " tokens");
  }
  if (replay && score_prompt) {
    throw Error(ErrorCode::kInvalidArgument,
                "prefill: score_prompt cannot be combined with exit_layers");
  }
  if (total > rotary_.max_positions()) {
    throw Error(ErrorCode::kOutOfRange, "sequence of " + std::to_string(total) +
                                            " tokens exceeds max_position_embeddings " +
                                            std::to_string(rotary_.max_positions()));
  }
  std::vector<int64_t> ids(tokens.begin(), tokens.end());
  const at::Tensor positions =
      at::arange(start, total, at::TensorOptions().dtype(at::kLong).device(device));
  const at::Tensor all_slots = cache.slots(sequence, 0, total);
  const at::Tensor new_slots = all_slots.narrow(0, start, count);
  // Query i (position start + i) sees keys [0, start + i].
  const at::Tensor mask =
      at::full({count, total}, kMasked, at::TensorOptions().dtype(at::kFloat).device(device))
          .triu(start + 1);

  // Replay: the number of layers each token runs. Layer l is skipped by the rows whose count
  // is <= l; from there on their hidden state is frozen, so the keys/values this loop projects
  // from it are those decode's fill_skipped_layers wrote. Without exit_layers, every row runs
  // every layer (shallowest = deepest = depth) and none of this is touched.
  const int64_t depth = loaded_layers();
  int64_t shallowest = depth, deepest = depth, last_exit = depth;
  at::Tensor replay_exits;  // int64 [count, 1]
  if (replay) {
    std::vector<int64_t> runs(count);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t e = exit_layers[i];
      runs[i] = e <= 0 || e >= depth ? depth : e;
    }
    shallowest = *std::min_element(runs.begin(), runs.end());
    deepest = *std::max_element(runs.begin(), runs.end());
    last_exit = runs.back();
    replay_exits = long_tensor(runs, device).unsqueeze(1);
  }

  at::Tensor h = at::embedding(weights_.embed_tokens, long_tensor(ids, device));
  std::vector<at::Tensor> last_hidden, all_hidden;
  size_t next_exit = 0;
  for (int64_t l = 0; l < depth; ++l) {
    const LayerWeights& layer = weights_.layers[l];
    const at::Tensor x = ops::rms_norm(h, layer.input_norm, config_.rms_norm_eps);
    // Every row is frozen (replay only, so the last row's exit state is final): its keys and
    // values are all that is left to write.
    if (l >= deepest) {
      at::Tensor no_query;
      cache_kv(*this, layer, x, positions, new_slots, cache, l, no_query);
      continue;
    }
    const at::Tensor q =
        query_and_cache(*this, layer, x, positions, new_slots, cache, l);
    const at::Tensor keys = cache.keys(l)
                                .index_select(0, all_slots)
                                .view({1, total, config_.num_key_value_heads, -1});
    const at::Tensor values = cache.values(l)
                                  .index_select(0, all_slots)
                                  .view({1, total, config_.num_key_value_heads, -1});
    const at::Tensor attended =
        ops::attention(q.unsqueeze(0), keys, values, mask, attention_scale_);
    const at::Tensor input = h;
    h = h + linear(attended.squeeze(0), layer.o_proj);
    h = h + mlp(layer, h);
    if (l >= shallowest) h = at::where(replay_exits.le(l), input, h);
    if (next_exit < exit_points_.size() && l + 1 == exit_points_[next_exit]) {
      last_hidden.push_back(h.narrow(0, count - 1, 1));
      if (score_prompt) all_hidden.push_back(h);
      ++next_exit;
    }
  }
  sequence.length = total;

  StepOutput out;
  if (last_exit < depth) {
    // A replayed last token that left early: its hidden state has been frozen at its exit
    // since layer last_exit, and it left there by record, not by the policy.
    const at::Tensor logits = exit_logits(h.narrow(0, count - 1, 1)).to(at::kFloat);
    const float conf = confidence(logits, policy.metric).item<float>();
    out.logits = logits.cpu();
    out.exits.push_back(TokenExit{static_cast<int32_t>(last_exit), conf, false});
    return out;
  }
  // The last position leaves at the first exit point that is confident enough. Every layer
  // ran (the prompt's keys/values are needed at full loaded depth), so this only labels it.
  if (score_prompt) {
    // Position i predicts prompt token i + 1; the last position's is the next chunk's first
    // (unknown at the end of the prompt: -1, not scored).
    std::vector<int64_t> targets(ids.begin() + 1, ids.end());
    targets.push_back(next_prompt_token);
    out.prompt_scores = score_exits(all_hidden, long_tensor(targets, device), policy);
  }
  for (size_t e = 0; e < last_hidden.size(); ++e) {
    const bool last = e + 1 == last_hidden.size();
    if (!last && !can_exit_early(policy)) continue;
    const at::Tensor logits = exit_logits(last_hidden[e]).to(at::kFloat);
    const float conf = confidence(logits, policy.metric).item<float>();
    if (conf >= policy.threshold || last) {
      out.logits = logits.cpu();
      out.exits.push_back(TokenExit{exit_points_[e], conf, last && conf < policy.threshold});
      break;
    }
  }
  return out;
}

void Transformer::set_cuda_graphs(bool enabled) {
#if HELIOS_WITH_CUDA
  graphs_ = enabled && weights_.embed_tokens.is_cuda() ? make_decode_graphs(*this) : nullptr;
#else
  (void)enabled;
#endif
}

std::vector<int32_t> DecodeSteps::decode_segments(const Transformer& t, const ExitPolicy& policy) {
  if (Transformer::can_exit_early(policy)) return t.exit_points_;
  return {static_cast<int32_t>(t.loaded_layers())};
}

DecodePlan DecodeSteps::plan_decode(const Transformer& t, const kv::KvCache& cache,
                                    std::span<kv::SequenceKv* const> sequences,
                                    std::span<const int32_t> tokens) {
  DecodePlan plan;
  plan.batch = static_cast<int64_t>(sequences.size());
  if (plan.batch == 0 || static_cast<int64_t>(tokens.size()) != plan.batch) {
    throw Error(ErrorCode::kInvalidArgument, "decode: one token per sequence required");
  }
  plan.block_size = cache.shape().block_size;
  for (const kv::SequenceKv* sequence : sequences) {
    plan.longest = std::max(plan.longest, sequence->length + 1);
  }
  if (plan.longest > t.rotary_.max_positions()) {
    throw Error(ErrorCode::kOutOfRange, "decode: sequence exceeds max_position_embeddings");
  }
  plan.max_blocks = (plan.longest + plan.block_size - 1) / plan.block_size;
  const int64_t batch = plan.batch;
  plan.rows.assign(3 * batch, 0);
  plan.tables.assign(batch * plan.max_blocks + batch, 0);
  std::vector<int64_t> slot;
  for (int64_t b = 0; b < batch; ++b) {
    const kv::SequenceKv& sequence = *sequences[b];
    const int64_t position = sequence.length;
    const int64_t blocks = position / plan.block_size + 1;
    if (static_cast<int64_t>(sequence.block_table.size()) < blocks) {
      throw Error(ErrorCode::kFailedPrecondition,
                  "decode: no room reserved for position " + std::to_string(position));
    }
    slot.clear();
    cache.slots_into(sequence, position, position + 1, slot);
    plan.rows[b] = tokens[b];
    plan.rows[batch + b] = position;
    plan.rows[2 * batch + b] = slot[0];
    std::copy_n(sequence.block_table.begin(), blocks, plan.tables.begin() + b * plan.max_blocks);
    plan.tables[batch * plan.max_blocks + b] = static_cast<int32_t>(position + 1);
  }
  return plan;
}

void DecodeSteps::run_layers(const Transformer& t, int64_t begin, int64_t end, at::Tensor& h,
                             const at::Tensor& positions, const at::Tensor& slots,
                             const ops::DecodeBatch& batch, kv::KvCache& cache) {
  const double eps = t.config_.rms_norm_eps;
  at::Tensor pending;  // the last MLP output, added to h by the next norm (one fused kernel)
  for (int64_t l = begin; l < end; ++l) {
    const LayerWeights& layer = t.weights_.layers[l];
    const at::Tensor x = pending.defined() ? ops::add_rms_norm(h, pending, layer.input_norm, eps)
                                           : ops::rms_norm(h, layer.input_norm, eps);
    const at::Tensor q =
        query_and_cache(t, layer, x, positions, slots, cache, l);
    const at::Tensor attended =
        ops::paged_decode_attention(q, cache.keys(l), cache.values(l), batch, t.attention_scale_);
    const at::Tensor post =
        ops::add_rms_norm(h, at::linear(attended, layer.o_proj), layer.post_norm, eps);
    pending = at::linear(
        ops::silu_mul(at::linear(post, layer.gate_proj), at::linear(post, layer.up_proj)),
        layer.down_proj);
  }
  if (pending.defined()) h.add_(pending);
}

at::Tensor DecodeSteps::exit_confidence(const Transformer& t, const at::Tensor& h,
                                        const ExitPolicy& policy, at::Tensor& logits) {
  logits = t.exit_logits(h);
  return Transformer::confidence(logits, policy.metric);
}

ExitSplit DecodeSteps::take_exits(StepOutput& out, std::vector<int64_t>& active,
                                  const at::Tensor& confidence, const at::Tensor& logits,
                                  int32_t layer, bool last, const ExitPolicy& policy) {
  const float* conf = confidence.data_ptr<float>();
  const int64_t rows = static_cast<int64_t>(active.size());
  ExitSplit split;
  for (int64_t a = 0; a < rows; ++a) {
    (conf[a] >= policy.threshold || last ? split.leaving : split.staying).push_back(a);
  }
  if (split.leaving.empty()) return split;
  const at::Tensor leaving_logits =
      (split.staying.empty() ? logits.narrow(0, 0, rows)
                             : logits.index_select(0, long_tensor(split.leaving, logits.device())))
          .to(at::kFloat)
          .cpu();
  for (size_t i = 0; i < split.leaving.size(); ++i) {
    const int64_t row = active[split.leaving[i]];
    const float c = conf[split.leaving[i]];
    out.logits[row].copy_(leaving_logits[i]);
    out.exits[row] = TokenExit{layer, c, c < policy.threshold};
  }
  std::vector<int64_t> still_active;
  still_active.reserve(split.staying.size());
  for (const int64_t a : split.staying) still_active.push_back(active[a]);
  active.swap(still_active);
  return split;
}

StepOutput Transformer::decode(kv::KvCache& cache, std::span<kv::SequenceKv* const> sequences,
                               std::span<const int32_t> tokens, const ExitPolicy& policy) const {
  c10::InferenceMode inference;
  const DecodePlan plan = DecodeSteps::plan_decode(*this, cache, sequences, tokens);
  StepOutput out;
  out.logits = at::empty({plan.batch, config_.vocab_size}, at::TensorOptions().dtype(at::kFloat));
  out.exits.resize(plan.batch);
#if HELIOS_WITH_CUDA
  if (graphs_ != nullptr && decode_with_graphs(*graphs_, *this, cache, plan, policy, out)) {
    for (kv::SequenceKv* sequence : sequences) sequence->length += 1;
    return out;
  }
#endif
  if (cpu_decode_ != nullptr && CpuDecode::accepts(cache)) {
    cpu_decode_->decode(*this, cache, plan, policy, out);
    for (kv::SequenceKv* sequence : sequences) sequence->length += 1;
    return out;
  }
  const auto device = weights_.embed_tokens.device();
  const int64_t batch = plan.batch, max_blocks = plan.max_blocks;
  // The step's metadata in two host-to-device copies: token ids, positions and new slots
  // (int64), then block tables and context lengths (int32) for the attention kernel.
  const at::Tensor meta = long_tensor(plan.rows, device);
  const at::Tensor tables_and_lens =
      at::tensor(plan.tables, at::TensorOptions().dtype(at::kInt)).to(device);
  at::Tensor row_positions = meta.narrow(0, batch, batch);
  at::Tensor row_slots = meta.narrow(0, 2 * batch, batch);
  const at::Tensor tables = tables_and_lens.narrow(0, 0, batch * max_blocks).view({batch, max_blocks});
  const at::Tensor lengths = tables_and_lens.narrow(0, batch * max_blocks, batch);
  ops::DecodeBatch rows_batch(tables, lengths, plan.longest, plan.block_size);
  at::Tensor h = at::embedding(weights_.embed_tokens, meta.narrow(0, 0, batch));

  std::vector<int64_t> active(batch);  // active row -> batch row
  for (int64_t b = 0; b < batch; ++b) active[b] = b;
  int64_t begin = 0;
  for (const int32_t end : DecodeSteps::decode_segments(*this, policy)) {
    DecodeSteps::run_layers(*this, begin, end, h, row_positions, row_slots, rows_batch, cache);
    begin = end;
    const bool last = end == loaded_layers();
    at::Tensor logits;
    const at::Tensor conf = DecodeSteps::exit_confidence(*this, h, policy, logits).cpu();
    const ExitSplit split = DecodeSteps::take_exits(out, active, conf, logits, end, last, policy);
    if (last) break;
    if (split.leaving.empty()) continue;
    // Rows that left: their skipped layers' keys/values from the exit state; then the rest
    // continues as a smaller batch.
    const at::Tensor leaving_index = long_tensor(split.leaving, device);
    DecodeSteps::fill_skipped_layers(*this, cache, end, h.index_select(0, leaving_index),
                                     row_positions.index_select(0, leaving_index),
                                     row_slots.index_select(0, leaving_index));
    if (active.empty()) break;
    const at::Tensor staying_index = long_tensor(split.staying, device);
    h = h.index_select(0, staying_index);
    row_positions = row_positions.index_select(0, staying_index);
    row_slots = row_slots.index_select(0, staying_index);
    rows_batch = rows_batch.select_rows(staying_index);
  }
  for (kv::SequenceKv* sequence : sequences) sequence->length += 1;
  return out;
}

}  // namespace helios::model
