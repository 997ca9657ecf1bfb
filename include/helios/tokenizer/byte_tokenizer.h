#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "helios/tokenizer/tokenizer.h"

namespace helios::tokenizer {

// Ids 0-255 are the bytes themselves; ids 256..vocab_size-1 are specials (bos, eos, spare rows
// of the embedding) and decode to nothing. Any byte string, UTF-8 or not, round-trips.
class ByteTokenizer final : public Tokenizer {
 public:
  // Throws helios::Error(kInvalidArgument) naming the field when vocab_size < 256 or bos/eos are
  // outside [0, vocab_size). A bos/eos below 256 is allowed; such an id still decodes as a byte.
  ByteTokenizer(int64_t vocab_size, int32_t bos_id, int32_t eos_id);
  explicit ByteTokenizer(const model::ModelConfig& config);

  std::vector<int32_t> encode(std::string_view text) const override;
  // Throws helios::Error(kOutOfRange) for an id outside [0, vocab_size).
  std::string decode(std::span<const int32_t> ids) const override;
  int64_t vocab_size() const override { return vocab_size_; }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }

 private:
  int64_t vocab_size_;
  int32_t bos_id_;
  int32_t eos_id_;
};

}  // namespace helios::tokenizer
