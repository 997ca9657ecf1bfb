#include "helios/engine/model_instance.h"

namespace helios::engine {

std::unique_ptr<ModelInstance> ModelInstance::load(const std::filesystem::path& dir,
                                                   const model::LoadOptions& options) {
  std::unique_ptr<ModelInstance> instance(new ModelInstance());
  instance->loaded_ = model::load_model(dir, options);
  instance->tokenizer_ = tokenizer::load_tokenizer(dir, instance->loaded_.config);
  instance->transformer_ =
      std::make_unique<model::Transformer>(instance->loaded_.config, instance->loaded_.weights);
  return instance;
}

}  // namespace helios::engine
