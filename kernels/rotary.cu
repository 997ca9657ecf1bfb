#include <cstdint>

#include "common.cuh"
#include "rotary.cuh"

namespace helios::kernels {
namespace {

using namespace detail;

constexpr int kThreads = 256;

// grid.x: tokens; grid.y: chunks of kThreads (head, i) pairs of one token, heads 0..q_heads-1
// from q and then kv_heads from k. One thread rotates the pair (x[i], x[i + half]) of one head.
// The products and the sum are rounded separately (no FMA contraction), which reproduces the
// reference q * cos + rotate_half(q) * sin bit for bit in float32.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    rotary_kernel(T* q, int64_t q_stride, int q_heads, T* k, int64_t k_stride, int kv_heads,
                  int head_dim, const int64_t* __restrict__ positions,
                  const float* __restrict__ cos, const float* __restrict__ sin) {
  // The launcher guarantees (q_heads + kv_heads) * half <= 65535 * kThreads < 2^31.
  const int half = head_dim / 2;
  const int pairs = (q_heads + kv_heads) * half;
  const int e = static_cast<int>(blockIdx.y) * kThreads + static_cast<int>(threadIdx.x);
  if (e >= pairs) return;
  const int head = e / half;
  const int i = e - head * half;
  const int64_t token = blockIdx.x;

  T* vec = head < q_heads ? q + token * q_stride + static_cast<int64_t>(head) * head_dim
                          : k + token * k_stride + static_cast<int64_t>(head - q_heads) * head_dim;
  const int64_t table_row = __ldg(positions + token) * head_dim;
  const float c = __ldg(cos + table_row + i);
  const float s = __ldg(sin + table_row + i);
  const float c2 = __ldg(cos + table_row + i + half);
  const float s2 = __ldg(sin + table_row + i + half);

  const float x = to_float(vec[i]);
  const float y = to_float(vec[i + half]);
  vec[i] = from_float<T>(__fsub_rn(__fmul_rn(x, c), __fmul_rn(y, s)));
  vec[i + half] = from_float<T>(__fadd_rn(__fmul_rn(y, c2), __fmul_rn(x, s2)));
}

}  // namespace

template <typename T>
cudaError_t launch_rotary(T* q, int64_t q_stride, int q_heads, T* k, int64_t k_stride, int kv_heads,
                          int head_dim, const int64_t* positions, const float* cos,
                          const float* sin, int tokens, cudaStream_t stream) {
  if (head_dim <= 0 || head_dim % 2 != 0 || tokens < 0 || positions == nullptr || cos == nullptr ||
      sin == nullptr || (q == nullptr && k == nullptr) || (q != nullptr && q_heads < 0) ||
      (k != nullptr && kv_heads < 0)) {
    return cudaErrorInvalidValue;
  }
  const int nq = q != nullptr ? q_heads : 0;
  const int nk = k != nullptr ? kv_heads : 0;
  const int64_t pairs = (static_cast<int64_t>(nq) + nk) * (head_dim / 2);
  if (tokens == 0 || pairs == 0) return cudaSuccess;
  const int64_t chunks = ceil_div(pairs, static_cast<int64_t>(kThreads));
  if (chunks > kMaxGridYZ) return cudaErrorInvalidValue;  // > 16M pairs per token
  const dim3 grid(static_cast<unsigned>(tokens), static_cast<unsigned>(chunks));
  rotary_kernel<T><<<grid, kThreads, 0, stream>>>(q, q_stride, nq, k, k_stride, nk, head_dim,
                                                  positions, cos, sin);
  return cudaGetLastError();
}

#define HELIOS_INSTANTIATE_ROTARY(T)                                                             \
  template cudaError_t launch_rotary<T>(T*, int64_t, int, T*, int64_t, int, int, const int64_t*, \
                                        const float*, const float*, int, cudaStream_t);

HELIOS_INSTANTIATE_ROTARY(float)
HELIOS_INSTANTIATE_ROTARY(__half)
HELIOS_INSTANTIATE_ROTARY(__nv_bfloat16)

#undef HELIOS_INSTANTIATE_ROTARY

}  // namespace helios::kernels
