#include <cstdint>

#include "activation.cuh"
#include "common.cuh"

namespace helios::kernels {
namespace {

using namespace detail;

constexpr int kThreads = 256;

// out = T(T(silu(g)) * u), silu(g) = g / (1 + exp(-g)) in float (accurate expf, IEEE division).
template <typename T>
__device__ __forceinline__ float silu_mul(float g, float u) {
  const float silu = round_to<T>(g / (1.0f + expf(-g)));
  return silu * u;
}

// grid.x: chunks of kThreads units (16-byte vectors or single elements) along a row; grid.y:
// rows, grid-stride. Plain (coherent) loads, so out == gate with in_stride == cols also works.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads)
    silu_mul_kernel(const T* gate, const T* up, int64_t in_stride, T* out, int rows, int cols) {
  constexpr int kW = kVec ? kVec16<T> : 1;
  const int unit = static_cast<int>(blockIdx.x) * kThreads + static_cast<int>(threadIdx.x);
  if (unit >= cols / kW) return;
  const int64_t col = static_cast<int64_t>(unit) * kW;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t in = row * in_stride + col;
    const int64_t o = row * cols + col;
    if constexpr (kVec) {
      float g[kW];
      float u[kW];
      load_vec16<T>(gate + in, g);
      load_vec16<T>(up + in, u);
#pragma unroll
      for (int k = 0; k < kW; ++k) g[k] = silu_mul<T>(g[k], u[k]);
      store_vec16<T>(out + o, g);
    } else {
      out[o] = from_float<T>(silu_mul<T>(to_float(gate[in]), to_float(up[in])));
    }
  }
}

}  // namespace

template <typename T>
cudaError_t launch_silu_mul(const T* gate, const T* up, int64_t in_stride, T* out, int rows,
                            int cols, cudaStream_t stream) {
  if (gate == nullptr || up == nullptr || out == nullptr || rows < 0 || cols <= 0 ||
      in_stride < cols) {
    return cudaErrorInvalidValue;
  }
  if (rows == 0) return cudaSuccess;
  constexpr int kW = kVec16<T>;
  const bool vectorizable =
      cols % kW == 0 && in_stride % kW == 0 && aligned16(gate) && aligned16(up) && aligned16(out);
  const int units = vectorizable ? cols / kW : cols;
  const dim3 grid(static_cast<unsigned>(ceil_div(static_cast<int64_t>(units), int64_t{kThreads})),
                  grid_yz(rows));
  if (vectorizable) {
    silu_mul_kernel<T, true><<<grid, kThreads, 0, stream>>>(gate, up, in_stride, out, rows, cols);
  } else {
    silu_mul_kernel<T, false><<<grid, kThreads, 0, stream>>>(gate, up, in_stride, out, rows, cols);
  }
  return cudaGetLastError();
}

#define HELIOS_INSTANTIATE_SILU_MUL(T) \
  template cudaError_t launch_silu_mul<T>(const T*, const T*, int64_t, T*, int, int, cudaStream_t);

HELIOS_INSTANTIATE_SILU_MUL(float)
HELIOS_INSTANTIATE_SILU_MUL(__half)
HELIOS_INSTANTIATE_SILU_MUL(__nv_bfloat16)

#undef HELIOS_INSTANTIATE_SILU_MUL

}  // namespace helios::kernels
