#include "ops_cuda.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <initializer_list>
#include <string>

#include "activation.cuh"
#include "exit_head.cuh"
#include "helios/common/error.h"
#include "kv_cache.cuh"
#include "paged_attention.cuh"
#include "rms_norm.cuh"
#include "rotary.cuh"

namespace helios::ops::cuda {
namespace {

template <typename T>
struct Tag {
  using type = T;
};

void require(bool ok, const char* op, const std::string& what) {
  if (!ok) throw Error(ErrorCode::kInvalidArgument, std::string(op) + ": " + what);
}

void launched(cudaError_t status, const char* op) {
  if (status != cudaSuccess) {
    throw Error(ErrorCode::kInternal,
                std::string(op) + ": kernel launch failed: " + cudaGetErrorString(status));
  }
}

// Calls f(Tag<T>{}) with the kernel element type of `type`.
template <typename F>
void by_dtype(at::ScalarType type, const char* op, F&& f) {
  switch (type) {
    case at::kFloat:
      f(Tag<float>{});
      return;
    case at::kHalf:
      f(Tag<__half>{});
      return;
    case at::kBFloat16:
      f(Tag<__nv_bfloat16>{});
      return;
    default:
      require(false, op, std::string("unsupported dtype ") + at::toString(type));
  }
}

template <typename T>
T* ptr(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

cudaStream_t stream_of(const at::Tensor& t) {
  return at::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

// A [rows, ..., inner] tensor whose dimensions after the first are packed (so each row is
// one contiguous run, rows stride(0) elements apart).
bool packed_rows(const at::Tensor& t) {
  int64_t expected = 1;
  for (int64_t d = t.dim() - 1; d >= 1; --d) {
    if (t.size(d) != 1 && t.stride(d) != expected) return false;
    expected *= t.size(d);
  }
  return true;
}

void same_device(const at::Tensor& a, const at::Tensor& b, const char* op, const char* name) {
  require(b.defined() && b.device() == a.device(), op,
          std::string(name) + " must be defined and on " + a.device().str());
}

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  constexpr const char* op = "rms_norm";
  const c10::cuda::CUDAGuard guard(x.device());
  same_device(x, weight, op, "weight");
  const int64_t cols = x.size(-1);
  // reshape keeps a strided [rows, cols] view as it is; only unpacked rows are copied.
  at::Tensor input = x.reshape({-1, cols});
  if (!packed_rows(input)) input = input.contiguous();
  const at::Tensor w = weight.to(x.scalar_type()).contiguous();
  require(w.numel() == cols, op, "weight has " + std::to_string(w.numel()) + " elements, x rows " +
                                     std::to_string(cols));
  at::Tensor out = at::empty({input.size(0), cols}, x.options());
  by_dtype(x.scalar_type(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launched(kernels::launch_rms_norm<T>(ptr<T>(input), input.stride(0), ptr<T>(w), ptr<T>(out),
                                         static_cast<int>(input.size(0)), static_cast<int>(cols),
                                         static_cast<float>(eps), stream_of(x)),
             op);
  });
  return out.view(x.sizes());
}

at::Tensor add_rms_norm(at::Tensor& residual, const at::Tensor& x, const at::Tensor& weight,
                        double eps) {
  constexpr const char* op = "add_rms_norm";
  const c10::cuda::CUDAGuard guard(residual.device());
  same_device(residual, x, op, "x");
  same_device(residual, weight, op, "weight");
  require(residual.is_contiguous() && residual.dim() == 2, op,
          "residual must be a contiguous [rows, hidden] tensor");
  require(x.sizes() == residual.sizes() && x.scalar_type() == residual.scalar_type(), op,
          "x must match residual's shape and dtype");
  const at::Tensor input = x.contiguous();
  const at::Tensor w = weight.to(residual.scalar_type()).contiguous();
  const int64_t cols = residual.size(1);
  require(w.numel() == cols, op, "weight size does not match hidden size");
  at::Tensor out = at::empty_like(residual);
  by_dtype(residual.scalar_type(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launched(kernels::launch_add_rms_norm<T>(
                 ptr<T>(residual), ptr<T>(input), ptr<T>(w), ptr<T>(out),
                 static_cast<int>(residual.size(0)), static_cast<int>(cols),
                 static_cast<float>(eps), stream_of(residual)),
             op);
  });
  return out;
}

void rotary(const at::Tensor& q, const at::Tensor& k, const at::Tensor& positions,
            const at::Tensor& cos, const at::Tensor& sin) {
  constexpr const char* op = "rotary";
  const at::Tensor& any = q.defined() ? q : k;
  const c10::cuda::CUDAGuard guard(any.device());
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&q, &k}) {
    if (!t->defined()) continue;
    require(t->dim() == 3 && packed_rows(*t) && t->scalar_type() == any.scalar_type(), op,
            "q and k must be [tokens, heads, head_dim] with packed rows and one dtype");
    require(t->size(0) == positions.numel(), op, "one position per token required");
    same_device(any, *t, op, "q/k");
  }
  same_device(any, positions, op, "positions");
  const at::Tensor pos = positions.to(at::kLong).contiguous();
  const int64_t head_dim = any.size(2);
  require(cos.size(1) == head_dim && cos.scalar_type() == at::kFloat, op,
          "cos/sin tables must be float32 [max_positions, head_dim]");
  by_dtype(any.scalar_type(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launched(kernels::launch_rotary<T>(
                 q.defined() ? ptr<T>(q) : nullptr, q.defined() ? q.stride(0) : 0,
                 q.defined() ? static_cast<int>(q.size(1)) : 0, k.defined() ? ptr<T>(k) : nullptr,
                 k.defined() ? k.stride(0) : 0, k.defined() ? static_cast<int>(k.size(1)) : 0,
                 static_cast<int>(head_dim), pos.data_ptr<int64_t>(), cos.data_ptr<float>(),
                 sin.data_ptr<float>(), static_cast<int>(pos.numel()), stream_of(any)),
             op);
  });
}

at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up) {
  constexpr const char* op = "silu_mul";
  const c10::cuda::CUDAGuard guard(gate.device());
  same_device(gate, up, op, "up");
  require(gate.dim() == 2 && gate.sizes() == up.sizes() && gate.scalar_type() == up.scalar_type(),
          op, "gate and up must be [rows, inter] of one shape and dtype");
  at::Tensor g = gate, u = up;
  // One row stride for both: a fused gate|up output qualifies as is, anything else is packed.
  if (g.stride(1) != 1 || u.stride(1) != 1 || g.stride(0) != u.stride(0)) {
    g = gate.contiguous();
    u = up.contiguous();
  }
  const int64_t rows = g.size(0), cols = g.size(1);
  at::Tensor out = at::empty({rows, cols}, gate.options());
  by_dtype(gate.scalar_type(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launched(kernels::launch_silu_mul<T>(ptr<T>(g), ptr<T>(u), rows > 0 ? g.stride(0) : cols,
                                         ptr<T>(out), static_cast<int>(rows),
                                         static_cast<int>(cols), stream_of(gate)),
             op);
  });
  return out;
}

