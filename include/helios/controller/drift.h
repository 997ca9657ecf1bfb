#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <optional>
#include <utility>
#include <vector>

#include "helios/controller/performance_table.h"

// Whether the live prompts have drifted away from what the served model's row measured: the
// perplexity part of the controller's SLO drift trigger, a pure function of the window and the
// row so that it is unit-tested on synthetic figures.
namespace helios::controller {

// How far above its row the live prompt perplexity must be to count as drift without a
// per-prompt comparison (prompts vary in difficulty; a change of domain moves it 10-50x).
inline constexpr double kPerplexityDriftFactor = 2.0;
// With per-prompt evidence: the one-sided Welch t statistic the live prompts' mean NLL per
// token must reach above the row's prompts' (about 1% false alarms per full window on normal
// per-prompt means), and the least shift that counts (x1.25 in perplexity), so that a tiny but
// certain change on many prompts does not re-profile.
inline constexpr double kDriftTStatistic = 2.6;
inline constexpr double kDriftMinRatio = 1.25;

// Hysteresis on drift: a pass started by drift that ends on the model served before it found
// no better choice, so the drift was a false alarm for the decision (mixed traffic whose
// per-prompt perplexities are bimodal does this to an 8-prompt window). Each such pass
// doubles the prompts the perplexity drift window needs, up to 2^kMaxDriftBackoff times the
// SLO's; a pass that moves the model resets it.
inline constexpr int kMaxDriftBackoff = 3;
// The backoff after a pass: `drift_pass` when drift started it, `moved` when it ended on
// another model than the one served before it.
int next_drift_backoff(int backoff, bool drift_pass, bool moved);

struct DriftCheck {
  bool drifted = false;
  double live = 0;      // pooled perplexity of the window
  double expected = 0;  // policy_perplexity of the row at the served depth
  double t = 0;         // Welch t of the per-prompt means (0 without per-prompt evidence)
  int64_t live_prompts = 0, row_prompts = 0;
  std::string reason;   // the figures, when drifted
};

// `window`: the sampled live prompts' (NLL sum, tokens) at the served depth, oldest first.
// Drift needs the live perplexity above `bound` (the SLO's) and either kPerplexityDriftFactor
// times the row's, or, when the row carries per-prompt evidence (its shared-sample scores),
// live prompts whose per-prompt mean NLL is above the row's prompts' by at least
// log(kDriftMinRatio) with a Welch t of at least kDriftTStatistic. The second catches a
// change to prompts the served model handles only moderately worse, which never doubles a
// perplexity measured on harder ones.
DriftCheck perplexity_drift(const std::deque<std::pair<double, int64_t>>& window,
                            const ProfileRow& row, int64_t depth, double bound);

// The live leave rule of a resident set: requests each member was routed over the window
// (`routed`, by member, in the order of `names`). Once they add up to `window` requests, a
// member routed less than `min_share` of them means the traffic has left it: the reason, with
// the shares. nullopt before a full window, or when every member keeps its share.
std::optional<std::string> resident_share_drift(const std::vector<int64_t>& routed,
                                                const std::vector<std::string>& names,
                                                int64_t window, double min_share);

}  // namespace helios::controller
