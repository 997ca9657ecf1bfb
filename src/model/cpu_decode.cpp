#include "cpu_decode.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "helios/common/error.h"
#include "helios/cpu/kernels.h"

namespace helios::model {
namespace {

// A parallel pass is split into chunks of at least this many multiply-adds (or equivalent
// work): below it a thread's share is shorter than waking it.
constexpr int64_t kMinWorkPerThread = 48 * 1024;
constexpr int64_t kColumnBlock = 4;  // columns per unit of a parallel linear (the tile width)

bool usable(const at::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous();
}

const float* ptr(const at::Tensor& t) {
  return t.data_ptr<float>();
}

// Runs f(begin, end) over [0, n) in chunks of at least `grain`, in parallel when there is more
// than one chunk (at::parallel_for: the same thread pool as every ATen op, so the fused path
// never adds threads of its own).
template <class F>
void parallel(int64_t n, int64_t grain, const F& f) {
  if (n <= 0) return;
  if (n <= grain || at::get_num_threads() == 1) {
    f(0, n);
    return;
  }
  at::parallel_for(0, n, grain, f);
}

// One output of a multi-linear pass: y = x @ w^T for w [out, in].
struct LinearOut {
  const float* w;
  int64_t out;
  float* y;
  int64_t ldy;
};

// x [rows, in] (rows ldx apart) through several weight matrices in one parallel pass over
// their concatenated columns, in blocks of kColumnBlock.
void linear_multi(const cpu::Kernels& k, const float* x, int64_t rows, int64_t ldx, int64_t in,
                  std::initializer_list<LinearOut> outs) {
  int64_t blocks = 0;
  for (const LinearOut& o : outs) blocks += (o.out + kColumnBlock - 1) / kColumnBlock;
  const int64_t work_per_block = rows * in * kColumnBlock;
  const int64_t grain =
      std::max<int64_t>(1, kMinWorkPerThread / std::max<int64_t>(1, work_per_block));
  parallel(blocks, grain, [&](int64_t begin, int64_t end) {
    int64_t first = 0;  // the first block of the current output
    for (const LinearOut& o : outs) {
      const int64_t count = (o.out + kColumnBlock - 1) / kColumnBlock;
      const int64_t b0 = std::max(begin, first), b1 = std::min(end, first + count);
      if (b0 < b1) {
        k.linear(x, rows, ldx, o.w, in, (b0 - first) * kColumnBlock,
                 std::min(o.out, (b1 - first) * kColumnBlock), o.y, o.ldy);
      }
      first += count;
    }
  });
}

// Rows with `per_row` units of work each, in parallel when there are enough.
template <class F>
void for_rows(int64_t rows, int64_t per_row, const F& f) {
  const int64_t grain = std::max<int64_t>(1, kMinWorkPerThread / std::max<int64_t>(1, per_row));
  parallel(rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) f(r);
  });
}

}  // namespace

// The active rows of a step (those that have not left at an exit point), in workspace order.
struct CpuDecode::Rows {
  std::vector<int64_t> batch_row, position, slot, context;
  std::vector<const int32_t*> table;

  int64_t size() const { return static_cast<int64_t>(batch_row.size()); }
  // Keeps the rows `keep` (ascending indices), in order.
  void keep(const std::vector<int64_t>& kept) {
    for (size_t i = 0; i < kept.size(); ++i) {
      const size_t from = static_cast<size_t>(kept[i]);
      batch_row[i] = batch_row[from];
      position[i] = position[from];
      slot[i] = slot[from];
      context[i] = context[from];
      table[i] = table[from];
    }
    for (auto* v : {&batch_row, &position, &slot, &context}) v->resize(kept.size());
    table.resize(kept.size());
  }
};

std::unique_ptr<CpuDecode> CpuDecode::create(const Transformer& t, const std::string& kernels) {
  const ModelWeights& w = t.weights_;
  if (!usable(w.embed_tokens) || !usable(w.final_norm) || !usable(w.lm_head)) return nullptr;
  for (const LayerWeights& layer : w.layers) {
    for (const at::Tensor& tensor : layer.tensors()) {
      if (!usable(tensor)) return nullptr;
    }
  }
  if (!usable(t.rotary_.cos_table()) || !usable(t.rotary_.sin_table())) return nullptr;
  if (kernels.empty()) return std::make_unique<CpuDecode>(t, cpu::kernels());
  const cpu::Kernels* named = cpu::kernels_named(kernels);
  if (named == nullptr) {
    throw Error(ErrorCode::kInvalidArgument,
                "CPU kernels '" + kernels + "' are not available on this build and CPU");
  }
  return std::make_unique<CpuDecode>(t, *named);
}

