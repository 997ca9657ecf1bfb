#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "helios/model/config.h"

namespace helios::tokenizer {

// Text <-> token ids. Implementations are immutable after construction and thread-safe.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Encodes arbitrary bytes (invalid UTF-8 included) without adding BOS/EOS.
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // The exact bytes of the ids, concatenated (may end mid UTF-8 sequence).
  virtual std::string decode(std::span<const int32_t> ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;
};

// Builds the tokenizer a model directory declares: config.tokenizer == kByte gives the byte
// tokenizer; otherwise `model_dir`/tokenizer.json is parsed (errors name the file).
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& model_dir,
                                          const model::ModelConfig& config);

}  // namespace helios::tokenizer
