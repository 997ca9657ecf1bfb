#pragma once

// The steps of one decode step, shared by the eager path (Transformer::decode) and the graphed
// one (cuda/decode_graphs.cpp), so that both compute the same thing in the same order.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <span>
#include <vector>

#include "helios/kv/kv_cache.h"
#include "helios/model/transformer.h"
#include "helios/ops/attention.h"

namespace helios::model {

// One decode step's host-side metadata, built once for the eager and the graphed paths.
struct DecodePlan {
  int64_t batch = 0;
  int64_t longest = 0;          // max context length after this step's token
  int64_t block_size = 0;       // tokens per KV block
  int64_t max_blocks = 0;       // blocks of the longest row
  std::vector<int64_t> rows;    // token ids [batch], positions [batch], new slots [batch]
  std::vector<int32_t> tables;  // block tables [batch, max_blocks], then context lengths [batch]
};

// Rows of an exit point's batch (indices into it) that left there, and those that go on.
struct ExitSplit {
  std::vector<int64_t> leaving, staying;
};

struct DecodeSteps {
  // The layer counts after which decode evaluates an exit head: every exit point, or only
  // the last loaded layer when no row can leave earlier.
  static std::vector<int32_t> decode_segments(const Transformer& t, const ExitPolicy& policy);
  static DecodePlan plan_decode(const Transformer& t, const kv::KvCache& cache,
                                std::span<kv::SequenceKv* const> sequences,
                                std::span<const int32_t> tokens);
  // Layers [begin, end) for rows h [rows, hidden] (updated in place) at `positions`, writing
  // their keys/values at `slots`. Device work only: no host synchronisation (capturable).
  static void run_layers(const Transformer& t, int64_t begin, int64_t end, at::Tensor& h,
                         const at::Tensor& positions, const at::Tensor& slots,
                         const ops::DecodeBatch& batch, kv::KvCache& cache);
  // The exit head over h: sets `logits` and returns each row's confidence (device, float32).
  static at::Tensor exit_confidence(const Transformer& t, const at::Tensor& h,
                                    const ExitPolicy& policy, at::Tensor& logits);
  // Host side of an exit point over the active rows: rows confident enough (every row at the
  // last loaded layer) leave with their logits and exit recorded in `out`; `active` (active row
  // -> batch row) keeps the rest. confidence: float32 on the CPU, one per active row.
  static ExitSplit take_exits(StepOutput& out, std::vector<int64_t>& active,
                              const at::Tensor& confidence, const at::Tensor& logits, int32_t layer,
                              bool last, const ExitPolicy& policy);
  // The keys/values of layers [first_layer, loaded) for rows that left with `hidden`: the
  // projections of their exit state (state propagation).
  static void fill_skipped_layers(const Transformer& t, kv::KvCache& cache, int64_t first_layer,
                                  const at::Tensor& hidden, const at::Tensor& positions,
                                  const at::Tensor& slots);
};

}  // namespace helios::model
