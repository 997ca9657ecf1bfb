#include "helios/model/checkpoint.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "helios/common/dtype.h"
#include "helios/common/error.h"
#include "helios/common/json_limits.h"
#include "helios/model/safetensors.h"

namespace helios::model {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kConfigFile = "config.json";
constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";
constexpr const char* kEmbedName = "model.embed_tokens.weight";
constexpr const char* kNormName = "model.norm.weight";
constexpr const char* kHeadName = "lm_head.weight";

std::string shape_string(at::IntArrayRef shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// Where each tensor of a checkpoint directory lives. Files are opened on first use, so a shard
// holding only layers past the loaded depth is never opened, let alone read.
class TensorSource {
 public:
  explicit TensorSource(const fs::path& dir) : dir_(dir) {
    if (fs::is_regular_file(dir / kSingleFile)) return;
    index_path_ = dir / kIndexFile;
    if (!fs::is_regular_file(index_path_)) {
      throw Error(ErrorCode::kNotFound,
                  dir.string() + ": neither " + kSingleFile + " nor " + kIndexFile + " found");
    }
    read_index();
  }

  bool sharded() const { return !index_path_.empty(); }

  // Loads `name` as `dtype` after checking its stored shape against `shape`.
  at::Tensor load(const std::string& name, const std::vector<int64_t>& shape,
                  c10::ScalarType dtype) {
    const SafetensorsFile& f = file_for(name);
    const SafetensorsEntry* entry = f.find(name);
    if (entry == nullptr) {
      std::string where = f.path().string();
      if (sharded()) where += " (the shard " + index_path_.string() + " names for it)";
      throw Error(ErrorCode::kNotFound, "tensor \"" + name + "\" not found in " + where);
    }
    if (entry->shape != shape) {
      throw Error(ErrorCode::kDataLoss, f.path().string() + ": tensor \"" + name + "\" has shape " +
                                            shape_string(entry->shape) + ", expected " +
                                            shape_string(shape));
    }
    return f.load(name, dtype);
  }

  int64_t bytes_read() const {
    int64_t total = 0;
    for (const auto& [name, f] : files_) total += static_cast<int64_t>(f.bytes_read());
    return total;
  }
  size_t files_opened() const { return files_.size(); }

 private:
  void read_index() {
    weight_map_ = parse_weight_map(read_json_file(index_path_), index_path_.string());
  }

  const SafetensorsFile& file_for(const std::string& name) {
    if (!sharded()) return file(kSingleFile);
    const auto it = weight_map_.find(name);
    if (it == weight_map_.end()) {
      std::set<std::string> shards;
      for (const auto& [tensor, shard] : weight_map_) shards.insert(shard);
      std::string listed;
      for (const std::string& shard : shards) listed += (listed.empty() ? "" : ", ") + shard;
      throw Error(ErrorCode::kNotFound, "tensor \"" + name + "\" not found in the weight_map of " +
                                            index_path_.string() + " (shards: " + listed + ")");
    }
    if (!fs::exists(dir_ / it->second)) {
      throw Error(ErrorCode::kNotFound, (dir_ / it->second).string() + ": shard listed in " +
                                            index_path_.string() + " for tensor \"" + name +
                                            "\" does not exist");
    }
    return file(it->second);
  }

  SafetensorsFile& file(const std::string& file_name) {
    auto it = files_.find(file_name);
    if (it == files_.end()) it = files_.emplace(file_name, SafetensorsFile(dir_ / file_name)).first;
    return it->second;
  }

  fs::path dir_;
  fs::path index_path_;  // empty for a single-file checkpoint
  std::map<std::string, std::string> weight_map_;
  std::map<std::string, SafetensorsFile> files_;
};

// Every tensor save writes, with its expected shape, in named_tensors() order.
std::vector<TensorSpec> model_tensor_specs(const ModelConfig& config, int64_t layers) {
  const std::vector<int64_t> embed = {config.vocab_size, config.hidden_size};
  std::vector<TensorSpec> specs = {{kEmbedName, embed}};
  for (int64_t l = 0; l < layers; ++l) {
    for (TensorSpec& spec : layer_tensor_specs(config, l)) specs.push_back(std::move(spec));
  }
  specs.push_back({kNormName, {config.hidden_size}});
  if (!config.tie_word_embeddings) specs.push_back({kHeadName, embed});
  return specs;
}

bool is_shard_name(const std::string& name) {
  return name.rfind("model-", 0) == 0 && name.find("-of-") != std::string::npos &&
         name.size() > 12 && name.compare(name.size() - 12, 12, ".safetensors") == 0;
}

// Removes checkpoint files of an earlier save that the new one does not replace: a stale
// model.safetensors would shadow a new index, stale shards would only mislead.
void remove_stale(const fs::path& dir, const std::set<std::string>& keep) {
  for (const auto& item : fs::directory_iterator(dir)) {
    const std::string name = item.path().filename().string();
    const bool ours = name == kSingleFile || name == kIndexFile || is_shard_name(name);
    if (ours && keep.count(name) == 0) fs::remove(item.path());
  }
}

}  // namespace

std::map<std::string, std::string> parse_weight_map(std::string_view text,
                                                   const std::string& source) {
  const json index = parse_json(text, source, {.syntax_error = ErrorCode::kDataLoss});
  const auto map = index.is_object() ? index.find("weight_map") : index.end();
  if (map == index.end() || !map->is_object()) {
    throw Error(ErrorCode::kDataLoss, source + ": no \"weight_map\" object");
  }
  std::map<std::string, std::string> weight_map;
  for (const auto& [name, shard] : map->items()) {
    // A shard is a file next to the index: anything with a directory part could point
    // outside the model directory.
    if (!shard.is_string() || shard.get<std::string>().empty() ||
        fs::path(shard.get<std::string>()).filename() != shard.get<std::string>() ||
        shard.get<std::string>() == "." || shard.get<std::string>() == "..") {
      throw Error(ErrorCode::kDataLoss, source + ": tensor \"" + name + "\": shard " +
                                            json_excerpt(shard) + " is not a file name");
    }
    weight_map[name] = shard.get<std::string>();
  }
  return weight_map;
}

LoadedModel load_model(const fs::path& dir, const LoadOptions& options) {
  if (!fs::is_directory(dir)) {
    throw Error(ErrorCode::kNotFound, dir.string() + ": model directory not found");
  }
  if (options.max_layers < 0) {
    throw Error(ErrorCode::kInvalidArgument,
                "load_model: max_layers must be >= 0, got " + std::to_string(options.max_layers));
  }
  if (!c10::isFloatingType(options.dtype)) {
    throw Error(ErrorCode::kInvalidArgument, "load_model: dtype must be a floating type, got " +
                                                 std::string(c10::toString(options.dtype)));
  }
  LoadedModel model;
  model.dir = dir;
  model.config = ModelConfig::from_file(dir / kConfigFile);
  const ModelConfig& config = model.config;
  const int64_t depth = options.max_layers == 0
                            ? config.num_hidden_layers
                            : std::min(options.max_layers, config.num_hidden_layers);

  TensorSource source(dir);
  const auto load = [&](const TensorSpec& spec) {
    return source.load(spec.name, spec.shape, options.dtype).to(options.device);
  };
  ModelWeights& w = model.weights;
  // Layers [first, depth), by depth.
  const auto load_layers = [&](int64_t first) {
    for (int64_t l = first; l < depth; ++l) {
      LayerWeights layer;
      const std::vector<TensorSpec> specs = layer_tensor_specs(config, l);
      const std::vector<at::Tensor*> slots = layer.mutable_tensors();
      for (size_t i = 0; i < specs.size(); ++i) *slots[i] = load(specs[i]);
      w.layers.push_back(std::move(layer));
    }
  };
  if (options.reuse != nullptr) {
    const ModelWeights& reuse = *options.reuse;
    const int64_t shared = std::min(depth, reuse.loaded_layers());
    std::vector<std::pair<TensorSpec, at::Tensor>> checks = {
        {{kEmbedName, {config.vocab_size, config.hidden_size}}, reuse.embed_tokens},
        {{kNormName, {config.hidden_size}}, reuse.final_norm},
        {{kHeadName, {config.vocab_size, config.hidden_size}}, reuse.lm_head}};
    for (int64_t l = 0; l < shared; ++l) {
      const std::vector<TensorSpec> specs = layer_tensor_specs(config, l);
      const std::vector<at::Tensor> tensors = reuse.layers[l].tensors();
      for (size_t i = 0; i < specs.size(); ++i) checks.emplace_back(specs[i], tensors[i]);
    }
    // Reused tensors become this model's as they are, so they must be what a load would give.
    for (const auto& [spec, tensor] : checks) {
      if (!tensor.defined() || tensor.sizes() != at::IntArrayRef(spec.shape) ||
          tensor.scalar_type() != options.dtype || tensor.device() != options.device) {
        throw Error(ErrorCode::kInvalidArgument,
                    "load_model: the weights to reuse do not match " + dir.string() +
                        ": tensor \"" + spec.name + "\" is " +
                        (tensor.defined() ? shape_string(tensor.sizes()) + " " +
                                                std::string(c10::toString(tensor.scalar_type())) +
                                                " on " + tensor.device().str()
                                          : "undefined") +
                        ", expected " + shape_string(spec.shape) + " " +
                        std::string(c10::toString(options.dtype)) + " on " +
                        options.device.str());
      }
    }
    w.embed_tokens = reuse.embed_tokens;
    w.layers.assign(reuse.layers.begin(), reuse.layers.begin() + shared);
    load_layers(shared);
    w.final_norm = reuse.final_norm;
    w.lm_head = config.tie_word_embeddings ? w.embed_tokens : reuse.lm_head;
    model.bytes_read = source.bytes_read();
    spdlog::debug("loaded {} ({} of {} layers, {} shared): {} bytes read", dir.string(), depth,
                  config.num_hidden_layers, shared, model.bytes_read);
    return model;
  }
  // In file order (embeddings, layers by depth, head) so the reads sweep forward.
  w.embed_tokens = load({kEmbedName, {config.vocab_size, config.hidden_size}});
  load_layers(0);
  w.final_norm = load({kNormName, {config.hidden_size}});
  // Tied as in HF: the head is the embedding matrix whatever the file holds under its name.
  w.lm_head = config.tie_word_embeddings
                  ? w.embed_tokens
                  : load({kHeadName, {config.vocab_size, config.hidden_size}});
  model.bytes_read = source.bytes_read();
  spdlog::debug("loaded {} ({} of {} layers): {} bytes read from {} file(s), {} resident",
                dir.string(), depth, config.num_hidden_layers, model.bytes_read,
                source.files_opened(), w.resident_bytes());
  return model;
}

struct LayerReader::Impl {
  Impl(const fs::path& dir, c10::ScalarType dtype, c10::Device device)
      : config(ModelConfig::from_file(dir / kConfigFile)), source(dir), dtype(dtype),
        device(device) {}
  at::Tensor load(const TensorSpec& spec) {
    return source.load(spec.name, spec.shape, dtype).to(device);
  }
  ModelConfig config;
  TensorSource source;
  c10::ScalarType dtype;
  c10::Device device;
};

LayerReader::LayerReader(const fs::path& dir, c10::ScalarType dtype, c10::Device device) {
  if (!fs::is_directory(dir)) {
    throw Error(ErrorCode::kNotFound, dir.string() + ": model directory not found");
  }
  if (!c10::isFloatingType(dtype)) {
    throw Error(ErrorCode::kInvalidArgument, "LayerReader: dtype must be a floating type, got " +
                                                 std::string(c10::toString(dtype)));
  }
  impl_ = std::make_unique<Impl>(dir, dtype, device);
}

LayerReader::~LayerReader() = default;

const ModelConfig& LayerReader::config() const { return impl_->config; }

ModelWeights LayerReader::shared_weights() {
  const ModelConfig& config = impl_->config;
  ModelWeights w;
  w.embed_tokens = impl_->load({kEmbedName, {config.vocab_size, config.hidden_size}});
  w.final_norm = impl_->load({kNormName, {config.hidden_size}});
  w.lm_head = config.tie_word_embeddings
                  ? w.embed_tokens
                  : impl_->load({kHeadName, {config.vocab_size, config.hidden_size}});
  w.layers.resize(static_cast<size_t>(config.num_hidden_layers));
  return w;
}

LayerWeights LayerReader::layer(int64_t layer) {
  const ModelConfig& config = impl_->config;
  if (layer < 0 || layer >= config.num_hidden_layers) {
    throw Error(ErrorCode::kInvalidArgument,
                "LayerReader: layer " + std::to_string(layer) + " is outside [0, " +
                    std::to_string(config.num_hidden_layers) + ")");
  }
  LayerWeights out;
  const std::vector<TensorSpec> specs = layer_tensor_specs(config, layer);
  const std::vector<at::Tensor*> slots = out.mutable_tensors();
  for (size_t i = 0; i < specs.size(); ++i) *slots[i] = impl_->load(specs[i]);
  return out;
}

int64_t LayerReader::bytes_read() const { return impl_->source.bytes_read(); }

void save_model(const fs::path& dir, const ModelConfig& config, const ModelWeights& weights,
                const SaveOptions& options) {
  config.validate();
  safetensors_dtype_name(options.dtype);  // rejects dtypes the format writer cannot store
  if (options.max_shard_bytes < 0) {
    throw Error(ErrorCode::kInvalidArgument, "save_model: max_shard_bytes must be >= 0");
  }
  if (weights.loaded_layers() != config.num_hidden_layers) {
    throw Error(ErrorCode::kInvalidArgument,
                "save_model: weights hold " + std::to_string(weights.loaded_layers()) +
                    " layers but num_hidden_layers is " + std::to_string(config.num_hidden_layers));
  }
  if (config.tie_word_embeddings && weights.lm_head.defined() &&
      !weights.lm_head.is_same(weights.embed_tokens) &&
      !at::equal(weights.lm_head.cpu(), weights.embed_tokens.cpu())) {
    // Only the embeddings are written for a tied model: a distinct head would be lost.
    throw Error(ErrorCode::kInvalidArgument,
                "save_model: tie_word_embeddings is set but lm_head differs from embed_tokens");
  }
  const auto tensors = weights.named_tensors(config.tie_word_embeddings);
  const std::vector<TensorSpec> specs = model_tensor_specs(config, config.num_hidden_layers);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, tensor] = tensors[i];
    if (!tensor.defined() || tensor.sizes() != at::IntArrayRef(specs[i].shape)) {
      throw Error(ErrorCode::kInvalidArgument,
                  "save_model: tensor \"" + name + "\" has shape " +
                      (tensor.defined() ? shape_string(tensor.sizes()) : "(undefined)") +
                      ", expected " + shape_string(specs[i].shape));
    }
  }

  fs::create_directories(dir);
  std::set<std::string> written;
  if (options.max_shard_bytes == 0) {
    save_safetensors(dir / kSingleFile, tensors, options.dtype);
    written.insert(kSingleFile);
  } else {
    // Greedy: a shard closes when the next tensor would overflow it; a tensor larger than
    // the limit gets a shard to itself rather than being split.
    std::vector<std::vector<std::pair<std::string, at::Tensor>>> shards;
    int64_t shard_bytes = 0, total_bytes = 0;
    for (const auto& named : tensors) {
      const int64_t bytes = safetensors_data_bytes(named.second, options.dtype);
      if (shards.empty() ||
          (!shards.back().empty() && shard_bytes + bytes > options.max_shard_bytes)) {
        shards.emplace_back();
        shard_bytes = 0;
      }
      shards.back().push_back(named);
      shard_bytes += bytes;
      total_bytes += bytes;
    }
    json weight_map = json::object();
    for (size_t s = 0; s < shards.size(); ++s) {
      char name[64];
      std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
      save_safetensors(dir / name, shards[s], options.dtype);
      written.insert(name);
      for (const auto& named : shards[s]) weight_map[named.first] = name;
    }
    const json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
    std::ofstream out(dir / kIndexFile, std::ios::binary | std::ios::trunc);
    out << index.dump(2) << "\n";
    out.close();
    if (!out) {
      throw Error(ErrorCode::kUnavailable, (dir / kIndexFile).string() + ": cannot write");
    }
    written.insert(kIndexFile);
  }
  remove_stale(dir, written);

  ModelConfig on_disk = config;
  on_disk.torch_dtype = dtype_name(options.dtype);
  on_disk.save(dir / kConfigFile);
}

}  // namespace helios::model
