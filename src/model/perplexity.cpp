#include "helios/model/perplexity.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>

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

}  // namespace helios::model