bool CpuDecode::accepts(const kv::KvCache& cache) {
  return cache.device().is_cpu() && cache.shape().num_layers > 0 &&
         const_cast<kv::KvCache&>(cache).keys(0).scalar_type() == at::kFloat;
}

CpuDecode::CpuDecode(const Transformer& t, const cpu::Kernels& kernels)
    : k_(kernels),
      hidden_(t.config_.hidden_size),
      heads_(t.config_.num_attention_heads),
      kv_heads_(t.config_.num_key_value_heads),
      head_dim_(t.config_.head_dim()),
      inter_(t.config_.intermediate_size),
      vocab_(t.config_.vocab_size),
      eps_(static_cast<float>(t.config_.rms_norm_eps)),
      scale_(static_cast<float>(t.attention_scale_)) {}

const char* CpuDecode::kernels_name() const {
  return k_.name;
}

at::Tensor CpuDecode::linear(const at::Tensor& x, const at::Tensor& w) const {
  if (!usable(w) || w.dim() != 2 || !x.defined() || !x.device().is_cpu() ||
      x.scalar_type() != at::kFloat || x.dim() < 1 || x.size(-1) != w.size(1)) {
    return {};
  }
  const at::Tensor rows = x.reshape({-1, w.size(1)}).contiguous();
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = w.size(0);
  at::Tensor y = at::empty({rows.size(0), w.size(0)}, x.options());
  if (rows.size(0) > 0 && w.size(0) > 0) {
    linear_multi(k_, ptr(rows), rows.size(0), w.size(1), w.size(1),
                 {{ptr(w), w.size(0), y.data_ptr<float>(), w.size(0)}});
  }
  return y.view(sizes);
}

void CpuDecode::ensure_capacity(int64_t rows) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const size_t slab = static_cast<size_t>((heads_ / kv_heads_) * t_->rotary_.max_positions());
  if (scores_.size() < static_cast<size_t>(threads) * slab) scores_.resize(threads * slab);
  if (rows <= capacity_) return;
  capacity_ = std::max(rows, 2 * capacity_);
  const auto n = static_cast<size_t>(capacity_);
  h_.resize(n * hidden_);
  x_.resize(n * hidden_);
  qkv_.resize(n * (heads_ + 2 * kv_heads_) * head_dim_);
  attn_.resize(n * heads_ * head_dim_);
  o_.resize(n * hidden_);
  gate_up_.resize(n * 2 * inter_);
  act_.resize(n * inter_);
  pending_.resize(n * hidden_);
  logits_.resize(n * vocab_);
  for (auto* v : {&log_sum_exp_, &max_logit_, &entropy_, &confidence_}) v->resize(n);
}

