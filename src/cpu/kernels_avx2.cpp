// The decode kernels for AVX2 + FMA: 8 float lanes, a 2 x 4 linear tile (16 ymm registers).
// Compiled with -mavx2 -mfma (CMakeLists.txt); called only on CPUs that have them.
#include "helios/cpu/kernels.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace helios::cpu {
namespace {

struct S {
  using V = __m256;
  static constexpr int W = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V set1(float f) { return _mm256_set1_ps(f); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static float hsum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float hmax(V v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  // As the AVX-512 exp, with 2^n built in the exponent bits (n in [-126, 127] after the clamp).
  static V exp(V x) {
    x = _mm256_min_ps(_mm256_max_ps(x, set1(-87.0f)), set1(88.0f));
    const V n = _mm256_round_ps(mul(x, set1(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    V r = _mm256_fnmadd_ps(n, set1(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, set1(-2.12194440e-4f), r);
    V y = set1(1.9875691500e-4f);
    y = fmadd(y, r, set1(1.3981999507e-3f));
    y = fmadd(y, r, set1(8.3334519073e-3f));
    y = fmadd(y, r, set1(4.1665795894e-2f));
    y = fmadd(y, r, set1(1.6666665459e-1f));
    y = fmadd(y, r, set1(5.0000001201e-1f));
    y = fmadd(y, mul(r, r), add(r, set1(1.0f)));
    const __m256i bits =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return mul(y, _mm256_castsi256_ps(bits));
  }
};

#include "kernels_impl.h"

}  // namespace

const Kernels* avx2_kernels() {
  static const Kernels table = make_kernels<S, 2, 4>("avx2");
  return &table;
}

}  // namespace helios::cpu

#else
namespace helios::cpu {
const Kernels* avx2_kernels() {
  return nullptr;
}
}  // namespace helios::cpu
#endif
