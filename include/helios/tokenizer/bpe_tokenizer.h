#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "helios/tokenizer/pre_tokenizer.h"
#include "helios/tokenizer/tokenizer.h"

namespace helios::tokenizer {

// A token matched verbatim in the input before pre-tokenization (tokenizer.json's
// "added_tokens"). Special ones (bos, eos, chat markers) decode to nothing, like the byte
// tokenizer's specials, so generated text never shows them; others decode to their content.
struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
};

// The parts of a byte-level BPE tokenizer.json that encoding and decoding need, as parsed;
// BpeTokenizer's constructor checks them against each other.
struct BpeSpec {
  std::vector<std::pair<std::string, int64_t>> vocab;       // byte-level spelling -> id
  std::vector<std::pair<std::string, std::string>> merges;  // highest priority first
  std::vector<AddedToken> added_tokens;
  PreTokenizer pre_tokenizer;
  bool ignore_merges = false;  // a piece that is itself in the vocab becomes that one token
};

// GPT-2 / Llama 3 style byte-level BPE: added tokens are cut out first, the rest is split by
// the pre-tokenizer, each piece's bytes start as one symbol each (their byte-level spelling),
// and adjacent symbols are merged lowest merge rank first (leftmost first among equal ranks)
// until no listed merge applies. Every byte has a token, so any input round-trips through
// decode (except for a prefix space the tokenizer.json asks to add).
class BpeTokenizer final : public Tokenizer {
 public:
  // vocab_size is config.vocab_size (the model's embedding rows; 0 means "the tokenizer's own
  // size"), bos/eos come from config. `source` (usually the file path) prefixes every error.
  // Throws helios::Error(kDataLoss) naming the field for an inconsistent spec (a merge of an
  // unknown token, a byte without a token, duplicate ids) and kInvalidArgument when the ids do
  // not fit the model config.
  BpeTokenizer(BpeSpec spec, const model::ModelConfig& config, std::string source);

  // Parses a Hugging Face tokenizer.json document (see tokenizer_json.cpp for what is
  // supported); errors are helios::Error naming `source` and the JSON field.
  static std::unique_ptr<BpeTokenizer> from_json(const nlohmann::json& json,
                                                 const model::ModelConfig& config,
                                                 std::string source);
  // Reads and parses `path` (kNotFound when missing, kDataLoss when not JSON).
  static std::unique_ptr<BpeTokenizer> from_file(const std::filesystem::path& path,
                                                 const model::ModelConfig& config);

  std::vector<int32_t> encode(std::string_view text) const override;
  // Throws helios::Error(kOutOfRange) for an id outside [0, vocab_size); ids inside it that the
  // tokenizer does not define (padding rows of the embedding) decode to nothing.
  std::string decode(std::span<const int32_t> ids) const override;
  int64_t vocab_size() const override { return vocab_size_; }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }

  // The id of a vocab entry (byte-level spelling, e.g. "Ġthe") or of an added token's content.
  std::optional<int32_t> token_id(std::string_view token) const;

 private:
  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };
  static uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }

  void encode_segment(std::string_view text, std::vector<int32_t>* ids) const;
  void encode_piece(std::string_view piece, std::vector<int32_t>* ids) const;
  // The added token starting at text[pos], longest first; nullptr when none does.
  const AddedToken* match_added(std::string_view text, size_t pos) const;

  std::string source_;
  std::unordered_map<std::string, int32_t> vocab_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::array<int32_t, 256> byte_ids_{};
  std::vector<AddedToken> added_;  // longest content first
  std::unordered_map<std::string, int32_t> added_by_content_;
  std::array<std::vector<int32_t>, 256> added_by_first_byte_;  // indices into added_
  std::vector<std::string> id_bytes_;                          // what each id decodes to
  PreTokenizer pre_tokenizer_;
  bool ignore_merges_ = false;
  int64_t vocab_size_ = 0;
  int32_t bos_id_ = 0;
  int32_t eos_id_ = 0;
};

}  // namespace helios::tokenizer
