#pragma once

// Shared by the fuzz targets: a scratch file for entry points that only take a path.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace helios::fuzz {

// One file per process under /dev/shm (memory, not disk), rewritten for every input and removed
// at exit.
inline const std::filesystem::path& scratch_file(const std::string& suffix) {
  static const std::filesystem::path path = [&] {
    std::error_code error;
    std::filesystem::path dir = "/dev/shm";
    if (!std::filesystem::is_directory(dir, error)) dir = std::filesystem::temp_directory_path();
    return dir / ("helios_fuzz_" + std::to_string(::getpid()) + suffix);
  }();
  static const bool cleanup = [] {
    std::atexit([] {
      std::error_code ignored;
      std::filesystem::remove(path, ignored);
    });
    return true;
  }();
  (void)cleanup;
  return path;
}

inline void write_scratch(const std::filesystem::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// A broken invariant on an accepted input: abort so libFuzzer records the input.
#define HELIOS_FUZZ_CHECK(condition) \
  do {                               \
    if (!(condition)) __builtin_trap(); \
  } while (false)

}  // namespace helios::fuzz
