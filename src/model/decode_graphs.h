#pragma once

// CUDA graphs of the decode step (src/model/cuda/decode_graphs.cpp, built with HELIOS_CUDA).
//
// A decode step runs from one evaluated exit head to the next in segments: the layers in
// between, then the head and each row's confidence. All of a segment's work is on the device
// and its shapes are fixed once the batch is padded to a bucket (1, 2, 4, ..., 128 rows) and
// the attention's context bound is rounded up to a power of two (at least 256 positions), so
// each (rows bucket, context bucket, segment) is captured once and then replayed. Between
// segments the host reads the confidences, records the rows that leave, fills their skipped
// layers' keys/values eagerly, and moves the remaining rows into the static buffers of their
// (smaller) bucket. Padding rows write no keys/values (slot -1) and read a valid block.
// Graphs are bound to the KvCache they were captured with; a different cache discards them.

#include <memory>

#include "decode_steps.h"
#include "helios/kv/kv_cache.h"
#include "helios/model/transformer.h"

namespace helios::model {

std::shared_ptr<DecodeGraphs> make_decode_graphs(const Transformer& transformer);

// One decode step through the graphs, filling `out` (logits and exits of every row); returns
// false, touching nothing, when the step is not graphable (more rows than the largest bucket).
bool decode_with_graphs(DecodeGraphs& graphs, const Transformer& transformer,
                        kv::KvCache& cache, const DecodePlan& plan, const ExitPolicy& policy,
                        StepOutput& out);

}  // namespace helios::model
