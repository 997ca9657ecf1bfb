#pragma once

// The fused CPU decode step: Transformer::decode for float32 weights and caches on the CPU,
// written against the kernels of src/cpu/ instead of ATen ops. Per layer it runs a handful of
// passes over preallocated workspaces (reused across steps, so a step allocates nothing but
// its output): fused residual add + RMSNorm, the q/k/v projections in one parallel pass,
// rotary + cache write per row, paged attention that reads each row's keys and values where
// they lie in the cache, the output projection, the gate/up projections in one pass, SwiGLU,
// and the down projection, whose output the next layer's norm adds. Same steps, in the same
// order, as the ATen path (decode_steps.h), which stays the reference it is tested against.

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "decode_steps.h"
#include "helios/kv/kv_cache.h"
#include "helios/model/transformer.h"

namespace helios::cpu {
struct Kernels;
}

namespace helios::model {

class CpuDecode {
 public:
  // Null unless every weight of `t` is a contiguous float32 CPU tensor. `kernels`: as
  // Transformer::set_fused_cpu_decode.
  static std::unique_ptr<CpuDecode> create(const Transformer& t, const std::string& kernels);
  // Whether a step over `cache` can run here: float32 keys/values on the CPU.
  static bool accepts(const kv::KvCache& cache);

  CpuDecode(const Transformer& t, const cpu::Kernels& kernels);

  // One decode step of plan's rows, results into out (logits [batch, vocab] float32 on the CPU,
  // exits sized batch), as Transformer::decode's eager path computes them. Does not advance the
  // sequences' lengths. Serialised per instance (one workspace).
  // `t`: the transformer this was created for, or a copy of it (same weights).
  void decode(const Transformer& t, kv::KvCache& cache, const DecodePlan& plan,
              const ExitPolicy& policy, StepOutput& out);

  const char* kernels_name() const;

  // y = x @ w^T (at::linear without bias) through the same kernels, for the ops outside the
  // decode step (prefill, prompt scoring, the exit head of a prefill): undefined when x or w
  // is not a float32 CPU tensor, w not a contiguous [out, in] matrix or x's last size not in.
  // Thread-safe (no workspace).
  at::Tensor linear(const at::Tensor& x, const at::Tensor& w) const;

 private:
  struct Rows;
  void ensure_capacity(int64_t rows);
  void run_layer(int64_t l, Rows& rows, kv::KvCache& cache, bool& pending);
  void exit_head(int64_t n, const ExitPolicy& policy);
  void fill_skipped_layers(int64_t first_layer, const std::vector<int64_t>& leaving, Rows& rows,
                           kv::KvCache& cache);

  const Transformer* t_ = nullptr;  // the caller's, for the duration of decode()
  const cpu::Kernels& k_;
  int64_t hidden_, heads_, kv_heads_, head_dim_, inter_, vocab_;
  float eps_, scale_;

  std::mutex mutex_;
  int64_t capacity_ = 0;
  // Row-major [capacity, width] workspaces: the hidden state, the normalised input, q | k | v,
  // attention output, o projection, gate | up, SwiGLU, the pending MLP output, logits.
  std::vector<float> h_, x_, qkv_, attn_, o_, gate_up_, act_, pending_, logits_;
  std::vector<float> log_sum_exp_, max_logit_, entropy_, confidence_;
  std::vector<float> scores_;  // attention scratch, one [group, max positions] slab per thread
};

}  // namespace helios::model
