#include <cstddef>
#include <cstdint>

#include "common.cuh"
#include "rms_norm.cuh"

namespace helios::kernels {
namespace {

using namespace detail;

// Vector access of width 1 or 16 bytes (4 floats, 8 halves / bfloat16s). 16-byte accesses cut
// the memory instructions of these bandwidth-bound passes; the scalar form covers rows whose
// length, stride or alignment does not allow them.
template <typename T, bool kVec>
struct Access;

template <typename T>
struct Access<T, false> {
  static constexpr int kWidth = 1;
  __device__ static void load(const T* p, float (&f)[1]) { f[0] = to_float(*p); }
  __device__ static void load_ro(const T* p, float (&f)[1]) { f[0] = to_float(__ldg(p)); }
  __device__ static void store(T* p, const float (&f)[1]) { *p = from_float<T>(f[0]); }
};

template <typename T>
struct Access<T, true> {
  static constexpr int kWidth = kVec16<T>;
  __device__ static void load(const T* p, float (&f)[kWidth]) { load_vec16<T>(p, f); }
  __device__ static void load_ro(const T* p, float (&f)[kWidth]) { load_vec16_ro<T>(p, f); }
  __device__ static void store(T* p, const float (&f)[kWidth]) { store_vec16<T>(p, f); }
};

// One block per row. Pass 1 accumulates the sum of squares (and, when fused, writes
// T(residual + x) back); pass 2 rereads the row, which is still in L1/L2 for hidden sizes of
// a few thousand, and writes the normalized output. Each thread touches the same elements in
// both passes, which is what makes `out` aliasing an input safe (hence no __restrict__ and no
// read-only loads on the row pointers).
template <typename T, bool kVec, bool kAddResidual>
__global__ void __launch_bounds__(kMaxThreads)
    rms_norm_kernel(T* residual, const T* x, int64_t x_stride, const T* __restrict__ weight, T* out,
                    int cols, float eps) {
  using A = Access<T, kVec>;
  constexpr int kW = A::kWidth;
  const int64_t row = blockIdx.x;
  const T* x_row = x + row * x_stride;
  T* res_row = kAddResidual ? residual + row * cols : nullptr;
  T* out_row = out + row * cols;
  const int n = cols / kW;

  float sum_sq = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    float v[kW];
    A::load(x_row + static_cast<int64_t>(i) * kW, v);
    if constexpr (kAddResidual) {
      float r[kW];
      A::load(res_row + static_cast<int64_t>(i) * kW, r);
#pragma unroll
      for (int k = 0; k < kW; ++k) v[k] = round_to<T>(r[k] + v[k]);
      A::store(res_row + static_cast<int64_t>(i) * kW, v);
    }
#pragma unroll
    for (int k = 0; k < kW; ++k) sum_sq += v[k] * v[k];
  }
  // HF: variance = mean(x^2); x * rsqrt(variance + eps), with rsqrt as 1 / sqrt (both IEEE).
  const float inv_rms = 1.0f / sqrtf(block_sum(sum_sq) / static_cast<float>(cols) + eps);

  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    float v[kW];
    float w[kW];
    if constexpr (kAddResidual) {
      A::load(res_row + static_cast<int64_t>(i) * kW, v);
    } else {
      A::load(x_row + static_cast<int64_t>(i) * kW, v);
    }
    A::load_ro(weight + static_cast<int64_t>(i) * kW, w);
    // HF: weight * hidden.to(input_dtype): the normalized value is rounded to T first.
#pragma unroll
    for (int k = 0; k < kW; ++k) v[k] = round_to<T>(v[k] * inv_rms) * w[k];
    A::store(out_row + static_cast<int64_t>(i) * kW, v);
  }
}

template <typename T, bool kAddResidual>
cudaError_t launch(T* residual, const T* x, int64_t x_stride, const T* weight, T* out, int rows,
                   int cols, float eps, cudaStream_t stream) {
  if (x == nullptr || weight == nullptr || out == nullptr ||
      (kAddResidual && residual == nullptr) || rows < 0 || cols <= 0 || x_stride < cols) {
    return cudaErrorInvalidValue;
  }
  if (rows == 0) return cudaSuccess;
  constexpr int kW = kVec16<T>;
  const bool vectorizable = cols % kW == 0 && x_stride % kW == 0 && aligned16(x) &&
                            aligned16(weight) && aligned16(out) &&
                            (!kAddResidual || aligned16(residual));
  if (vectorizable) {
    rms_norm_kernel<T, true, kAddResidual><<<rows, threads_for(cols / kW), 0, stream>>>(
        residual, x, x_stride, weight, out, cols, eps);
  } else {
    rms_norm_kernel<T, false, kAddResidual>
        <<<rows, threads_for(cols), 0, stream>>>(residual, x, x_stride, weight, out, cols, eps);
  }
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t launch_rms_norm(const T* x, int64_t x_stride, const T* weight, T* out, int rows,
                            int cols, float eps, cudaStream_t stream) {
  return launch<T, false>(nullptr, x, x_stride, weight, out, rows, cols, eps, stream);
}

template <typename T>
cudaError_t launch_add_rms_norm(T* residual, const T* x, const T* weight, T* out, int rows,
                                int cols, float eps, cudaStream_t stream) {
  return launch<T, true>(residual, x, cols, weight, out, rows, cols, eps, stream);
}

#define HELIOS_INSTANTIATE_RMS_NORM(T)                                                      \
  template cudaError_t launch_rms_norm<T>(const T*, int64_t, const T*, T*, int, int, float, \
                                          cudaStream_t);                                    \
  template cudaError_t launch_add_rms_norm<T>(T*, const T*, const T*, T*, int, int, float,  \
                                              cudaStream_t);

HELIOS_INSTANTIATE_RMS_NORM(float)
HELIOS_INSTANTIATE_RMS_NORM(__half)
HELIOS_INSTANTIATE_RMS_NORM(__nv_bfloat16)

#undef HELIOS_INSTANTIATE_RMS_NORM

}  // namespace helios::kernels
