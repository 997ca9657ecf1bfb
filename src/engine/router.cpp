#include "helios/engine/router.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

namespace helios::engine {

double first_exit_nll(const model::Transformer& model, std::span<const int32_t> prompt,
                      int64_t max_tokens) {
  const int64_t n = std::min<int64_t>(static_cast<int64_t>(prompt.size()), max_tokens);
  if (n < 2) return std::numeric_limits<double>::quiet_NaN();
  c10::InferenceMode inference;
  std::vector<int64_t> ids(prompt.begin(), prompt.begin() + n);
  const at::Tensor tokens = at::tensor(ids, at::kLong).view({1, n}).to(
      model.weights().embed_tokens.device());
  at::Tensor h = model.embed(tokens);
  const int32_t first_exit = model.exit_points().front();
  for (int32_t layer = 0; layer < first_exit; ++layer) {
    h = model.forward_layer(model.weights().layers[static_cast<size_t>(layer)], h);
  }
  // Positions [0, n - 1) predict tokens [1, n).
  const at::Tensor logits = model.exit_logits(h.narrow(1, 0, n - 1)).to(at::kFloat);
  const at::Tensor log_probs = at::log_softmax(logits, -1);
  const at::Tensor targets = tokens.narrow(1, 1, n - 1).unsqueeze(-1);
  return -log_probs.gather(-1, targets).mean().item<double>();
}

RouteChoice route_prompt(std::span<const model::Transformer* const> members,
                         std::span<const int32_t> prompt, int64_t max_tokens) {
  RouteChoice choice;
  if (members.size() < 2) return choice;
  const auto start = std::chrono::steady_clock::now();
  for (size_t m = 0; m < members.size(); ++m) {
    const double nll = first_exit_nll(*members[m], prompt, max_tokens);
    choice.nll.push_back(nll);
    if (!std::isnan(nll) && (std::isnan(choice.nll[choice.member]) || nll < choice.nll[choice.member])) {
      choice.member = m;
    }
  }
  choice.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return choice;
}

}  // namespace helios::engine
