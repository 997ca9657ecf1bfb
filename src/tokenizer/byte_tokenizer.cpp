#include "helios/tokenizer/byte_tokenizer.h"

#include <limits>

#include "helios/common/error.h"

namespace helios::tokenizer {
namespace {

void check_special(std::string_view field, int64_t id, int64_t vocab_size) {
  if (id < 0 || id >= vocab_size) {
    throw Error(ErrorCode::kInvalidArgument,
                "byte tokenizer: " + std::string(field) + " " + std::to_string(id) +
                    " is outside [0, vocab_size " + std::to_string(vocab_size) + ")");
  }
}

int32_t checked_id(std::string_view field, int64_t id) {
  if (id < 0 || id > std::numeric_limits<int32_t>::max()) {
    throw Error(ErrorCode::kInvalidArgument, "byte tokenizer: " + std::string(field) + " " +
                                                 std::to_string(id) + " is not a valid token id");
  }
  return static_cast<int32_t>(id);
}

}  // namespace

ByteTokenizer::ByteTokenizer(int64_t vocab_size, int32_t bos_id, int32_t eos_id)
    : vocab_size_(vocab_size), bos_id_(bos_id), eos_id_(eos_id) {
  if (vocab_size < 256 || vocab_size > std::numeric_limits<int32_t>::max()) {
    throw Error(ErrorCode::kInvalidArgument, "byte tokenizer: vocab_size " +
                                                 std::to_string(vocab_size) +
                                                 " must be at least 256 (one id per byte)");
  }
  check_special("bos_token_id", bos_id, vocab_size);
  check_special("eos_token_id", eos_id, vocab_size);
}

ByteTokenizer::ByteTokenizer(const model::ModelConfig& config)
    : ByteTokenizer(config.vocab_size, checked_id("bos_token_id", config.bos_token_id),
                    checked_id("eos_token_id", config.eos_token_id)) {}

std::vector<int32_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  for (const char c : text) ids.push_back(static_cast<uint8_t>(c));
  return ids;
}

std::string ByteTokenizer::decode(std::span<const int32_t> ids) const {
  std::string text;
  text.reserve(ids.size());
  for (const int32_t id : ids) {
    if (id < 0 || id >= vocab_size_) {
      throw Error(ErrorCode::kOutOfRange, "byte tokenizer: token id " + std::to_string(id) +
                                              " is outside [0, " + std::to_string(vocab_size_) +
                                              ")");
    }
    if (id < 256) text.push_back(static_cast<char>(id));
  }
  return text;
}

}  // namespace helios::tokenizer
