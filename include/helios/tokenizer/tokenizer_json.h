#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "helios/model/config.h"
#include "helios/tokenizer/bpe_tokenizer.h"

namespace helios::tokenizer {

// Largest tokenizer.json helios reads: 256 MiB (the largest published ones are tens of MiB).
inline constexpr uint64_t kMaxTokenizerJsonBytes = uint64_t{256} << 20;

// Parses the text of a Hugging Face tokenizer.json (nested at most kMaxJsonDepth deep) into a
// byte-level BPE tokenizer for `config`, as BpeTokenizer::from_file does after reading the file.
// Errors are helios::Error naming `source`: kDataLoss for bad JSON or a malformed field,
// kInvalidArgument for an unsupported one or a document nested too deep.
std::unique_ptr<BpeTokenizer> parse_tokenizer_json(std::string_view text,
                                                   const model::ModelConfig& config,
                                                   std::string source);

}  // namespace helios::tokenizer
