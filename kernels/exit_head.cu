#include <climits>
#include <cmath>
#include <cstdint>

#include "common.cuh"
#include "exit_head.cuh"

namespace helios::kernels {
namespace {

using namespace detail;

// Online softmax statistics of a set of logits relative to its maximum m:
//   s = sum exp(x - m),  t = sum (x - m) * exp(x - m),  idx = first index holding m.
// The empty state has m = -inf, s = t = 0. Logits equal to -inf (masked) contribute nothing;
// NaN logits are ignored.
struct Stats {
  float m;
  float s;
  float t;
  int idx;
};

__device__ __forceinline__ Stats empty_stats() {
  return Stats{-INFINITY, 0.0f, 0.0f, INT_MAX};
}

// Folds logit x at index i, i larger than every index already folded into st.
__device__ __forceinline__ void fold(Stats& st, float x, int i) {
  if (x > st.m) {
    if (st.m == -INFINITY) {
      st.s = 1.0f;
      st.t = 0.0f;
    } else {
      // Re-base the old sums on the new maximum x: d = m - x < 0.
      const float d = st.m - x;
      const float a = expf(d);
      st.t = a * fmaf(d, st.s, st.t);
      st.s = fmaf(a, st.s, 1.0f);
    }
    st.m = x;
    st.idx = i;
  } else if (x > -INFINITY) {  // st.m is finite here; x <= st.m
    const float d = x - st.m;
    const float e = expf(d);
    st.s += e;
    st.t += e > 0.0f ? d * e : 0.0f;
  }
}

// (m1,S1,T1) + (m2,S2,T2) -> m = max, S = S1 e^(m1-m) + S2 e^(m2-m),
// T = e^(m1-m) (T1 + (m1-m) S1) + e^(m2-m) (T2 + (m2-m) S2); argmax: the index of m, the
// smaller one on ties. An empty side returns the other.
__device__ __forceinline__ Stats merge(const Stats& a, const Stats& b) {
  if (b.m == -INFINITY) {
    return a;
  }
  if (a.m == -INFINITY) {
    return b;
  }
  Stats r;
  r.m = fmaxf(a.m, b.m);
  const float da = a.m - r.m;
  const float db = b.m - r.m;
  const float ea = expf(da);
  const float eb = expf(db);
  r.s = a.s * ea + b.s * eb;
  r.t = ea * fmaf(da, a.s, a.t) + eb * fmaf(db, b.s, b.t);
  r.idx = a.m > b.m ? a.idx : (b.m > a.m ? b.idx : min(a.idx, b.idx));
  return r;
}

__device__ __forceinline__ Stats shfl_xor_stats(const Stats& st, int offset) {
  Stats o;
  o.m = __shfl_xor_sync(kFullMask, st.m, offset);
  o.s = __shfl_xor_sync(kFullMask, st.s, offset);
  o.t = __shfl_xor_sync(kFullMask, st.t, offset);
  o.idx = __shfl_xor_sync(kFullMask, st.idx, offset);
  return o;
}

__device__ __forceinline__ Stats warp_merge(Stats st) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    st = merge(st, shfl_xor_stats(st, offset));
  }
  return st;
}

// One block per row; blockDim.x a multiple of 32. Each thread folds its elements in increasing
// index order (16-byte vectors, then the tail that does not fill a vector), then the states are
// merged across the warp and across the warps.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kMaxThreads)
    exit_head_stats_kernel(const T* __restrict__ logits, int64_t stride, int vocab,
                           int* __restrict__ argmax, float* __restrict__ max_prob,
                           float* __restrict__ entropy) {
  __shared__ Stats partials[kMaxThreads / kWarpSize];
  const int64_t row = blockIdx.x;
  const T* x = logits + row * stride;
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % kWarpSize;
  const int warp = tid / kWarpSize;
  const int num_warps = static_cast<int>(blockDim.x) / kWarpSize;

  Stats st = empty_stats();
  int tail_begin = 0;
  if constexpr (kVec) {
    constexpr int kW = kVec16<T>;
    const int n = vocab / kW;
    for (int i = tid; i < n; i += blockDim.x) {
      float v[kW];
      load_vec16_ro<T>(x + static_cast<int64_t>(i) * kW, v);
#pragma unroll
      for (int k = 0; k < kW; ++k) fold(st, v[k], i * kW + k);
    }
    tail_begin = n * kW;
  }
  for (int i = tail_begin + tid; i < vocab; i += blockDim.x) {
    fold(st, to_float(__ldg(x + i)), i);
  }

  st = warp_merge(st);
  if (lane == 0) partials[warp] = st;
  __syncthreads();
  if (warp == 0) {
    st = lane < num_warps ? partials[lane] : empty_stats();
    st = warp_merge(st);
    if (lane == 0) {
      const bool any = st.m > -INFINITY;  // false when every logit is -inf (or NaN)
      if (argmax != nullptr) argmax[row] = any ? st.idx : 0;
      if (max_prob != nullptr) max_prob[row] = any ? 1.0f / st.s : NAN;
      if (entropy != nullptr) entropy[row] = any ? logf(st.s) - st.t / st.s : NAN;
    }
  }
}

}  // namespace

template <typename T>
cudaError_t launch_exit_head_stats(const T* logits, int64_t stride, int rows, int vocab,
                                   int* argmax, float* max_prob, float* entropy,
                                   cudaStream_t stream) {
  if (logits == nullptr || rows < 0 || vocab <= 0 || stride < vocab) {
    return cudaErrorInvalidValue;
  }
  if (rows == 0 || (argmax == nullptr && max_prob == nullptr && entropy == nullptr)) {
    return cudaSuccess;
  }
  constexpr int kW = kVec16<T>;
  const bool vectorizable = stride % kW == 0 && aligned16(logits) && vocab >= kW;
  const int threads = threads_for(vectorizable ? vocab / kW : vocab);
  if (vectorizable) {
    exit_head_stats_kernel<T, true>
        <<<rows, threads, 0, stream>>>(logits, stride, vocab, argmax, max_prob, entropy);
  } else {
    exit_head_stats_kernel<T, false>
        <<<rows, threads, 0, stream>>>(logits, stride, vocab, argmax, max_prob, entropy);
  }
  return cudaGetLastError();
}

#define HELIOS_INSTANTIATE_EXIT_HEAD(T)                                                     \
  template cudaError_t launch_exit_head_stats<T>(const T*, int64_t, int, int, int*, float*, \
                                                 float*, cudaStream_t);

HELIOS_INSTANTIATE_EXIT_HEAD(float)
HELIOS_INSTANTIATE_EXIT_HEAD(__half)
HELIOS_INSTANTIATE_EXIT_HEAD(__nv_bfloat16)

#undef HELIOS_INSTANTIATE_EXIT_HEAD

}  // namespace helios::kernels
