#include "../decode_graphs.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <map>
#include <mutex>
#include <optional>
#include <tuple>
#include <vector>

#include "paged_attention.cuh"

namespace helios::model {
namespace {

constexpr int64_t kMaxGraphRows = 128;

// The smallest power of two that is >= both n and `at_least` (a power of two).
int64_t pow2_bucket(int64_t n, int64_t at_least = 1) {
  int64_t bucket = at_least;
  while (bucket < n) bucket *= 2;
  return bucket;
}

int64_t row_bucket(int64_t rows) { return pow2_bucket(rows); }

// At least one attention partition, so short contexts share one bucket.
int64_t context_bucket(int64_t longest) { return pow2_bucket(longest, kernels::kPartitionTokens); }

at::Tensor index_tensor(const std::vector<int64_t>& values, const at::Device& device) {
  return at::tensor(values, at::TensorOptions().dtype(at::kLong)).to(device);
}

}  // namespace

class DecodeGraphs {
 public:
  explicit DecodeGraphs(const Transformer& transformer)
      : device_(transformer.weights().embed_tokens.device()),
        pool_(at::cuda::graph_pool_handle()),
        capture_stream_(at::cuda::getStreamFromPool(false, device_.index())) {}

  bool decode(const Transformer& t, kv::KvCache& cache, const DecodePlan& plan,
              const ExitPolicy& policy, StepOutput& out);

 private:
  // The static inputs of one (rows, context) bucket, read by every graph captured for it.
  struct Buffers {
    int64_t rows = 0, context = 0, max_blocks = 0;
    at::Tensor meta;    // int64 [3 * rows]: token ids, positions, new slots
    at::Tensor tables;  // int32 [rows * max_blocks + rows]: block tables, then context lengths
    at::Tensor h;       // [rows, hidden]
    at::Tensor host_meta, host_tables;  // pinned staging of meta and tables
    std::optional<ops::DecodeBatch> batch;

    at::Tensor ids() const { return meta.narrow(0, 0, rows); }
    at::Tensor positions() const { return meta.narrow(0, rows, rows); }
    at::Tensor slots() const { return meta.narrow(0, 2 * rows, rows); }
    at::Tensor block_tables() const {
      return tables.narrow(0, 0, rows * max_blocks).view({rows, max_blocks});
    }
    at::Tensor lengths() const { return tables.narrow(0, rows * max_blocks, rows); }
  };
  struct Segment {
    at::cuda::CUDAGraph graph;
    at::Tensor logits, confidence;  // the graph's outputs, rewritten by each replay
  };
  // rows, context, first layer, end layer, metric
  using Key = std::tuple<int64_t, int64_t, int32_t, int32_t, int>;

  Buffers& buffers(const Transformer& t, int64_t rows, int64_t context, int64_t block_size);
  Segment& segment(const Transformer& t, kv::KvCache& cache, Buffers& buffers, int32_t begin,
                   int32_t end, const ExitPolicy& policy);
  static void run(const Transformer& t, kv::KvCache& cache, Buffers& b, int32_t begin,
                  int32_t end, const ExitPolicy& policy, at::Tensor& logits,
                  at::Tensor& confidence);
  void bind(const kv::KvCache& cache);
  static void pad(Buffers& b, int64_t from);

