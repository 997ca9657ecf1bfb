#include "helios/engine/sampler.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "helios/common/error.h"

namespace helios::engine {
namespace {

// Below this many candidates the nucleus search just sorts what is left.
constexpr size_t kSortBelow = 64;
// Top-k up to this size scans with a bounded heap: one compare per token and rare inserts,
// about 10x faster than nth_element over 128k tokens. Larger k falls back to nth_element.
constexpr size_t kHeapMaxK = 1024;
// A kept set at most 1/kSortRatio of the vocabulary is handled as a sorted candidate list;
// a larger one as a dense per-id weight array, which avoids n log n work on wide sets.
constexpr size_t kSortRatio = 16;
// The dense nucleus search buckets tokens by (max - logit) / T over [0, kBucketSpan]; tokens
// further down (relative weight below e^-40) share the last bucket.
constexpr size_t kBuckets = 2048;
constexpr double kBucketSpan = 40.0;

Error invalid(const std::string& message) {
  return Error(ErrorCode::kInvalidArgument, message);
}

// A uniform double in [0, 1) from the top 53 bits. std::uniform_real_distribution is
// implementation-defined, so it would make seeded outputs differ between standard libraries.
double uniform01(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

struct Candidate {
  float logit;
  float weight;  // unnormalized probability, filled once the candidate survives top-k
  int32_t id;
};

// The ranking every cut uses: higher logit first, lower id on ties. Being a strict total order,
// it makes each cut a unique set (ties at the cut go to the lower id, as in greedy), whatever
// order the selection algorithms leave the buffer in.
bool ranks_above(const Candidate& a, const Candidate& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

// Unnormalized softmax(logit / T), shifted by the max so the top token weighs 1.
struct Softmax {
  float max_logit;
  float temperature;
  // Divide rather than multiply by 1/T: a denormal T makes 1/T infinite, and 0 * inf is NaN.
  float operator()(float logit) const { return std::exp((logit - max_logit) / temperature); }
};

// Argmax with the lowest id on ties, validating as it scans. NaN or +inf would turn the softmax
// into NaNs and the draw into garbage; -inf is a legitimate mask value.
int32_t checked_argmax(const float* x, int64_t n) {
  int64_t best = 0;
  float best_value = -INFINITY;
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    if (std::isnan(v) || v == INFINITY) {
      throw invalid("logits must not contain NaN or +inf, got " + std::to_string(v) + " at index " +
                    std::to_string(i));
    }
    if (v > best_value) {  // strict: the first maximum wins
      best_value = v;
      best = i;
    }
  }
  if (best_value == -INFINITY) throw invalid("logits are all -inf: no token can be sampled");
  return static_cast<int32_t>(best);
}

// The k top-ranked tokens, in no particular order.
std::vector<Candidate> top_k(const float* x, int64_t vocab, size_t k) {
  auto by_rank = [](const Candidate& a, const Candidate& b) { return ranks_above(a, b); };
  std::vector<Candidate> c;
  if (k > kHeapMaxK) {
    c.resize(static_cast<size_t>(vocab));
    for (int64_t i = 0; i < vocab; ++i)
      c[static_cast<size_t>(i)] = {x[i], 0.0f, static_cast<int32_t>(i)};
    std::nth_element(c.begin(), c.begin() + static_cast<std::ptrdiff_t>(k - 1), c.end(), by_rank);
    c.resize(k);
    return c;
  }
  // With by_rank as the heap's "less", the front is the lowest-ranked token kept so far.
  c.reserve(k);
  for (size_t i = 0; i < k; ++i) c.push_back({x[i], 0.0f, static_cast<int32_t>(i)});
  std::make_heap(c.begin(), c.end(), by_rank);
  for (int64_t i = static_cast<int64_t>(k); i < vocab; ++i) {
    // Ids only grow, so a tie with the front never ranks above it: strict > is the full test.
    if (!(x[i] > c.front().logit)) continue;
    std::pop_heap(c.begin(), c.end(), by_rank);
    c.back() = {x[i], 0.0f, static_cast<int32_t>(i)};
    std::push_heap(c.begin(), c.end(), by_rank);
  }
  return c;
}

// Finds the nucleus in c: the shortest rank-ordered prefix whose weight reaches `threshold`.
// Quickselect on mass rather than on count: partition around a pivot; if the part ranked above
// it already reaches the threshold the boundary lies inside, otherwise that part is wholly in.
// Expected linear time, where sorting a wide nucleus (a flat distribution over 128k tokens)
// would cost milliseconds. Leaves the nucleus in c[0, size) and returns {size, mass}.
std::pair<size_t, double> find_nucleus(std::vector<Candidate>& c, double threshold) {
  auto at = [&](size_t i) { return c.begin() + static_cast<std::ptrdiff_t>(i); };
  size_t lo = 0;
  size_t hi = c.size();
  double mass = 0.0;  // weight of c[0, lo), all inside the nucleus and below the threshold
  while (hi - lo > kSortBelow) {
    // Median of three by rank: deterministic, and robust to logits already ordered by id.
    Candidate a = c[lo], b = c[lo + (hi - lo) / 2], z = c[hi - 1];
    if (ranks_above(b, a)) std::swap(a, b);
    if (ranks_above(z, b)) b = ranks_above(z, a) ? a : z;
    const Candidate pivot = b;
    const auto mid =
        std::partition(at(lo), at(hi), [&](const Candidate& e) { return ranks_above(e, pivot); });
    const size_t m = static_cast<size_t>(mid - c.begin());
    double upper = 0.0;
    for (size_t i = lo; i < m; ++i) upper += c[i].weight;
    if (mass + upper >= threshold) {
      hi = m;  // m < hi: the pivot does not rank above itself, so the range always shrinks
      continue;
    }
    mass += upper + pivot.weight;
    // The pivot tops what is left, so it comes next in rank order.
    std::iter_swap(mid,
                   std::find_if(mid, at(hi), [&](const Candidate& e) { return e.id == pivot.id; }));
    if (mass >= threshold) return {m + 1, mass};
    lo = m + 1;
  }
  std::sort(at(lo), at(hi),
            [](const Candidate& a, const Candidate& b) { return ranks_above(a, b); });
  for (size_t i = lo; i < hi; ++i) {
    mass += c[i].weight;
    if (mass >= threshold) return {i + 1, mass};
  }
  return {hi, mass};  // rounding kept the threshold just out of reach: take the whole range
}

// Walks (id, weight) pairs in id order until the running weight passes `target`. If rounding
// leaves the target at the very top, returns the last token with positive weight.
template <typename Entry>
int32_t pick(size_t n, double target, const Entry& entry) {
  double cumulative = 0.0;
  int32_t last_positive = -1;
  for (size_t i = 0; i < n; ++i) {
    const auto [id, weight] = entry(i);
    if (weight <= 0.0f) continue;
    cumulative += weight;
    last_positive = id;
    if (cumulative > target) return id;
  }
  return last_positive;
}

// The nucleus over a dense weight array (w[id] == 0: cut or underflowed). A histogram of mass
// by logit bucket finds the one bucket where the running mass crosses `threshold` in a single
// linear pass; only that bucket's tokens go through find_nucleus. Bucket order is rank order,
// because the bucket index is monotone in the logit. Returns the lowest-ranked nucleus token,
// so the nucleus is every token ranking at or above it, and the nucleus mass.
std::pair<Candidate, double> dense_nucleus(const float* x, const std::vector<float>& w,
                                           const Softmax& softmax, double threshold) {
  float lowest = INFINITY;
  for (size_t i = 0; i < w.size(); ++i) {
    if (w[i] > 0.0f) lowest = std::min(lowest, x[i]);
  }
  // Spread the buckets over the logits actually present, so a flat distribution still splits.
  const double spread = (softmax.max_logit - lowest) / softmax.temperature;
  const double span = std::min(kBucketSpan, spread);
  const double scale = span > 0.0 ? static_cast<double>(kBuckets) / span : 0.0;
  auto bucket = [&](float logit) -> size_t {
    const double b = (softmax.max_logit - logit) / softmax.temperature * scale;
    // Also catches inf (a tiny T) before the cast, which would be undefined behavior.
    return b < static_cast<double>(kBuckets - 1) ? static_cast<size_t>(b) : kBuckets - 1;
  };
  std::vector<double> hist(kBuckets, 0.0);
  for (size_t i = 0; i < w.size(); ++i) {
    if (w[i] > 0.0f) hist[bucket(x[i])] += w[i];
  }
  size_t crossing = kBuckets;
  size_t last_used = 0;
  double before = 0.0;  // mass of the buckets ranked above `crossing`
  for (size_t b = 0; b < kBuckets; ++b) {
    if (hist[b] <= 0.0) continue;
    if (before + hist[b] >= threshold) {
      crossing = b;
      break;
    }
    before += hist[b];
    last_used = b;
  }
  if (crossing == kBuckets) {
    // Summation order left the threshold a rounding error above the total: the nucleus is
    // everything, so its boundary lies in the last non-empty bucket.
    crossing = last_used;
    before -= hist[last_used];
  }
  std::vector<Candidate> c;
  for (size_t i = 0; i < w.size(); ++i) {
    if (w[i] > 0.0f && bucket(x[i]) == crossing) c.push_back({x[i], w[i], static_cast<int32_t>(i)});
  }
  const auto [size, mass] = find_nucleus(c, threshold - before);
  const Candidate last =
      *std::min_element(c.begin(), c.begin() + static_cast<std::ptrdiff_t>(size),
                        [](const Candidate& a, const Candidate& b) { return ranks_above(b, a); });
  return {last, before + mass};
}

}  // namespace

void SamplingParams::validate() const {
  if (!std::isfinite(temperature) || temperature < 0.0f) {
    throw invalid("temperature must be >= 0 and finite, got " + std::to_string(temperature));
  }
  if (!(top_p > 0.0f && top_p <= 1.0f)) {  // also rejects NaN
    throw invalid("top_p must be in (0, 1], got " + std::to_string(top_p));
  }
  if (top_k < 0) {
    throw invalid("top_k must be >= 0, got " + std::to_string(top_k));
  }
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {
  params_.validate();
}

int32_t Sampler::sample(const at::Tensor& logits) {
  if (!logits.defined() || logits.dim() != 1 || logits.numel() == 0) {
    throw invalid("logits must be a non-empty 1-D tensor [vocab]");
  }
  if (!logits.device().is_cpu()) {
    throw invalid("logits must be on the CPU, got " + logits.device().str());
  }
  // Other float dtypes (bf16 logits from a half-precision head) are widened rather than
  // rejected; for float32 contiguous input both calls are no-ops.
  const at::Tensor row = logits.to(at::kFloat).contiguous();
  const float* x = row.data_ptr<float>();
  const int64_t vocab = row.numel();
  const int32_t best = checked_argmax(x, vocab);
  if (params_.greedy()) return best;

  const Softmax softmax{x[best], params_.temperature};
  const bool cut_k = params_.top_k > 0 && params_.top_k < vocab;
  const bool cut_p = params_.top_p < 1.0f;

  const double u = uniform01(rng_);
  auto top_p_of = [&](double mass) { return static_cast<double>(params_.top_p) * mass; };

  std::vector<Candidate> c;
  if (cut_k) {
    c = top_k(x, vocab, static_cast<size_t>(params_.top_k));
    for (Candidate& e : c) e.weight = softmax(e.logit);
  }
  if (cut_k && c.size() * kSortRatio <= static_cast<size_t>(vocab)) {
    // A small kept set: cut it further, then draw in id order so the token a given uniform
    // selects depends neither on the buffer order the cuts left nor on the standard library.
    double total = 0.0;
    for (const Candidate& e : c) total += e.weight;
    size_t kept = c.size();
    // The nucleus is taken over the top-k renormalized distribution (HF order: top-k, then
    // top-p), so the threshold is a fraction of the kept mass rather than of 1.
    if (cut_p) std::tie(kept, total) = find_nucleus(c, top_p_of(total));
    std::sort(c.begin(), c.begin() + static_cast<std::ptrdiff_t>(kept),
              [](const Candidate& a, const Candidate& b) { return a.id < b.id; });
    return pick(kept, u * total, [&](size_t i) { return std::pair{c[i].id, c[i].weight}; });
  }

  // A wide kept set, or the whole vocabulary: weights by id, zero where cut. Exp dominates the
  // cost, so each weight is computed once.
  std::vector<float> w(static_cast<size_t>(vocab), 0.0f);
  double total = 0.0;
  if (cut_k) {
    for (const Candidate& e : c) total += w[static_cast<size_t>(e.id)] = e.weight;
  } else {
    for (size_t i = 0; i < w.size(); ++i) total += w[i] = softmax(x[i]);
  }
  if (!cut_p) {
    return pick(w.size(), u * total, [&](size_t i) {
      return std::pair{static_cast<int32_t>(i), w[i]};
    });
  }
  const auto [last, mass] = dense_nucleus(x, w, softmax, top_p_of(total));
  auto in_nucleus = [&](size_t i) {
    return x[i] > last.logit || (x[i] == last.logit && static_cast<int32_t>(i) <= last.id);
  };
  return pick(w.size(), u * mass, [&](size_t i) {
    return std::pair{static_cast<int32_t>(i), in_nucleus(i) ? w[i] : 0.0f};
  });
}

}  // namespace helios::engine
