#pragma once

#include <filesystem>
#include <string>

namespace helios {

// The whole file as bytes. Throws helios::Error(kNotFound) naming the file when it cannot be
// opened.
std::string read_file(const std::filesystem::path& path);

}  // namespace helios
