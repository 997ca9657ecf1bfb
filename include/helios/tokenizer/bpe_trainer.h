#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace helios::tokenizer {

struct BpeTrainerOptions {
  // Total tokens: the special tokens, the 256 bytes, then one per learned merge.
  int64_t vocab_size = 512;
  // Ids 0..n-1, in this order; they become special added tokens (e.g. "<s>", "</s>").
  std::vector<std::string> special_tokens;
  // A pair seen fewer times than this is never merged (training may stop below vocab_size).
  int64_t min_frequency = 2;
};

// Learns a byte-level BPE vocabulary from `corpus` and returns it as a Hugging Face
// tokenizer.json document (GPT-2 layout: ByteLevel pre-tokenizer with the GPT-2 regex, BPE
// model with "a b" merges, ByteLevel decoder) that BpeTokenizer and Hugging Face both load.
//
// The corpus is split with the GPT-2 pattern and the most frequent adjacent pair is merged
// until the vocabulary is full; ties go to the pair with the smaller (left id, right id), so
// training is deterministic. Bytes get ids in byte order after the specials (byte b is id
// n_specials + b), whether or not they occur in the corpus.
// Throws helios::Error(kInvalidArgument) naming the option when the options are inconsistent.
nlohmann::ordered_json train_bpe(std::string_view corpus, const BpeTrainerOptions& options);

// Writes a train_bpe document to `path` (indented, UTF-8); errors name the file.
void write_tokenizer_json(const nlohmann::ordered_json& document,
                          const std::filesystem::path& path);

}  // namespace helios::tokenizer
