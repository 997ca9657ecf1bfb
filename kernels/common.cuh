#pragma once

// Internal helpers shared by the kernels: element conversion for float, __half and
// __nv_bfloat16 (all math in float32, results rounded to nearest even), 16-byte vector access,
// warp and block reductions, and host-side launch arithmetic. Not part of the public interface.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace helios::kernels::detail {

inline constexpr int kWarpSize = 32;
inline constexpr int kMaxThreads = 1024;
inline constexpr unsigned kFullMask = 0xffffffffu;
// gridDim.y / gridDim.z limit; larger extents are covered by grid-stride loops or several
// launches.
inline constexpr int kMaxGridYZ = 65535;

// ---------------------------------------------------------------------------------------------
// Element conversion.

__device__ __forceinline__ float to_float(float v) {
  return v;
}
__device__ __forceinline__ float to_float(__half v) {
  return __half2float(v);
}
__device__ __forceinline__ float to_float(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// v rounded to T and back: the value a T tensor would hold after this step.
template <typename T>
__device__ __forceinline__ float round_to(float v) {
  return to_float(from_float<T>(v));
}

// ---------------------------------------------------------------------------------------------
// 16-byte vectors: 4 floats or 8 16-bit values, converted to / from float registers. The
// pointer must be 16-byte aligned. Element k of the array is the element at p + k.

template <typename T>
inline constexpr int kVec16 = static_cast<int>(16 / sizeof(T));

namespace internal {

template <typename T>
__device__ __forceinline__ float bits_to_float(unsigned bits16) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(bits16)));
  } else {
    return __bfloat162float(__ushort_as_bfloat16(static_cast<unsigned short>(bits16)));
  }
}

template <typename T>
__device__ __forceinline__ unsigned float_to_bits(float v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half_as_ushort(__float2half_rn(v));
  } else {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
  }
}

template <typename T>
__device__ __forceinline__ void unpack16(const uint4& u, float (&f)[kVec16<T>]) {
  if constexpr (std::is_same_v<T, float>) {
    f[0] = __uint_as_float(u.x);
    f[1] = __uint_as_float(u.y);
    f[2] = __uint_as_float(u.z);
    f[3] = __uint_as_float(u.w);
  } else {
    const unsigned words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      f[2 * k] = bits_to_float<T>(words[k] & 0xffffu);
      f[2 * k + 1] = bits_to_float<T>(words[k] >> 16);
    }
  }
}

template <typename T>
__device__ __forceinline__ uint4 pack16(const float (&f)[kVec16<T>]) {
  uint4 u;
  if constexpr (std::is_same_v<T, float>) {
    u.x = __float_as_uint(f[0]);
    u.y = __float_as_uint(f[1]);
    u.z = __float_as_uint(f[2]);
    u.w = __float_as_uint(f[3]);
  } else {
    unsigned words[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      words[k] = float_to_bits<T>(f[2 * k]) | (float_to_bits<T>(f[2 * k + 1]) << 16);
    }
    u.x = words[0];
    u.y = words[1];
    u.z = words[2];
    u.w = words[3];
  }
  return u;
}

}  // namespace internal

// Coherent load: safe when the same kernel writes the memory (in-place / aliased outputs).
template <typename T>
__device__ __forceinline__ void load_vec16(const T* p, float (&f)[kVec16<T>]) {
  internal::unpack16<T>(*reinterpret_cast<const uint4*>(p), f);
}

// Read-only (non-coherent cache) load: only for memory no thread of the kernel writes.
template <typename T>
__device__ __forceinline__ void load_vec16_ro(const T* p, float (&f)[kVec16<T>]) {
  internal::unpack16<T>(__ldg(reinterpret_cast<const uint4*>(p)), f);
}

template <typename T>
__device__ __forceinline__ void store_vec16(T* p, const float (&f)[kVec16<T>]) {
  *reinterpret_cast<uint4*>(p) = internal::pack16<T>(f);
}