void write_kv(at::Tensor& key_cache, at::Tensor& value_cache, const at::Tensor& k,
              const at::Tensor& v, const at::Tensor& slots) {
  constexpr const char* op = "write_kv";
  const c10::cuda::CUDAGuard guard(key_cache.device());
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&value_cache, &k, &v, &slots}) {
    same_device(key_cache, *t, op, "tensor");
  }
  require(key_cache.is_contiguous() && value_cache.is_contiguous() && key_cache.dim() == 3 &&
              value_cache.sizes() == key_cache.sizes(),
          op, "caches must be contiguous [slots, kv_heads, head_dim] of one shape");
  const int64_t kv_heads = key_cache.size(1), head_dim = key_cache.size(2);
  const int64_t tokens = slots.numel();
  const at::Tensor kr = packed_rows(k) ? k : k.contiguous();
  const at::Tensor vr = packed_rows(v) ? v : v.contiguous();
  require(kr.size(0) == tokens && vr.size(0) == tokens &&
              kr.numel() == tokens * kv_heads * head_dim && vr.numel() == kr.numel(),
          op, "k/v must hold one [kv_heads * head_dim] row per slot");
  require(kr.scalar_type() == key_cache.scalar_type() &&
              vr.scalar_type() == key_cache.scalar_type(),
          op, "k/v dtype must match the cache's");
  const at::Tensor s = slots.to(at::kLong).contiguous();
  by_dtype(key_cache.scalar_type(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launched(kernels::launch_write_kv<T>(ptr<T>(key_cache), ptr<T>(value_cache), ptr<T>(kr),
                                         tokens > 0 ? kr.stride(0) : 0, ptr<T>(vr),
                                         tokens > 0 ? vr.stride(0) : 0, s.data_ptr<int64_t>(),
                                         static_cast<int>(tokens), static_cast<int>(kv_heads),
                                         static_cast<int>(head_dim), stream_of(key_cache)),
             op);
  });
}

