#include <cstdint>

#include "common.cuh"
#include "kv_cache.cuh"

namespace helios::kernels {
namespace {

using namespace detail;

constexpr int kThreads = 256;

// Raw copy unit: 16 bytes or one element (no conversion, the bits are copied as they are).
template <typename T, bool kVec>
using Unit = std::conditional_t<kVec, uint4, T>;

// grid.x: chunks of kThreads units along a token's kv_heads * head_dim row; grid.y: tokens,
// grid-stride. Both k and v rows are copied by the same thread.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads)
    write_kv_kernel(T* __restrict__ key_cache, T* __restrict__ value_cache, const T* __restrict__ k,
                    int64_t k_stride, const T* __restrict__ v, int64_t v_stride,
                    const int64_t* __restrict__ slots, int tokens, int64_t row_len) {
  using U = Unit<T, kVec>;
  constexpr int kW = static_cast<int>(sizeof(U) / sizeof(T));
  const int64_t col = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * kW;
  if (col >= row_len) return;
  for (int64_t token = blockIdx.y; token < tokens; token += gridDim.y) {
    const int64_t slot = __ldg(slots + token);
    if (slot < 0) continue;
    const int64_t dst = slot * row_len + col;
    const U kk = __ldg(reinterpret_cast<const U*>(k + token * k_stride + col));
    const U vv = __ldg(reinterpret_cast<const U*>(v + token * v_stride + col));
    if constexpr (kVec) {
      // Explicit 16-byte stores (a plain uint4 assignment here is split into four by nvcc).
      __stwb(reinterpret_cast<U*>(key_cache + dst), kk);
      __stwb(reinterpret_cast<U*>(value_cache + dst), vv);
    } else {
      key_cache[dst] = kk;
      value_cache[dst] = vv;
    }
  }
}

}  // namespace

template <typename T>
cudaError_t launch_write_kv(T* key_cache, T* value_cache, const T* k, int64_t k_stride, const T* v,
                            int64_t v_stride, const int64_t* slots, int tokens, int kv_heads,
                            int head_dim, cudaStream_t stream) {
  if (key_cache == nullptr || value_cache == nullptr || k == nullptr || v == nullptr ||
      slots == nullptr || tokens < 0 || kv_heads <= 0 || head_dim <= 0) {
    return cudaErrorInvalidValue;
  }
  if (tokens == 0) return cudaSuccess;
  constexpr int kW = kVec16<T>;
  const int64_t row_len = static_cast<int64_t>(kv_heads) * head_dim;
  const bool vectorizable = row_len % kW == 0 && k_stride % kW == 0 && v_stride % kW == 0 &&
                            aligned16(key_cache) && aligned16(value_cache) && aligned16(k) &&
                            aligned16(v);
  const int64_t units = vectorizable ? row_len / kW : row_len;
  const int64_t chunks = ceil_div(units, static_cast<int64_t>(kThreads));
  if (chunks > 0x7fffffff) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(chunks), grid_yz(tokens));
  if (vectorizable) {
    write_kv_kernel<T, true><<<grid, kThreads, 0, stream>>>(key_cache, value_cache, k, k_stride, v,
                                                            v_stride, slots, tokens, row_len);
  } else {
    write_kv_kernel<T, false><<<grid, kThreads, 0, stream>>>(key_cache, value_cache, k, k_stride, v,
                                                             v_stride, slots, tokens, row_len);
  }
  return cudaGetLastError();
}

#define HELIOS_INSTANTIATE_WRITE_KV(T)                                                  \
  template cudaError_t launch_write_kv<T>(T*, T*, const T*, int64_t, const T*, int64_t, \
                                          const int64_t*, int, int, int, cudaStream_t);

HELIOS_INSTANTIATE_WRITE_KV(float)
HELIOS_INSTANTIATE_WRITE_KV(__half)
HELIOS_INSTANTIATE_WRITE_KV(__nv_bfloat16)

#undef HELIOS_INSTANTIATE_WRITE_KV

}  // namespace helios::kernels
