#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "helios/model/config.h"
#include "helios/model/weights.h"

namespace helios::model {

struct LoadOptions {
  // Load only layers [0, max_layers); 0 (or >= num_hidden_layers) loads every layer. Tensors of
  // deeper layers are never read from disk nor made resident.
  int64_t max_layers = 0;
  // Compute dtype of the resident tensors (stored F16/BF16/F32 are converted on load).
  c10::ScalarType dtype = c10::kFloat;
  c10::Device device = c10::kCPU;
  // Decode through CUDA graphs (Transformer::set_cuda_graphs) when the device is a GPU and
  // helios is built with HELIOS_CUDA; ignored otherwise. Applied by engine::ModelInstance.
  bool cuda_graphs = true;
  // Weights already resident for this same model directory (another load of it, possibly to a
  // different depth). Its embeddings, final norm, head and layers [0, min(depth, its depth))
  // are taken as they are (the tensors share storage: nothing is read or copied) and only the
  // layers it lacks are read from disk, so loading deeper costs only the new layers. Its
  // tensors must have the requested dtype, device and this config's shapes, else
  // Error(kInvalidArgument). Not kept: it may be destroyed once the load returns.
  const ModelWeights* reuse = nullptr;
};

struct LoadedModel {
  std::filesystem::path dir;
  ModelConfig config;
  ModelWeights weights;    // weights.layers.size() == loaded depth
  int64_t bytes_read = 0;  // tensor bytes copied out of the safetensors file(s), as stored
                           // (reused tensors excluded)
};

// Loads a model directory: config.json plus model.safetensors, or shards listed in
// model.safetensors.index.json. Throws helios::Error naming the file and tensor for any
// malformed input (missing/misshapen tensor, truncated file, offsets out of bounds, unknown
// dtype, bad JSON).
LoadedModel load_model(const std::filesystem::path& dir, const LoadOptions& options = {});

// The weight_map of a model.safetensors.index.json (tensor name -> shard file name next to the
// index), nested at most kMaxJsonDepth deep; load_model reads the file at most
// kMaxJsonConfigBytes. Throws helios::Error naming `source`: kDataLoss for bad JSON, a missing
// map or a shard that is not a plain file name; kInvalidArgument for a document nested too deep.
std::map<std::string, std::string> parse_weight_map(std::string_view text,
                                                   const std::string& source);

// Reads a model directory's tensors a piece at a time, for passes that keep one decoder layer
// resident (streamed scoring): the embeddings, final norm and head once, then each layer on
// request. Same checks and errors as load_model; files are opened on first use and stay open.
class LayerReader {
 public:
  LayerReader(const std::filesystem::path& dir, c10::ScalarType dtype, c10::Device device);
  ~LayerReader();
  LayerReader(const LayerReader&) = delete;
  LayerReader& operator=(const LayerReader&) = delete;

  const ModelConfig& config() const;
  // Embeddings, final norm and head (tied as load_model ties them), and
  // config().num_hidden_layers empty layers for the caller to fill one at a time.
  ModelWeights shared_weights();
  // Layer `layer` (0-based, below num_hidden_layers; else Error(kInvalidArgument)).
  LayerWeights layer(int64_t layer);
  int64_t bytes_read() const;  // as stored, over every read so far

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct SaveOptions {
  c10::ScalarType dtype = c10::kFloat;  // F32, F16 or BF16 on disk
  // When > 0, split into model-0000N-of-0000M.safetensors shards of at most this many bytes
  // each (a tensor is never split) plus model.safetensors.index.json.
  int64_t max_shard_bytes = 0;
};

// Writes config.json and the safetensors file(s). Creates `dir` if needed.
void save_model(const std::filesystem::path& dir, const ModelConfig& config,
                const ModelWeights& weights, const SaveOptions& options = {});

}  // namespace helios::model