  at::Device device_;
  at::cuda::MempoolId_t pool_;
  // Warm-up and capture run on this side stream (a capture cannot use the default stream),
  // so the cuBLAS workspace of the stream the graphs record is made before any capture.
  c10::cuda::CUDAStream capture_stream_;
  std::mutex mutex_;
  std::vector<const void*> cache_storage_;  // the cache the graphs write to
  std::map<std::pair<int64_t, int64_t>, std::unique_ptr<Buffers>> buffers_;
  std::map<Key, std::unique_ptr<Segment>> segments_;
};

void DecodeGraphs::bind(const kv::KvCache& cache) {
  std::vector<const void*> storage;
  kv::KvCache& c = const_cast<kv::KvCache&>(cache);
  for (int64_t l = 0; l < cache.shape().num_layers; ++l) {
    storage.push_back(c.keys(l).data_ptr());
    storage.push_back(c.values(l).data_ptr());
  }
  if (storage != cache_storage_) {
    segments_.clear();
    cache_storage_ = std::move(storage);
  }
}

DecodeGraphs::Buffers& DecodeGraphs::buffers(const Transformer& t, int64_t rows, int64_t context,
                                             int64_t block_size) {
  auto& slot = buffers_[{rows, context}];
  if (slot) return *slot;
  slot = std::make_unique<Buffers>();
  Buffers& b = *slot;
  b.rows = rows;
  b.context = context;
  b.max_blocks = (context + block_size - 1) / block_size;
  const auto on_device = at::TensorOptions().device(device_);
  b.meta = at::zeros({3 * rows}, on_device.dtype(at::kLong));
  b.tables = at::zeros({rows * b.max_blocks + rows}, on_device.dtype(at::kInt));
  b.h = at::zeros({rows, t.config().hidden_size},
                  on_device.dtype(t.weights().embed_tokens.scalar_type()));
  b.host_meta = at::empty({3 * rows}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  b.host_tables = at::empty({rows * b.max_blocks + rows},
                            at::TensorOptions().dtype(at::kInt).pinned_memory(true));
  b.batch.emplace(b.block_tables(), b.lengths(), context, block_size);
  pad(b, 0);
  return b;
}

// Rows [from, rows) become padding: position 0, no cache write, one attended key in block 0.
void DecodeGraphs::pad(Buffers& b, int64_t from) {
  const int64_t n = b.rows - from;
  if (n <= 0) return;
  b.ids().narrow(0, from, n).zero_();
  b.positions().narrow(0, from, n).zero_();
  b.slots().narrow(0, from, n).fill_(-1);
  b.block_tables().narrow(0, from, n).zero_();
  b.lengths().narrow(0, from, n).fill_(1);
}

void DecodeGraphs::run(const Transformer& t, kv::KvCache& cache, Buffers& b, int32_t begin,
                       int32_t end, const ExitPolicy& policy, at::Tensor& logits,
                       at::Tensor& confidence) {
  if (begin == 0) b.h.copy_(at::embedding(t.weights().embed_tokens, b.ids()));
  DecodeSteps::run_layers(t, begin, end, b.h, b.positions(), b.slots(), *b.batch, cache);
  confidence = DecodeSteps::exit_confidence(t, b.h, policy, logits);
}

DecodeGraphs::Segment& DecodeGraphs::segment(const Transformer& t, kv::KvCache& cache,
                                             Buffers& b, int32_t begin, int32_t end,
                                             const ExitPolicy& policy) {
  const Key key{b.rows, b.context, begin, end, static_cast<int>(policy.metric)};
  auto& slot = segments_[key];
  if (slot) return *slot;
  auto segment = std::make_unique<Segment>();
  // The step's metadata copies and earlier segments are done before the side stream starts.
  c10::cuda::device_synchronize();
  {
    const c10::cuda::CUDAStreamGuard side(capture_stream_);
    // Warm-up outside the capture (cuBLAS handle and workspace of this stream, lazy
    // initialisation) on the real inputs; h is restored, and the keys/values it wrote are
    // those the replay writes again.
    const at::Tensor saved = b.h.clone();
    at::Tensor logits, confidence;
    run(t, cache, b, begin, end, policy, logits, confidence);
    b.h.copy_(saved);
    capture_stream_.synchronize();
    segment->graph.capture_begin(pool_);
    run(t, cache, b, begin, end, policy, segment->logits, segment->confidence);
    segment->graph.capture_end();
  }
  // Replays run on the caller's stream: nothing of the side stream may still be pending.
  c10::cuda::device_synchronize();
  slot = std::move(segment);
  return *slot;
}

bool DecodeGraphs::decode(const Transformer& t, kv::KvCache& cache, const DecodePlan& plan,
                          const ExitPolicy& policy, StepOutput& out) {
  if (plan.batch > kMaxGraphRows) return false;
  const std::lock_guard<std::mutex> lock(mutex_);
  const c10::cuda::CUDAGuard guard(device_);
  bind(cache);
  const int64_t context = context_bucket(plan.longest);
  const int64_t batch = plan.batch;
  Buffers* current = &buffers(t, row_bucket(batch), context, plan.block_size);

  // Stage the step's metadata in pinned memory; two asynchronous copies to the device.
  {
    Buffers& b = *current;
    int64_t* meta = b.host_meta.data_ptr<int64_t>();
    int32_t* tables = b.host_tables.data_ptr<int32_t>();
    std::fill(meta, meta + 3 * b.rows, 0);
    std::fill(meta + 2 * b.rows, meta + 3 * b.rows, -1);
    std::fill(tables, tables + b.rows * b.max_blocks, 0);
    std::fill(tables + b.rows * b.max_blocks, tables + b.rows * b.max_blocks + b.rows, 1);
    for (int64_t r = 0; r < batch; ++r) {
      meta[r] = plan.rows[r];
      meta[b.rows + r] = plan.rows[batch + r];
      meta[2 * b.rows + r] = plan.rows[2 * batch + r];
      std::copy_n(plan.tables.begin() + r * plan.max_blocks, plan.max_blocks,
                  tables + r * b.max_blocks);
      tables[b.rows * b.max_blocks + r] = plan.tables[batch * plan.max_blocks + r];
    }
    b.meta.copy_(b.host_meta, /*non_blocking=*/true);
    b.tables.copy_(b.host_tables, /*non_blocking=*/true);
  }

  std::vector<int64_t> active(batch);
  for (int64_t r = 0; r < batch; ++r) active[r] = r;
  int32_t begin = 0;
  for (const int32_t end : DecodeSteps::decode_segments(t, policy)) {
    Segment& s = segment(t, cache, *current, begin, end, policy);
    s.graph.replay();
    const int64_t rows = static_cast<int64_t>(active.size());
    const bool last = end == t.loaded_layers();
    const at::Tensor conf = s.confidence.narrow(0, 0, rows).cpu();
    const ExitSplit split =
        DecodeSteps::take_exits(out, active, conf, s.logits, end, last, policy);
    begin = end;
    if (last) break;
    if (split.leaving.empty()) continue;
    Buffers& from = *current;
    const at::Tensor leaving = index_tensor(split.leaving, device_);
    DecodeSteps::fill_skipped_layers(t, cache, end, from.h.index_select(0, leaving),
                                     from.positions().index_select(0, leaving),
                                     from.slots().index_select(0, leaving));
    if (active.empty()) break;
    // The rows that go on move to the front of their bucket's buffers (a smaller bucket when
    // they fit one), the rest of which is padding.
    const int64_t n = static_cast<int64_t>(split.staying.size());
    Buffers& to = buffers(t, row_bucket(n), context, plan.block_size);
    const at::Tensor staying = index_tensor(split.staying, device_);
    const at::Tensor h = from.h.index_select(0, staying);
    const at::Tensor positions = from.positions().index_select(0, staying);
    const at::Tensor slots = from.slots().index_select(0, staying);
    const at::Tensor tables = from.block_tables().index_select(0, staying);
    const at::Tensor lengths = from.lengths().index_select(0, staying);
    to.h.narrow(0, 0, n).copy_(h);
    to.positions().narrow(0, 0, n).copy_(positions);
    to.slots().narrow(0, 0, n).copy_(slots);
    to.block_tables().narrow(0, 0, n).copy_(tables);
    to.lengths().narrow(0, 0, n).copy_(lengths);
    pad(to, n);
    current = &to;
  }
  return true;
}

std::shared_ptr<DecodeGraphs> make_decode_graphs(const Transformer& transformer) {
  return std::make_shared<DecodeGraphs>(transformer);
}

bool decode_with_graphs(DecodeGraphs& graphs, const Transformer& transformer,
                        kv::KvCache& cache, const DecodePlan& plan, const ExitPolicy& policy,
                        StepOutput& out) {
  return graphs.decode(transformer, cache, plan, policy, out);
}

}  // namespace helios::model