at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& key_cache,
                                  const at::Tensor& value_cache, const at::Tensor& block_tables,
                                  const at::Tensor& context_lens, int64_t max_context,
                                  int64_t block_size, double scale) {
  constexpr const char* op = "paged_decode_attention";
  const c10::cuda::CUDAGuard guard(q.device());
  for (const at::Tensor* t :
       std::initializer_list<const at::Tensor*>{&key_cache, &value_cache, &block_tables, &context_lens}) {
    same_device(q, *t, op, "tensor");
  }
  require(q.dim() == 3 && packed_rows(q), op, "q must be [batch, heads, head_dim], packed rows");
  require(key_cache.is_contiguous() && value_cache.is_contiguous() && key_cache.dim() == 3 &&
              key_cache.scalar_type() == q.scalar_type() &&
              value_cache.sizes() == key_cache.sizes(),
          op, "caches must be contiguous [slots, kv_heads, head_dim] in q's dtype");
  require(block_tables.scalar_type() == at::kInt && context_lens.scalar_type() == at::kInt, op,
          "block_tables and context_lens must be int32");
  const int64_t batch = q.size(0), heads = q.size(1), head_dim = q.size(2);
  require(key_cache.size(2) == head_dim, op, "head_dim of q and cache differ");
  const at::Tensor tables = block_tables.contiguous();
  const at::Tensor lens = context_lens.contiguous();
  at::Tensor out = at::empty({batch, heads * head_dim}, q.options());
  const size_t workspace_bytes = kernels::paged_decode_attention_workspace_bytes(
      static_cast<int>(batch), static_cast<int>(heads), static_cast<int>(head_dim),
      static_cast<int>(max_context));
  at::Tensor workspace;
  if (workspace_bytes > 0) {
    workspace = at::empty({static_cast<int64_t>((workspace_bytes + 3) / 4)},
                          q.options().dtype(at::kFloat));
  }
  by_dtype(q.scalar_type(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launched(kernels::launch_paged_decode_attention<T>(
                 ptr<T>(out), ptr<T>(q), q.stride(0), ptr<T>(key_cache), ptr<T>(value_cache),
                 tables.data_ptr<int32_t>(), static_cast<int>(tables.size(1)),
                 lens.data_ptr<int32_t>(), static_cast<int>(max_context), static_cast<int>(batch),
                 static_cast<int>(heads), static_cast<int>(key_cache.size(1)),
                 static_cast<int>(head_dim), static_cast<int>(block_size),
                 static_cast<float>(scale),
                 workspace.defined() ? workspace.data_ptr<float>() : nullptr, stream_of(q)),
             op);
  });
  return out;
}

void exit_head_stats(const at::Tensor& logits, at::Tensor& argmax, at::Tensor& max_prob,
                     at::Tensor& entropy) {
  constexpr const char* op = "exit_head_stats";
  const c10::cuda::CUDAGuard guard(logits.device());
  require(logits.dim() == 2, op, "logits must be [rows, vocab]");
  const at::Tensor input = logits.stride(1) == 1 ? logits : logits.contiguous();
  const int64_t rows = input.size(0), vocab = input.size(1);
  const auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor index = at::empty({rows}, logits.options().dtype(at::kInt));
  max_prob = at::empty({rows}, f32);
  entropy = at::empty({rows}, f32);
  by_dtype(input.scalar_type(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launched(kernels::launch_exit_head_stats<T>(
                 ptr<T>(input), rows > 0 ? input.stride(0) : vocab, static_cast<int>(rows),
                 static_cast<int>(vocab), index.data_ptr<int32_t>(), max_prob.data_ptr<float>(),
                 entropy.data_ptr<float>(), stream_of(logits)),
             op);
  });
  argmax = index.to(at::kLong);
}

}  // namespace helios::ops::cuda
