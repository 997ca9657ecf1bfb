#pragma once

#include <filesystem>
#include <memory>

#include "helios/model/checkpoint.h"
#include "helios/model/transformer.h"
#include "helios/tokenizer/tokenizer.h"

namespace helios::engine {

// A model loaded to some depth with its tokenizer and a Transformer over its weights. Pinned
// in memory (the Transformer refers into `loaded`), so it is handed around by unique_ptr.
class ModelInstance {
 public:
  static std::unique_ptr<ModelInstance> load(const std::filesystem::path& dir,
                                             const model::LoadOptions& options = {});
  ModelInstance(const ModelInstance&) = delete;
  ModelInstance& operator=(const ModelInstance&) = delete;

  const model::LoadedModel& loaded() const { return loaded_; }
  const model::ModelConfig& config() const { return loaded_.config; }
  const tokenizer::Tokenizer& tokenizer() const { return *tokenizer_; }
  const model::Transformer& transformer() const { return *transformer_; }

 private:
  ModelInstance() = default;
  model::LoadedModel loaded_;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer_;
  std::unique_ptr<model::Transformer> transformer_;
};

}  // namespace helios::engine
