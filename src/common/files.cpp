#include "helios/common/files.h"

#include <fstream>
#include <iterator>

#include "helios/common/error.h"

namespace helios {

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCode::kNotFound, path.string() + ": cannot open");
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

bool same_directory(const std::filesystem::path& a, const std::filesystem::path& b) {
  std::error_code error;
  const bool equivalent = std::filesystem::equivalent(a, b, error);
  if (!error) return equivalent;
  const std::filesystem::path abs_a = std::filesystem::absolute(a, error);
  if (error) return a.lexically_normal() == b.lexically_normal();
  const std::filesystem::path abs_b = std::filesystem::absolute(b, error);
  if (error) return a.lexically_normal() == b.lexically_normal();
  return abs_a.lexically_normal() == abs_b.lexically_normal();
}

}  // namespace helios
