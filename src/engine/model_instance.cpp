#include "helios/engine/model_instance.h"

#include "helios/common/error.h"

namespace helios::engine {

void ModelInstance::finish_load() {
  transformer_ = std::make_unique<model::Transformer>(loaded_.config, loaded_.weights);
  resident_bytes_ = loaded_.weights.resident_bytes();
  transformer_->set_cuda_graphs(options_.cuda_graphs);
}

std::unique_ptr<ModelInstance> ModelInstance::load(const std::filesystem::path& dir,
                                                   const model::LoadOptions& options) {
  std::unique_ptr<ModelInstance> instance(new ModelInstance());
  instance->loaded_ = model::load_model(dir, options);
  instance->options_ = options;
  instance->options_.reuse = nullptr;
  instance->tokenizer_ = tokenizer::load_tokenizer(dir, instance->loaded_.config);
  instance->finish_load();
  return instance;
}

std::unique_ptr<ModelInstance> ModelInstance::with_depth(const ModelInstance& base,
                                                         int64_t depth) {
  if (depth < 0) {
    throw Error(ErrorCode::kInvalidArgument,
                "with_depth: depth must be >= 0, got " + std::to_string(depth));
  }
  model::LoadOptions options = base.options_;
  options.max_layers = depth;
  options.reuse = &base.loaded_.weights;
  std::unique_ptr<ModelInstance> instance(new ModelInstance());
  instance->loaded_ = model::load_model(base.loaded_.dir, options);
  instance->options_ = options;
  instance->options_.reuse = nullptr;
  instance->tokenizer_ = base.tokenizer_;
  instance->finish_load();
  return instance;
}

}  // namespace helios::engine
