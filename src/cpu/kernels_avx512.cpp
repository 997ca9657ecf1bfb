// The decode kernels for AVX-512 (F, DQ): 16 float lanes, a 4 x 4 linear tile. Compiled with
// -mavx512f -mavx512dq -mavx2 -mfma (CMakeLists.txt); called only on CPUs that have them.
#include "helios/cpu/kernels.h"

#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__FMA__)
#include <immintrin.h>

namespace helios::cpu {
namespace {

struct S {
  using V = __m512;
  static constexpr int W = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V set1(float f) { return _mm512_set1_ps(f); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static float hsum(V v) { return _mm512_reduce_add_ps(v); }
  static float hmax(V v) { return _mm512_reduce_max_ps(v); }
  // exp by range reduction to [-ln2/2, ln2/2] and a degree-6 polynomial (Cephes' expf
  // coefficients), scaled by 2^n with scalef; inputs clamped to [-87, 88] (finite results).
  static V exp(V x) {
    x = _mm512_min_ps(_mm512_max_ps(x, set1(-87.0f)), set1(88.0f));
    const V n = _mm512_roundscale_ps(mul(x, set1(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    V r = _mm512_fnmadd_ps(n, set1(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, set1(-2.12194440e-4f), r);
    V y = set1(1.9875691500e-4f);
    y = fmadd(y, r, set1(1.3981999507e-3f));
    y = fmadd(y, r, set1(8.3334519073e-3f));
    y = fmadd(y, r, set1(4.1665795894e-2f));
    y = fmadd(y, r, set1(1.6666665459e-1f));
    y = fmadd(y, r, set1(5.0000001201e-1f));
    y = fmadd(y, mul(r, r), add(r, set1(1.0f)));
    return _mm512_scalef_ps(y, n);
  }
};

#include "kernels_impl.h"

}  // namespace

const Kernels* avx512_kernels() {
  static const Kernels table = make_kernels<S, 4, 4>("avx512");
  return &table;
}

}  // namespace helios::cpu

#else
namespace helios::cpu {
const Kernels* avx512_kernels() {
  return nullptr;
}
}  // namespace helios::cpu
#endif
