#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>

#include "helios/model/checkpoint.h"
#include "helios/model/transformer.h"
#include "helios/tokenizer/tokenizer.h"

namespace helios::engine {

// A model loaded to some depth with its tokenizer and a Transformer over its weights. Pinned
// in memory (the Transformer refers into `loaded`), so it is handed around by pointer.
class ModelInstance {
 public:
  static std::unique_ptr<ModelInstance> load(const std::filesystem::path& dir,
                                             const model::LoadOptions& options = {});
  // The model of `base` loaded to `depth` layers (0 = all), with base's dtype and device. The
  // embeddings, head and the layers both loads have share base's tensors (no copy), only the
  // layers base lacks are read from disk, and the tokenizer is base's. Either instance may
  // outlive the other.
  static std::unique_ptr<ModelInstance> with_depth(const ModelInstance& base, int64_t depth);
  ModelInstance(const ModelInstance&) = delete;
  ModelInstance& operator=(const ModelInstance&) = delete;

  const model::LoadedModel& loaded() const { return loaded_; }
  const model::ModelConfig& config() const { return loaded_.config; }
  const tokenizer::Tokenizer& tokenizer() const { return *tokenizer_; }
  // For holders that must keep decoding text after this instance is gone (a running request
  // whose engine switched models).
  std::shared_ptr<const tokenizer::Tokenizer> shared_tokenizer() const { return tokenizer_; }
  const model::Transformer& transformer() const { return *transformer_; }
  // The options it was loaded with (reuse cleared: it is not kept).
  const model::LoadOptions& options() const { return options_; }
  // Bytes of its distinct weight storages; storage shared with another instance (with_depth)
  // is counted by both. Counted once at load (the weights of an instance never change); the
  // engine reads it every step.
  int64_t resident_bytes() const { return resident_bytes_; }

 private:
  ModelInstance() = default;
  // What follows loaded_ and options_: the transformer over the weights, their byte count.
  void finish_load();
  model::LoadedModel loaded_;
  model::LoadOptions options_;
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer_;
  std::unique_ptr<model::Transformer> transformer_;
  int64_t resident_bytes_ = 0;
};

}  // namespace helios::engine
