#include "helios/model/perplexity.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>

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

  const std::vector<int32_t>& exit_layers = transformer.exit_points();
  const size_t exits = exit_layers.size();
  std::vector<double> nll_sum(exits, 0.0);
  ExitPerplexity out;
  out.exit_layers = exit_layers;
  out.exit_histogram.assign(exits, 0);

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
    // The last input position has no target (except when padding makes it BOS, also ignored).
    const at::Tensor valid = targets.ge(0).to(device);
    const at::Tensor flat_targets = targets.clamp_min(0).to(device).view({-1});
    const std::vector<at::Tensor> hidden = transformer.forward_exits(inputs.to(device));
    at::Tensor first_exit = at::full({count * length}, static_cast<int64_t>(exits - 1),
                                     at::TensorOptions().dtype(at::kLong).device(device));
    for (size_t e = 0; e < exits; ++e) {
      const at::Tensor logits =
          transformer.exit_logits(hidden[e]).to(at::kFloat).view({count * length, -1});
      const at::Tensor nll =
          at::nll_loss(at::log_softmax(logits, -1), flat_targets, {}, at::Reduction::None);
      nll_sum[e] += nll.masked_select(valid.view({-1})).sum().item<double>();
      if (e + 1 < exits) {
        const at::Tensor confident =
            Transformer::confidence(logits, policy.metric).ge(policy.threshold);
        const at::Tensor unassigned = first_exit.eq(static_cast<int64_t>(exits - 1));
        first_exit.masked_fill_(confident.logical_and(unassigned), static_cast<int64_t>(e));
      }
    }
    const at::Tensor assigned = first_exit.masked_select(valid.view({-1})).cpu();
    const at::Tensor counts = at::bincount(assigned, {}, static_cast<int64_t>(exits));
    for (size_t e = 0; e < exits; ++e) out.exit_histogram[e] += counts[e].item<int64_t>();
    out.tokens += valid.sum().item<int64_t>();
  }
  for (size_t e = 0; e < exits; ++e) {
    out.mean_nll.push_back(nll_sum[e] / static_cast<double>(out.tokens));
    out.perplexity.push_back(std::exp(out.mean_nll.back()));
  }
  return out;
}

}  // namespace helios::model
