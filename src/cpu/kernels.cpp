#include "helios/cpu/kernels.h"

#include <cstdlib>

#include "helios/common/error.h"

namespace helios::cpu {
namespace {

bool cpu_has(const std::string& name) {
#if defined(__x86_64__) || defined(__i386__)
  if (name == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  if (name == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  if (name == "avx512" || name == "avx2") return false;
#endif
  return name == "generic";
}

const Kernels* choose() {
  if (const char* wanted = std::getenv("HELIOS_CPU_KERNELS"); wanted != nullptr && *wanted != 0) {
    if (const Kernels* k = kernels_named(wanted)) return k;
    throw Error(ErrorCode::kInvalidArgument,
                std::string("HELIOS_CPU_KERNELS=") + wanted +
                    ": not one of avx512, avx2, generic that this build and CPU can run");
  }
  return kernels_named(available_kernels().front());
}

}  // namespace

const Kernels* kernels_named(const std::string& name) {
  if (!cpu_has(name)) return nullptr;
  if (name == "avx512") return avx512_kernels();
  if (name == "avx2") return avx2_kernels();
  return generic_kernels();
}

std::vector<std::string> available_kernels() {
  std::vector<std::string> names;
  for (const char* name : {"avx512", "avx2", "generic"}) {
    if (kernels_named(name) != nullptr) names.emplace_back(name);
  }
  return names;
}

const Kernels& kernels() {
  static const Kernels* chosen = choose();
  return *chosen;
}

void rotate_heads(float* x, int64_t heads, int64_t head_dim, const float* cos, const float* sin) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* x1 = x + h * head_dim;
    float* x2 = x1 + half;
    for (int64_t i = 0; i < half; ++i) {
      const float a = x1[i], b = x2[i];
      x1[i] = a * cos[i] - b * sin[i];
      x2[i] = b * cos[half + i] + a * sin[half + i];
    }
  }
}

}  // namespace helios::cpu