void CpuDecode::run_layer(int64_t l, Rows& rows, kv::KvCache& cache, bool& pending) {
  const LayerWeights& layer = t_->weights_.layers[l];
  const int64_t n = rows.size(), hd = head_dim_, qkv_width = (heads_ + 2 * kv_heads_) * hd;
  const int64_t q_width = heads_ * hd, kv_width = kv_heads_ * hd, group = heads_ / kv_heads_;
  float* h = h_.data();
  float* x = x_.data();
  float* qkv = qkv_.data();

  for (int64_t r = 0; r < n; ++r) {
    k_.add_rms_norm(h + r * hidden_, pending ? pending_.data() + r * hidden_ : nullptr,
                    ptr(layer.input_norm), hidden_, eps_, x + r * hidden_);
  }
  pending = false;
  linear_multi(k_, x, n, hidden_, hidden_,
               {{ptr(layer.q_proj), q_width, qkv, qkv_width},
                {ptr(layer.k_proj), kv_width, qkv + q_width, qkv_width},
                {ptr(layer.v_proj), kv_width, qkv + q_width + kv_width, qkv_width}});

  // Rotary on q and k, then k and v into the row's cache slot.
  float* keys = cache.keys(l).data_ptr<float>();
  float* values = cache.values(l).data_ptr<float>();
  const float* cos = ptr(t_->rotary_.cos_table());
  const float* sin = ptr(t_->rotary_.sin_table());
  for (int64_t r = 0; r < n; ++r) {
    float* row = qkv + r * qkv_width;
    const int64_t p = rows.position[r];
    cpu::rotate_heads(row, heads_ + kv_heads_, hd, cos + p * hd, sin + p * hd);
    std::memcpy(keys + rows.slot[r] * kv_width, row + q_width, kv_width * sizeof(float));
    std::memcpy(values + rows.slot[r] * kv_width, row + q_width + kv_width,
                kv_width * sizeof(float));
  }

  // Attention, one (row, kv head) per unit; the work of a unit is its context x group x hd.
  const int64_t block_size = cache.shape().block_size;
  const int64_t longest = *std::max_element(rows.context.begin(), rows.context.end());
  const size_t slab = static_cast<size_t>(group * t_->rotary_.max_positions());
  const int64_t unit_work = std::max<int64_t>(1, 2 * longest * group * hd);
  const int64_t grain = std::max<int64_t>(1, kMinWorkPerThread / unit_work);
  parallel(n * kv_heads_, grain, [&](int64_t begin, int64_t end) {
    float* scratch = scores_.data() + static_cast<size_t>(at::get_thread_num()) * slab;
    for (int64_t u = begin; u < end; ++u) {
      const int64_t r = u / kv_heads_, g = u % kv_heads_;
      cpu::AttendArgs a;
      a.q = qkv + r * qkv_width + g * group * hd;
      a.keys = keys;
      a.values = values;
      a.block_table = rows.table[r];
      a.block_size = block_size;
      a.context = rows.context[r];
      a.kv_heads = kv_heads_;
      a.head_dim = hd;
      a.kv_head = g;
      a.group = group;
      a.scale = scale_;
      a.scores = scratch;
      a.out = attn_.data() + r * q_width + g * group * hd;
      k_.attend(a);
    }
  });

  linear_multi(k_, attn_.data(), n, q_width, q_width,
               {{ptr(layer.o_proj), hidden_, o_.data(), hidden_}});
  for (int64_t r = 0; r < n; ++r) {
    k_.add_rms_norm(h + r * hidden_, o_.data() + r * hidden_, ptr(layer.post_norm), hidden_, eps_,
                    x + r * hidden_);
  }
  float* gate_up = gate_up_.data();
  linear_multi(k_, x, n, hidden_, hidden_,
               {{ptr(layer.gate_proj), inter_, gate_up, 2 * inter_},
                {ptr(layer.up_proj), inter_, gate_up + inter_, 2 * inter_}});
  for_rows(n, 8 * inter_, [&](int64_t r) {
    k_.silu_mul(gate_up + r * 2 * inter_, gate_up + r * 2 * inter_ + inter_,
                act_.data() + r * inter_, inter_);
  });
  linear_multi(k_, act_.data(), n, inter_, inter_,
               {{ptr(layer.down_proj), hidden_, pending_.data(), hidden_}});
  pending = true;
}

void CpuDecode::exit_head(int64_t n, const ExitPolicy& policy) {
  for (int64_t r = 0; r < n; ++r) {
    k_.add_rms_norm(h_.data() + r * hidden_, nullptr, ptr(t_->weights_.final_norm), hidden_, eps_,
                    x_.data() + r * hidden_);
  }
  linear_multi(k_, x_.data(), n, hidden_, hidden_,
               {{ptr(t_->weights_.lm_head), vocab_, logits_.data(), vocab_}});
  const bool entropy = policy.metric == ConfidenceMetric::kEntropy;
  for_rows(n, 16 * vocab_, [&](int64_t r) {
    k_.softmax_stats(logits_.data() + r * vocab_, vocab_, &log_sum_exp_[r], &max_logit_[r],
                     entropy ? &entropy_[r] : nullptr);
    confidence_[r] =
        entropy ? static_cast<float>(1.0 - entropy_[r] / std::log(static_cast<double>(vocab_)))
                : std::exp(max_logit_[r] - log_sum_exp_[r]);
  });
}

