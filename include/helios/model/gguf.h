#pragma once

// Export of a model to GGUF (version 3), the file format of llama.cpp, so that the same weights
// can be run by llama.cpp's tools for a side-by-side comparison (bench/peer_bench.sh).
//
// Architecture "llama"; float32 tensors. q_proj and k_proj rows are permuted from HF's
// rotate_half layout to the interleaved pairs llama.cpp's rotary expects, as its own converter
// does; every other tensor is written as loaded. The tokenizer is written as a byte-level BPE
// ("gpt2") vocabulary with no merges: token b < 256 is byte b in GPT-2's byte-to-unicode
// spelling, so any text tokenizes to one token per byte, the ids helios's byte tokenizer gives;
// the other ids are control tokens (bos, eos, and "<unused-N>" for any more). Only models with
// the byte tokenizer can be exported.

#include <filesystem>

#include "helios/model/config.h"
#include "helios/model/weights.h"

namespace helios::model {

// Writes `weights` (every layer of the model must be loaded) to `path`. Throws Error:
// kInvalidArgument for a model it cannot export (not the byte tokenizer, not every layer
// loaded), kUnavailable for a file it cannot write.
void save_gguf(const std::filesystem::path& path, const ModelConfig& config,
               const ModelWeights& weights, const std::string& name);

// The GGUF name of each tensor save_gguf writes, in order, with the HF name it comes from.
std::vector<std::pair<std::string, std::string>> gguf_tensor_names(const ModelConfig& config);

}  // namespace helios::model
