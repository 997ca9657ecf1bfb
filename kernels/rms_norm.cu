#include <cstddef>
#include <cstdint>

#include "rms_norm.cuh"

namespace helios::kernels {
namespace {

constexpr int kWarpSize = 32;
constexpr int kMaxThreads = 1024;
constexpr unsigned kFullMask = 0xffffffffu;

// Vector access of width 1 or 4. float4 loads quarter the number of memory instructions on the
// bandwidth-bound passes; the scalar form covers rows whose length or alignment does not allow it.
template <int kVec>
struct Vec;

template <>
struct Vec<1> {
  using Type = float;
  __device__ static float sum_sq(float v) { return v * v; }
  __device__ static float add(float a, float b) { return a + b; }
  __device__ static float scale(float v, float s, float w) { return v * s * w; }
};

template <>
struct Vec<4> {
  using Type = float4;
  __device__ static float sum_sq(float4 v) { return v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w; }
  __device__ static float4 add(float4 a, float4 b) {
    return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
  }
  // Same association as HF, (x * inv_rms) * weight, so rounding matches the reference.
  __device__ static float4 scale(float4 v, float s, float4 w) {
    return make_float4(v.x * s * w.x, v.y * s * w.y, v.z * s * w.z, v.w * s * w.w);
  }
};

__device__ float warp_sum(float v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(kFullMask, v, offset);
  }
  return v;
}

// Sum over the block, returned to every thread: shuffle within each warp, then the first warp
// reduces the per-warp partials from shared memory.
__device__ float block_sum(float v) {
  __shared__ float partials[kMaxThreads / kWarpSize];
  __shared__ float total;
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int num_warps = (blockDim.x + kWarpSize - 1) / kWarpSize;

  v = warp_sum(v);
  if (lane == 0) partials[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < num_warps ? partials[lane] : 0.0f;
    v = warp_sum(v);
    if (lane == 0) total = v;
  }
  __syncthreads();
  return total;
}

// One block per row. Pass 1 accumulates the sum of squares (and, when fused, writes
// residual + x back); pass 2 rereads the row, which is still in L1/L2 for hidden sizes of
// a few thousand, and writes the normalized output. Each thread touches the same elements in
// both passes, which is what makes `out` aliasing an input safe.
template <int kVec, bool kAddResidual>
__global__ void rms_norm_kernel(float* residual, const float* x, const float* weight, float* out,
                                int cols, float eps) {
  using T = typename Vec<kVec>::Type;
  const std::size_t row_offset = static_cast<std::size_t>(blockIdx.x) * cols;
  const int n = cols / kVec;
  const T* x_row = reinterpret_cast<const T*>(x + row_offset);
  T* res_row = kAddResidual ? reinterpret_cast<T*>(residual + row_offset) : nullptr;
  const T* w = reinterpret_cast<const T*>(weight);
  T* out_row = reinterpret_cast<T*>(out + row_offset);

  float sum_sq = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    T v = x_row[i];
    if constexpr (kAddResidual) {
      v = Vec<kVec>::add(res_row[i], v);
      res_row[i] = v;
    }
    sum_sq += Vec<kVec>::sum_sq(v);
  }
  // HF: variance = mean(x^2); x * rsqrt(variance + eps).
  const float inv_rms = rsqrtf(block_sum(sum_sq) / static_cast<float>(cols) + eps);

  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    T v;
    if constexpr (kAddResidual) {
      v = res_row[i];
    } else {
      v = x_row[i];
    }
    out_row[i] = Vec<kVec>::scale(v, inv_rms, w[i]);
  }
}

bool aligned16(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

// Enough warps to cover a row in one sweep, up to the block limit: small rows do not idle most
// of a large block, and large rows loop.
int threads_for(int elements) {
  const int warps = (elements + kWarpSize - 1) / kWarpSize;
  const int threads = warps * kWarpSize;
  return threads < kWarpSize ? kWarpSize : (threads > kMaxThreads ? kMaxThreads : threads);
}

template <bool kAddResidual>
cudaError_t launch(float* residual, const float* x, const float* weight, float* out, int rows,
                   int cols, float eps, cudaStream_t stream) {
  if (x == nullptr || weight == nullptr || out == nullptr ||
      (kAddResidual && residual == nullptr) || rows < 0 || cols <= 0) {
    return cudaErrorInvalidValue;
  }
  if (rows == 0) return cudaSuccess;
  const bool vectorizable = cols % 4 == 0 && aligned16(x) && aligned16(weight) && aligned16(out) &&
                            (!kAddResidual || aligned16(residual));
  if (vectorizable) {
    rms_norm_kernel<4, kAddResidual>
        <<<rows, threads_for(cols / 4), 0, stream>>>(residual, x, weight, out, cols, eps);
  } else {
    rms_norm_kernel<1, kAddResidual>
        <<<rows, threads_for(cols), 0, stream>>>(residual, x, weight, out, cols, eps);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_rms_norm_f32(const float* x, const float* weight, float* out, int rows, int cols,
                                float eps, cudaStream_t stream) {
  return launch<false>(nullptr, x, weight, out, rows, cols, eps, stream);
}

cudaError_t launch_add_rms_norm_f32(float* residual, const float* x, const float* weight,
                                    float* out, int rows, int cols, float eps,
                                    cudaStream_t stream) {
  return launch<true>(residual, x, weight, out, rows, cols, eps, stream);
}

}  // namespace helios::kernels
