#include "helios/engine/router.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

namespace helios::engine {

std::vector<double> first_exit_nll(const model::Transformer& model,
                                   std::span<const std::span<const int32_t>> prompts,
                                   int64_t max_tokens) {
  constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> out(prompts.size(), kNaN);
  std::vector<int64_t> lengths;
  int64_t longest = 0;
  for (const auto& prompt : prompts) {
    lengths.push_back(std::min<int64_t>(static_cast<int64_t>(prompt.size()), max_tokens));
    longest = std::max(longest, lengths.back());
  }
  if (longest < 2) return out;
  const auto batch = static_cast<int64_t>(prompts.size());
  std::vector<int64_t> ids(static_cast<size_t>(batch * longest), 0);
  for (int64_t b = 0; b < batch; ++b) {
    std::copy_n(prompts[b].begin(), lengths[b], ids.begin() + b * longest);
  }
  c10::InferenceMode inference;
  const at::Tensor tokens =
      at::tensor(ids, at::kLong).view({batch, longest}).to(model.weights().embed_tokens.device());
  at::Tensor h = model.embed(tokens);
  const int32_t first_exit = model.exit_points().front();
  for (int32_t layer = 0; layer < first_exit; ++layer) {
    h = model.forward_layer(model.weights().layers[static_cast<size_t>(layer)], h);
  }
  // Positions [0, n - 1) predict tokens [1, n); padded positions are masked out.
  const at::Tensor log_probs =
      at::log_softmax(model.exit_logits(h.narrow(1, 0, longest - 1)).to(at::kFloat), -1);
  const at::Tensor targets = tokens.narrow(1, 1, longest - 1).unsqueeze(-1);
  const at::Tensor nll = -log_probs.gather(-1, targets).squeeze(-1).to(at::kCPU);  // [B, n - 1]
  const auto accessor = nll.accessor<float, 2>();
  for (int64_t b = 0; b < batch; ++b) {
    if (lengths[b] < 2) continue;
    double sum = 0;
    for (int64_t t = 0; t < lengths[b] - 1; ++t) sum += accessor[b][t];
    out[b] = sum / static_cast<double>(lengths[b] - 1);
  }
  return out;
}

RouteChoices route_prompts(std::span<const model::Transformer* const> members,
                           std::span<const std::span<const int32_t>> prompts, int64_t max_tokens) {
  RouteChoices choices;
  choices.members.assign(prompts.size(), 0);
  if (members.size() < 2 || prompts.empty()) return choices;
  const auto start = std::chrono::steady_clock::now();
  choices.nll.assign(prompts.size(), std::vector<double>(members.size()));
  for (size_t m = 0; m < members.size(); ++m) {
    const std::vector<double> nll = first_exit_nll(*members[m], prompts, max_tokens);
    for (size_t p = 0; p < prompts.size(); ++p) choices.nll[p][m] = nll[p];
  }
  for (size_t p = 0; p < prompts.size(); ++p) {
    const std::vector<double>& nll = choices.nll[p];
    size_t& best = choices.members[p];
    for (size_t m = 1; m < members.size(); ++m) {
      if (!std::isnan(nll[m]) && (std::isnan(nll[best]) || nll[m] < nll[best])) best = m;
    }
  }
  choices.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return choices;
}

}  // namespace helios::engine
