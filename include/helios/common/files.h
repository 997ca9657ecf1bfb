#pragma once

#include <filesystem>
#include <string>

namespace helios {

// The whole file as bytes. Throws helios::Error(kNotFound) naming the file when it cannot be
// opened.
std::string read_file(const std::filesystem::path& path);

// Whether `a` and `b` name the same directory (a model loaded from either is the same model):
// the filesystem's answer where both exist, else the same absolute path once normalised (a
// model directory removed since it was loaded is still the same model it was).
bool same_directory(const std::filesystem::path& a, const std::filesystem::path& b);

}  // namespace helios