// Two consecutive elements (p must be aligned to 2 * sizeof(T) when kAligned), read-only.
template <typename T, bool kAligned>
__device__ __forceinline__ float2 load_pair_ro(const T* p) {
  if constexpr (!kAligned) {
    return make_float2(to_float(__ldg(p)), to_float(__ldg(p + 1)));
  } else if constexpr (std::is_same_v<T, float>) {
    return __ldg(reinterpret_cast<const float2*>(p));
  } else if constexpr (std::is_same_v<T, __half>) {
    return __half22float2(__ldg(reinterpret_cast<const __half2*>(p)));
  } else {
    return __bfloat1622float2(__ldg(reinterpret_cast<const __nv_bfloat162*>(p)));
  }
}

// Four consecutive elements (p aligned to 4 * sizeof(T): 16 bytes for float, 8 for 16-bit
// types), read-only.
template <typename T>
__device__ __forceinline__ void load4_ro(const T* p, float (&f)[4]) {
  if constexpr (std::is_same_v<T, float>) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(p));
    f[0] = v.x;
    f[1] = v.y;
    f[2] = v.z;
    f[3] = v.w;
  } else {
    const uint2 u = __ldg(reinterpret_cast<const uint2*>(p));
    f[0] = internal::bits_to_float<T>(u.x & 0xffffu);
    f[1] = internal::bits_to_float<T>(u.x >> 16);
    f[2] = internal::bits_to_float<T>(u.y & 0xffffu);
    f[3] = internal::bits_to_float<T>(u.y >> 16);
  }
}

// ---------------------------------------------------------------------------------------------
// Reductions. The warp versions need all 32 lanes to take part (full mask).

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(kFullMask, v, offset);
  }
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  }
  return v;
}

struct SumOp {
  __device__ static float identity() { return 0.0f; }
  __device__ static float warp(float v) { return warp_sum(v); }
};

struct MaxOp {
  __device__ static float identity() { return -INFINITY; }
  __device__ static float warp(float v) { return warp_max(v); }
};

// Reduction over the whole block, returned to every thread: shuffle within each warp, then the
// first warp reduces the per-warp partials from shared memory. blockDim.x must be a multiple of
// 32. Contains two __syncthreads, so every thread must call it; consecutive calls are safe (the
// partials are rewritten only after the barrier all readers of the previous result passed).
template <typename Op>
__device__ float block_reduce(float v) {
  __shared__ float partials[kMaxThreads / kWarpSize];
  __shared__ float total;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int num_warps = static_cast<int>(blockDim.x) / kWarpSize;

  v = Op::warp(v);
  if (lane == 0) partials[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < num_warps ? partials[lane] : Op::identity();
    v = Op::warp(v);
    if (lane == 0) total = v;
  }
  __syncthreads();
  return total;
}

__device__ __forceinline__ float block_sum(float v) {
  return block_reduce<SumOp>(v);
}
__device__ __forceinline__ float block_max(float v) {
  return block_reduce<MaxOp>(v);
}

// ---------------------------------------------------------------------------------------------
// Host-side helpers.

inline bool is_aligned(const void* p, std::size_t alignment) {
  return reinterpret_cast<std::uintptr_t>(p) % alignment == 0;
}

inline bool aligned16(const void* p) {
  return is_aligned(p, 16);
}

template <typename A, typename B>
constexpr auto ceil_div(A a, B b) {
  return (a + b - 1) / b;
}

// Threads for a block that sweeps `elements` items: enough whole warps to cover them in one
// pass, between one warp and `max_threads`.
inline int threads_for(int64_t elements, int max_threads = kMaxThreads) {
  const int64_t warps = ceil_div(elements, static_cast<int64_t>(kWarpSize));
  const int64_t threads = warps * kWarpSize;
  if (threads < kWarpSize) return kWarpSize;
  return threads > max_threads ? max_threads : static_cast<int>(threads);
}

// Extent of a grid y / z dimension covering n items with a grid-stride loop.
inline unsigned grid_yz(int64_t n) {
  return static_cast<unsigned>(n < kMaxGridYZ ? (n < 1 ? 1 : n) : kMaxGridYZ);
}

}  // namespace helios::kernels::detail
