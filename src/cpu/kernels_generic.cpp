// The decode kernels in plain C++ (one lane; the compiler vectorizes what it can for the
// build's baseline): the reference for the others and the fallback on any CPU.
#include "helios/cpu/kernels.h"

namespace helios::cpu {
namespace {

struct S {
  using V = float;
  static constexpr int W = 1;
  static V zero() { return 0.0f; }
  static V load(const float* p) { return *p; }
  static void store(float* p, V v) { *p = v; }
  static V set1(float f) { return f; }
  static V add(V a, V b) { return a + b; }
  static V sub(V a, V b) { return a - b; }
  static V mul(V a, V b) { return a * b; }
  static V div(V a, V b) { return a / b; }
  static V max(V a, V b) { return a > b ? a : b; }
  static V fmadd(V a, V b, V c) { return a * b + c; }
  static float hsum(V v) { return v; }
  static float hmax(V v) { return v; }
  static V exp(V x) { return __builtin_expf(x); }
};

#include "kernels_impl.h"

}  // namespace

const Kernels* generic_kernels() {
  static const Kernels table = make_kernels<S, 1, 4>("generic");
  return &table;
}

}  // namespace helios::cpu
