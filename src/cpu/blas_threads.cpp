#include "helios/cpu/blas_threads.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>

namespace helios::cpu {

int match_blas_threads() {
  if (std::getenv("OPENBLAS_NUM_THREADS") != nullptr || std::getenv("OMP_NUM_THREADS") != nullptr) {
    return 0;
  }
  using SetThreads = void (*)(int);
  auto* set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (set == nullptr) return 0;
  const int threads = std::max(1, at::get_num_threads());
  set(threads);
  return threads;
}

}  // namespace helios::cpu
