#pragma once

// Float32 CPU kernels of the fused decode step (src/model/cpu_decode.cpp): plain pointers, no
// allocation, no ATen. Each instruction set has its own translation unit, compiled for it
// (src/cpu/kernels_avx512.cpp, kernels_avx2.cpp, kernels_generic.cpp, all from kernels_impl.h); the
// best one the CPU supports is chosen at run time.

#include <cstdint>
#include <string>
#include <vector>

namespace helios::cpu {

// One query row's heads of one KV head group over a paged context.
struct AttendArgs {
  const float* q;                       // [group, head_dim], the group's query heads, contiguous
  const float* keys;                    // the layer's key cache [slots, kv_heads, head_dim]
  const float* values;                  // the layer's value cache, same layout
  const int32_t* block_table;           // the row's blocks
  int64_t block_size;                   // positions per block
  int64_t context;                      // positions [0, context) are attended to
  int64_t kv_heads, head_dim, kv_head;  // which head of the cache is read
  int64_t group;                        // query heads per KV head
  float scale;                          // 1 / sqrt(head_dim)
  float* scores;                        // scratch [group, context]
  float* out;                           // [group, head_dim]
};

struct Kernels {
  const char* name;
  // y[r, c] = dot(x[r, :in], w[c, :in]) for r < rows, c in [col_begin, col_end): x @ w^T with
  // w [out, in] row-major (HF's linear layout); x rows ldx apart, y rows ldy apart.
  void (*linear)(const float* x, int64_t rows, int64_t ldx, const float* w, int64_t in,
                 int64_t col_begin, int64_t col_end, float* y, int64_t ldy);
  // h += add (when add is not null), then out = h * rsqrt(mean(h^2) + eps) * weight, for one
  // row of n values.
  void (*add_rms_norm)(float* h, const float* add, const float* weight, int64_t n, float eps,
                       float* out);
  // out[i] = silu(gate[i]) * up[i].
  void (*silu_mul)(const float* gate, const float* up, float* out, int64_t n);
  // h[i] += add[i].
  void (*add)(float* h, const float* add, int64_t n);
  // Softmax attention of args.q over the paged keys/values (scores in float32, as HF).
  void (*attend)(const AttendArgs& args);
  // Of one row of logits: log-sum-exp, the max logit and, when entropy is not null, the
  // entropy of the softmax (in nats).
  void (*softmax_stats)(const float* logits, int64_t n, float* log_sum_exp, float* max_logit,
                        float* entropy);
};

// The kernels of the best instruction set this CPU has, or the one HELIOS_CPU_KERNELS names
// (avx512, avx2, generic) when this CPU supports it.
const Kernels& kernels();
// The kernels of one instruction set, or null when this build or CPU lacks it.
const Kernels* kernels_named(const std::string& name);
// Every instruction set this build and CPU can run, best first.
std::vector<std::string> available_kernels();

// Rotates one row of `heads` heads of head_dim values in place with the rotate_half
// convention: x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin (cos/sin: the position's row of
// the tables, head_dim values each).
void rotate_heads(float* x, int64_t heads, int64_t head_dim, const float* cos, const float* sin);

// Per-ISA tables (null when the build lacks the instruction set).
const Kernels* avx512_kernels();
const Kernels* avx2_kernels();
const Kernels* generic_kernels();

}  // namespace helios::cpu
