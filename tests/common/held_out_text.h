#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "helios/common/files.h"

namespace helios::testing {

// Prompts cut from a held-out split (data/<domain>/test.txt): slice i starts at
// first + i * stride and is length(i) bytes long; bytes >= 0x80 become spaces so that a cut
// stays valid UTF-8. Stops early at the end of the text.
inline std::vector<std::string> held_out_prompts(const std::string& domain, size_t count,
                                                 size_t first, size_t stride,
                                                 const std::function<size_t(size_t)>& length) {
  const std::string text = read_file(std::string(HELIOS_DATA_DIR) + "/" + domain + "/test.txt");
  std::vector<std::string> prompts;
  for (size_t i = 0; i < count; ++i) {
    const size_t pos = first + i * stride, bytes = length(i);
    if (pos + bytes >= text.size()) break;
    std::string prompt = text.substr(pos, bytes);
    for (char& c : prompt) {
      if (static_cast<unsigned char>(c) >= 0x80) c = ' ';
    }
    prompts.push_back(std::move(prompt));
  }
  return prompts;
}

}  // namespace helios::testing