void CpuDecode::fill_skipped_layers(int64_t first_layer, const std::vector<int64_t>& leaving,
                                    Rows& rows, kv::KvCache& cache) {
  const int64_t n = static_cast<int64_t>(leaving.size()), hd = head_dim_;
  const int64_t kv_width = kv_heads_ * hd;
  // The leaving rows' exit states, gathered at the front of o_ (free until the next layer).
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(o_.data() + i * hidden_, h_.data() + leaving[i] * hidden_, hidden_ * sizeof(float));
  }
  const float* cos = ptr(t_->rotary_.cos_table());
  const float* sin = ptr(t_->rotary_.sin_table());
  float* kv = qkv_.data();  // [n, 2 * kv_width]: k | v
  for (int64_t l = first_layer; l < t_->loaded_layers(); ++l) {
    const LayerWeights& layer = t_->weights_.layers[l];
    for (int64_t i = 0; i < n; ++i) {
      k_.add_rms_norm(o_.data() + i * hidden_, nullptr, ptr(layer.input_norm), hidden_, eps_,
                      x_.data() + i * hidden_);
    }
    linear_multi(k_, x_.data(), n, hidden_, hidden_,
                 {{ptr(layer.k_proj), kv_width, kv, 2 * kv_width},
                  {ptr(layer.v_proj), kv_width, kv + kv_width, 2 * kv_width}});
    float* keys = cache.keys(l).data_ptr<float>();
    float* values = cache.values(l).data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = leaving[i];
      float* row = kv + i * 2 * kv_width;
      cpu::rotate_heads(row, kv_heads_, hd, cos + rows.position[r] * hd,
                        sin + rows.position[r] * hd);
      std::memcpy(keys + rows.slot[r] * kv_width, row, kv_width * sizeof(float));
      std::memcpy(values + rows.slot[r] * kv_width, row + kv_width, kv_width * sizeof(float));
    }
  }
}

void CpuDecode::decode(const Transformer& t, kv::KvCache& cache, const DecodePlan& plan,
                       const ExitPolicy& policy, StepOutput& out) {
  std::lock_guard lock(mutex_);
  t_ = &t;
  const int64_t batch = plan.batch;
  ensure_capacity(batch);
  Rows rows;
  for (auto* v : {&rows.batch_row, &rows.position, &rows.slot, &rows.context}) v->resize(batch);
  rows.table.resize(batch);
  const float* embed = ptr(t_->weights_.embed_tokens);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t token = plan.rows[b];
    if (token < 0 || token >= t_->weights_.embed_tokens.size(0)) {
      throw Error(ErrorCode::kInvalidArgument,
                  "decode: token id " + std::to_string(token) + " outside the vocabulary");
    }
    std::memcpy(h_.data() + b * hidden_, embed + token * hidden_, hidden_ * sizeof(float));
    rows.batch_row[b] = b;
    rows.position[b] = plan.rows[batch + b];
    rows.slot[b] = plan.rows[2 * batch + b];
    rows.context[b] = plan.tables[batch * plan.max_blocks + b];
    rows.table[b] = plan.tables.data() + b * plan.max_blocks;
  }

  float* out_logits = out.logits.data_ptr<float>();
  std::vector<int64_t> leaving, staying;
  bool pending = false;
  int64_t begin = 0;
  for (const int32_t end : DecodeSteps::decode_segments(*t_, policy)) {
    for (int64_t l = begin; l < end; ++l) run_layer(l, rows, cache, pending);
    begin = end;
    const int64_t n = rows.size();
    if (pending) {
      for (int64_t r = 0; r < n; ++r)
        k_.add(h_.data() + r * hidden_, pending_.data() + r * hidden_, hidden_);
      pending = false;
    }
    exit_head(n, policy);
    const bool last = end == t_->loaded_layers();
    leaving.clear();
    staying.clear();
    for (int64_t r = 0; r < n; ++r) {
      const float c = confidence_[r];
      if (c >= policy.threshold || last) {
        leaving.push_back(r);
        std::memcpy(out_logits + rows.batch_row[r] * vocab_, logits_.data() + r * vocab_,
                    vocab_ * sizeof(float));
        out.exits[rows.batch_row[r]] = TokenExit{end, c, c < policy.threshold};
      } else {
        staying.push_back(r);
      }
    }
    if (last) break;
    if (leaving.empty()) continue;
    fill_skipped_layers(end, leaving, rows, cache);
    if (staying.empty()) break;
    for (size_t i = 0; i < staying.size(); ++i) {
      if (static_cast<int64_t>(i) != staying[i]) {
        std::memcpy(h_.data() + i * hidden_, h_.data() + staying[i] * hidden_,
                    hidden_ * sizeof(float));
      }
    }
    rows.keep(staying);
  }
}

}  // namespace helios::model
