// Decode-step speed against the memory-bandwidth limit (a roofline), and prefill throughput.
//
// For every model, loaded depth and batch size, a KV cache holds `batch` sequences of
// `--context` tokens, and decode steps of the whole batch are timed with early exit off (every
// row runs the full loaded depth). A decode step has to stream every weight of the loaded
// layers, the final norm and the LM head, plus each row's cached keys and values, so
// bytes per step / step time is the bandwidth the step achieved; compared with the device's
// peak copy bandwidth it says how close decoding runs to the memory roofline. A prefill of one
// long sequence is timed as well and reported in TFLOP/s.
//
// Models are model directories (config.json + safetensors) or synthetic shapes with random
// weights (llama-3.2-1b, llama-3-8b), created directly on the device in the compute dtype.
// Prints two tables and, with --json, one JSON object.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <unistd.h>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "bench_common.h"
#include "helios/common/cli_errors.h"
#include "helios/common/dtype.h"
#include "helios/common/error.h"
#include "helios/engine/memory_plan.h"
#include "helios/kv/kv_cache.h"
#include "helios/model/checkpoint.h"
#include "helios/model/config.h"
#include "helios/model/transformer.h"
#include "helios/model/weights.h"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using helios::dtype_name;
using helios::DtypeSpelling;
using helios::parse_dtype;
using helios::UsageError;  // a bad argument: the message is printed, exit status 2
using helios::bench::Fatal;
using helios::engine::blocks_for_tokens;
using helios::engine::ModelFootprint;
using helios::model::ModelConfig;
using helios::model::ModelWeights;
using helios::model::Transformer;

constexpr int64_t kGiB = int64_t{1} << 30;
constexpr int64_t kMiB = int64_t{1} << 20;
constexpr int64_t kBlockSize = 16;
constexpr int kPrefillRuns = 3;

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

double mean(const std::vector<double>& values) {
  double sum = 0.0;
  for (const double v : values) sum += v;
  return sum / static_cast<double>(values.size());
}

// An exception's message without ATen's C++ backtrace.
std::string message_of(const std::exception& e) {
  if (const auto* error = dynamic_cast<const c10::Error*>(&e)) {
    return error->what_without_backtrace();
  }
  return e.what();
}

// ---------------------------------------------------------------------------------------------
// Models

// A synthetic Llama shape: its config, with exit points every 4th layer plus the last.
ModelConfig llama_shape(int64_t hidden, int64_t intermediate, int64_t layers, int64_t heads,
                        int64_t kv_heads, int64_t vocab, bool tied, double rope_theta,
                        int64_t max_positions) {
  ModelConfig c;
  c.hidden_size = hidden;
  c.intermediate_size = intermediate;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.vocab_size = vocab;
  c.tie_word_embeddings = tied;
  c.rope_theta = rope_theta;
  c.max_position_embeddings = max_positions;
  c.rms_norm_eps = 1e-5;
  c.bos_token_id = 128000;
  c.eos_token_id = 128001;
  c.torch_dtype = "bfloat16";
  for (int layer = 4; layer < layers; layer += 4) c.exit_layers.push_back(layer);
  c.exit_layers.push_back(static_cast<int>(layers));
  return c;
}

const std::vector<std::string> kShapeNames{"llama-3.2-1b", "llama-3-8b"};

std::optional<ModelConfig> synthetic_config(const std::string& name) {
  if (name == "llama-3.2-1b") {
    return llama_shape(2048, 8192, 16, 32, 8, 128256, true, 500000.0, 131072);
  }
  if (name == "llama-3-8b") {
    return llama_shape(4096, 14336, 32, 32, 8, 128256, false, 500000.0, 8192);
  }
  return std::nullopt;
}

struct ModelSpec {
  std::string item;   // as given on the command line
  std::string label;  // the table's model column
  fs::path dir;       // empty for a synthetic shape
  ModelConfig config;
  bool synthetic() const { return dir.empty(); }
};

// The loaded depths of one benchmark model: `deepest_` holds the deepest load so far; a
// shallower depth shares its tensors (directories: load_model with reuse, no disk reads).
class ModelHolder {
 public:
  ModelHolder(const ModelSpec& spec, at::ScalarType dtype, at::Device device, int64_t positions,
              uint64_t seed)
      : spec_(spec), dtype_(dtype), device_(device), positions_(positions), seed_(seed) {}

  // Weights, config and Transformer of the first `depth` layers. The returned view stays valid
  // until the next call.
  struct View {
    ModelConfig config;
    ModelWeights weights;
    std::unique_ptr<Transformer> transformer;
  };
  View& load(int64_t depth) {
    view_.reset();
    if (spec_.synthetic()) {
      extend_synthetic(depth);
    } else {
      helios::model::LoadOptions options;
      options.max_layers = depth;
      options.dtype = dtype_;
      options.device = device_;
      options.reuse = deepest_ ? &deepest_->weights : nullptr;
      auto loaded = std::make_unique<helios::model::LoadedModel>(
          helios::model::load_model(spec_.dir, options));
      if (!deepest_ || loaded->weights.loaded_layers() >= deepest_->weights.loaded_layers()) {
        deepest_ = std::move(loaded);
      } else {
        view_ = std::make_unique<View>();
        view_->weights = std::move(loaded->weights);
      }
    }
    if (!view_) {
      view_ = std::make_unique<View>();
      view_->weights = deepest_->weights;
      view_->weights.layers.resize(depth);
    }
    view_->config = spec_.config;
    // The rotary tables are built for max_position_embeddings positions: size them for what
    // the benchmark runs (a stock 128k-position config would otherwise build 128k-row tables).
    view_->config.max_position_embeddings = positions_;
    view_->transformer = std::make_unique<Transformer>(view_->config, view_->weights);
    return *view_;
  }

 private:
  // Random weights made on the device in the compute dtype, one tensor at a time.
  void extend_synthetic(int64_t depth) {
    const auto options = at::TensorOptions().dtype(dtype_).device(device_);
    const auto normal = [&](at::IntArrayRef shape) { return at::randn(shape, options).mul_(0.02); };
    const ModelConfig& c = spec_.config;
    if (!deepest_) {
      at::manual_seed(seed_);
      deepest_ = std::make_unique<helios::model::LoadedModel>();
      ModelWeights& w = deepest_->weights;
      w.embed_tokens = normal({c.vocab_size, c.hidden_size});
      w.final_norm = at::ones({c.hidden_size}, options);
      w.lm_head = c.tie_word_embeddings ? w.embed_tokens : normal({c.vocab_size, c.hidden_size});
    }
    ModelWeights& w = deepest_->weights;
    for (int64_t l = w.loaded_layers(); l < depth; ++l) {
      helios::model::LayerWeights layer;
      const auto specs = helios::model::layer_tensor_specs(c, l);
      const auto slots = layer.mutable_tensors();
      for (size_t i = 0; i < specs.size(); ++i) {
        *slots[i] =
            specs[i].shape.size() == 1 ? at::ones(specs[i].shape, options) : normal(specs[i].shape);
      }
      w.layers.push_back(std::move(layer));
    }
  }

  const ModelSpec& spec_;
  at::ScalarType dtype_;
  at::Device device_;
  int64_t positions_;
  uint64_t seed_;
  std::unique_ptr<helios::model::LoadedModel> deepest_;
  std::unique_ptr<View> view_;
};

// ---------------------------------------------------------------------------------------------
// Byte and FLOP accounting. Resident weights and KV cache are engine::ModelFootprint's figures,
// the ones the server plans its memory with.

// Bytes a decode step of the batch must move at least: every weight of the loaded layers, the
// final norm and the LM head once, the batch's embedding rows, each row's cached keys and
// values of its context plus the new token at every loaded layer, and the new keys/values.
struct StepBytes {
  int64_t layer_weights = 0;
  int64_t final_norm = 0;
  int64_t lm_head = 0;
  int64_t embedding_rows = 0;
  int64_t kv_read = 0;
  int64_t kv_write = 0;
  int64_t total() const {
    return layer_weights + final_norm + lm_head + embedding_rows + kv_read + kv_write;
  }
};

StepBytes step_bytes(const ModelFootprint& footprint, const ModelConfig& c, const ModelWeights& w,
                     int64_t batch, int64_t context) {
  StepBytes b;
  for (const auto& layer : w.layers) {
    for (const at::Tensor& t : layer.tensors()) b.layer_weights += static_cast<int64_t>(t.nbytes());
  }
  b.final_norm = static_cast<int64_t>(w.final_norm.nbytes());
  b.lm_head = static_cast<int64_t>(w.lm_head.nbytes());
  const int64_t elt = static_cast<int64_t>(w.embed_tokens.element_size());
  b.embedding_rows = batch * c.hidden_size * elt;
  const int64_t per_position = footprint.kv_bytes_per_token(w.loaded_layers());
  b.kv_read = batch * (context + 1) * per_position;
  b.kv_write = batch * per_position;
  return b;
}

// Prefill FLOPs of T tokens: the loaded layers' matmuls, causal attention (QK^T and PV over
// the T(T+1)/2 visible pairs), and the LM head at the last position.
double prefill_flops(const ModelConfig& c, const ModelFootprint& footprint, int64_t element_size,
                     int64_t depth, int64_t tokens) {
  const double t = static_cast<double>(tokens);
  const double params = static_cast<double>(depth * (footprint.layer_bytes / element_size));
  const double attention = 2.0 * 2.0 * static_cast<double>(depth * c.num_attention_heads) *
                           static_cast<double>(c.head_dim()) * t * (t + 1.0) / 2.0;
  return 2.0 * params * t + attention +
         2.0 * static_cast<double>(c.hidden_size) * static_cast<double>(c.vocab_size);
}

// Rough transient bytes on top of weights and cache: one layer's gathered keys/values and
// attention scores, float32 logits and their softmax, the prefill's T x T scores and MLP rows.
int64_t decode_workspace(const ModelConfig& c, int64_t batch, int64_t context, int64_t elt) {
  const int64_t attended = context + 1;
  return 2 * batch * attended * c.num_key_value_heads * c.head_dim() * elt +
         3 * batch * c.num_attention_heads * attended * 4 + 3 * batch * c.vocab_size * 4;
}

int64_t prefill_workspace(const ModelConfig& c, int64_t tokens, int64_t elt) {
  return 3 * c.num_attention_heads * tokens * tokens * 4 + tokens * tokens * 4 +
         3 * tokens * c.intermediate_size * elt + 4 * tokens * c.hidden_size * 4;
}

// ---------------------------------------------------------------------------------------------
// Peak bandwidth

struct Peak {
  double gbps = 0.0;
  std::string source;  // "measured" or "--peak-gbps"
  std::string method;
};

// Waits for the device: a one-element read-back to the host orders after every queued kernel.
void sync(const at::Tensor& t) {
  if (t.is_cuda()) (void)t.flatten()[0].item<float>();
}

// One core's L2 cache, as the C library reports it (0 when unknown).
int64_t l2_cache_bytes() {
  static const int64_t bytes = std::max<long>(0, sysconf(_SC_LEVEL2_CACHE_SIZE));
  return bytes;
}

Peak measure_peak(at::Device device) {
  const bool cuda = device.is_cuda();
  const int64_t bytes = cuda ? kGiB : 256 * kMiB;
  const int copies_per_run = cuda ? 5 : 1;
  const int runs = 10;
  const auto options = at::TensorOptions().dtype(at::kFloat).device(device);
  const at::Tensor src = at::ones({bytes / 4}, options);
  at::Tensor dst = at::empty({bytes / 4}, options);
  dst.copy_(src);  // first touch of dst's pages
  sync(dst);
  double best = 0.0;
  for (int r = 0; r < runs; ++r) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < copies_per_run; ++i) dst.copy_(src);
    sync(dst);
    const double seconds = seconds_since(start) / copies_per_run;
    best = std::max(best, 2.0 * static_cast<double>(bytes) / seconds / 1e9);
  }
  Peak peak;
  peak.gbps = best;
  peak.source = "measured";
  peak.method = fmt::format(
      "at::Tensor::copy_ of a {} MiB float32 buffer on {}, bytes read + written, best of {} "
      "runs{}",
      bytes / kMiB, device.str(), runs,
      cuda ? fmt::format(" of {} copies each", copies_per_run) : std::string());
  return peak;
}

std::string device_name(at::Device device) {
  if (device.is_cuda()) {
    // Without the CUDA runtime headers (helios_core may be built without CUDA): ask nvidia-smi.
    std::string name;
    if (FILE* pipe =
            popen("nvidia-smi --query-gpu=name --format=csv,noheader -i 0 2>/dev/null", "r")) {
      char buffer[256];
      while (fgets(buffer, sizeof buffer, pipe) != nullptr) name += buffer;
      pclose(pipe);
    }
    while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
    return name.empty() ? device.str() : name;
  }
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) {
        std::string name = line.substr(colon + 1);
        name.erase(0, name.find_first_not_of(' '));
        return name;
      }
    }
  }
  return "cpu";
}

// ---------------------------------------------------------------------------------------------
// Measurements

std::vector<int32_t> random_tokens(std::mt19937_64& rng, int64_t count, int64_t vocab) {
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> ids(count);
  for (auto& id : ids) id = pick(rng);
  return ids;
}

struct DecodeTiming {
  std::vector<double> step_ms;
  int64_t exit_heads = 0;
};

// Fills `batch` sequences with `context` positions (one prefill, its keys/values copied to the
// other sequences), then times `steps` decode steps after `warmup` untimed ones. Every step
// decodes the token at position `context`: the lengths go back to `context` after each step, so
// every timed step attends to the same context + 1 positions and moves the same bytes.
DecodeTiming time_decode(const Transformer& transformer, int64_t batch, int64_t context,
                         int64_t steps, int64_t warmup, std::mt19937_64& rng) {
  const ModelConfig& c = transformer.config();
  helios::kv::KvCache cache =
      helios::engine::make_cache_for(transformer, batch, context + steps + 1, kBlockSize);
  std::vector<helios::kv::SequenceKv> sequences(batch);
  std::vector<helios::kv::SequenceKv*> pointers;
  for (auto& sequence : sequences) {
    if (!cache.reserve(sequence, context + steps + 1)) {
      throw helios::Error(helios::ErrorCode::kInternal, "roofline: KV cache too small");
    }
    pointers.push_back(&sequence);
  }
  helios::model::ExitPolicy no_exit;
  no_exit.threshold = 2.0;
  transformer.prefill(cache, sequences[0], random_tokens(rng, context, c.vocab_size), no_exit);
  const at::Tensor first = cache.slots(sequences[0], 0, context);
  for (int64_t b = 1; b < batch; ++b) {
    const at::Tensor slots = cache.slots(sequences[b], 0, context);
    for (int64_t l = 0; l < transformer.loaded_layers(); ++l) {
      cache.keys(l).index_copy_(0, slots, cache.keys(l).index_select(0, first));
      cache.values(l).index_copy_(0, slots, cache.values(l).index_select(0, first));
    }
    sequences[b].length = context;
  }
  DecodeTiming timing;
  // Early exit is off (threshold above 1): decode evaluates the exit head at the last loaded
  // layer only; the byte count below relies on it.
  timing.exit_heads = helios::model::Transformer::can_exit_early(no_exit)
                          ? static_cast<int64_t>(transformer.exit_points().size())
                          : 1;
  for (int64_t step = 0; step < warmup + steps; ++step) {
    for (auto& sequence : sequences) sequence.length = context;
    const std::vector<int32_t> tokens = random_tokens(rng, batch, c.vocab_size);
    const auto start = std::chrono::steady_clock::now();
    // decode returns host logits, so the device work is done when it returns.
    const auto out = transformer.decode(cache, pointers, tokens, no_exit);
    const double ms = seconds_since(start) * 1e3;
    if (step >= warmup) timing.step_ms.push_back(ms);
  }
  return timing;
}

std::vector<double> time_prefill(const Transformer& transformer, int64_t tokens,
                                 std::mt19937_64& rng) {
  helios::kv::KvCache cache = helios::engine::make_cache_for(transformer, 1, tokens, kBlockSize);
  helios::kv::SequenceKv sequence;
  cache.reserve(sequence, tokens);
  helios::model::ExitPolicy no_exit;
  no_exit.threshold = 2.0;
  const std::vector<int32_t> ids = random_tokens(rng, tokens, transformer.config().vocab_size);
  std::vector<double> ms;
  for (int run = 0; run < 1 + kPrefillRuns; ++run) {
    sequence.length = 0;
    const auto start = std::chrono::steady_clock::now();
    transformer.prefill(cache, sequence, ids, no_exit);  // host logits: synchronised
    if (run > 0) ms.push_back(seconds_since(start) * 1e3);
  }
  return ms;
}

// ---------------------------------------------------------------------------------------------
// Arguments

struct Depth {
  std::string text;  // "full" or the fraction as given
  double fraction = 1.0;
};

int64_t layers_for(const Depth& depth, int64_t total) {
  const int64_t layers = static_cast<int64_t>(std::llround(depth.fraction * total));
  return std::clamp<int64_t>(layers, 1, total);
}

Depth parse_depth(const std::string& text) {
  if (text == "full") return Depth{text, 1.0};
  size_t used = 0;
  double f = 0.0;
  try {
    f = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || !(f > 0.0) || f > 1.0) {
    throw UsageError("--depths: '" + text + "' is neither 'full' nor a fraction in (0, 1]");
  }
  return Depth{text, f};
}

ModelSpec resolve_model(const std::string& item) {
  ModelSpec spec;
  spec.item = item;
  if (const auto config = synthetic_config(item)) {
    spec.label = item;
    spec.config = *config;
    return spec;
  }
  const fs::path dir(item);
  try {
    if (fs::is_directory(dir) && fs::exists(dir / "config.json")) {
      spec.dir = dir;
      spec.label = fs::absolute(dir).lexically_normal().filename().string();
      if (spec.label.empty()) spec.label = fs::absolute(dir).parent_path().filename().string();
      spec.config = ModelConfig::from_file(dir / "config.json");
      return spec;
    }
  } catch (const std::exception& e) {
    // A model directory that cannot be read is a bad --models item like any other.
    throw UsageError(message_of(e));
  }
  std::string names;
  for (const auto& name : kShapeNames) names += (names.empty() ? "" : ", ") + name;
  throw UsageError("--models: '" + item +
                   "' is neither a model directory (with config.json) nor a known model shape (" +
                   names + ")");
}

// The command line as given.
struct Options {
  std::vector<std::string> model_items;
  std::string device_text = "cpu";
  std::string dtype_text;
  std::vector<std::string> depth_texts{"full"};
  std::vector<int64_t> batches{1, 8, 32, 128};
  int64_t context = 512;
  int64_t steps = 32;
  int64_t warmup = 3;
  std::optional<int64_t> prefill_tokens;
  std::optional<double> peak_gbps;
  std::optional<double> max_gib;
  int threads = 0;
  uint64_t seed = 0;
  fs::path json_out;
  std::vector<std::string> graph_texts{"off", "on"};
};

void add_options(CLI::App& app, Options& o) {
  app.add_option("--models", o.model_items,
                 "Comma list: model directories and/or synthetic shapes (llama-3.2-1b, "
                 "llama-3-8b)")
      ->delimiter(',')
      ->required();
  app.add_option("--device", o.device_text, "cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  app.add_option("--dtype", o.dtype_text,
                 "float32, bfloat16 or float16 (default: float32 on cpu, bfloat16 on cuda)")
      ->check(CLI::IsMember({"float32", "bfloat16", "float16"}));
  app.add_option("--depths", o.depth_texts,
                 "Comma list of loaded depths: 'full' or a fraction f (the first round(f * layers) "
                 "layers, at least 1)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--batches", o.batches, "Comma list of decode batch sizes")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--context", o.context, "Cached positions per sequence at every decode step")
      ->capture_default_str();
  app.add_option("--steps", o.steps, "Timed decode steps per configuration")->capture_default_str();
  app.add_option("--warmup", o.warmup, "Untimed decode steps before them")->capture_default_str();
  app.add_option("--prefill-tokens", o.prefill_tokens,
                 "Tokens of the timed prefill (default: 512 on cpu, 2048 on cuda; 0 skips it)");
  app.add_option("--peak-gbps", o.peak_gbps, "Peak memory bandwidth in GB/s (default: measured)");
  app.add_option("--max-gib", o.max_gib,
                 "Skip configurations whose weights + KV + workspace estimate exceeds this "
                 "(default: 20 on cpu, 120 on cuda)");
  app.add_option("--threads", o.threads, "ATen intra-op threads on cpu (default: ATen's own)");
  app.add_option("--seed", o.seed, "Seed of the synthetic weights and the token ids")
      ->capture_default_str();
  app.add_option("--cuda-graphs", o.graph_texts,
                 "Comma list of decode modes to time side by side: off (eager), on (CUDA graphs; "
                 "cuda only)")
      ->delimiter(',')
      ->check(CLI::IsMember({"off", "on"}))
      ->capture_default_str();
  app.add_option("--json", o.json_out, "Also write the results as one JSON object to this file");
}

// The options checked and resolved against the device: what the run measures.
struct Setup {
  std::vector<ModelSpec> models;
  std::vector<Depth> depths;
  at::Device device{at::kCPU};
  at::ScalarType dtype = at::kFloat;
  int64_t element_size = 0;
  int64_t prefill_tokens = 0;
  double max_gib = 0.0;
  int64_t budget = 0;  // max_gib in bytes
  // Rotary positions the benchmark needs: decode positions up to context + steps, the prefill.
  int64_t positions = 0;
  std::vector<bool> graph_modes;  // CUDA graphs off and/or on, each once
};

// Throws UsageError for a bad option.
Setup resolve(const Options& o) {
  Setup s;
  if (o.batches.empty()) throw UsageError("--batches: give at least one batch size");
  for (const int64_t batch : o.batches) {
    if (batch <= 0) throw UsageError(fmt::format("--batches: {} is not positive", batch));
  }
  if (o.context <= 0) {
    throw UsageError(fmt::format("--context must be positive, got {}", o.context));
  }
  if (o.steps <= 0) throw UsageError(fmt::format("--steps must be positive, got {}", o.steps));
  if (o.warmup < 0) throw UsageError(fmt::format("--warmup must be >= 0, got {}", o.warmup));
  if (o.prefill_tokens && *o.prefill_tokens < 0) {
    throw UsageError(fmt::format("--prefill-tokens must be >= 0, got {}", *o.prefill_tokens));
  }
  if (o.peak_gbps && !(*o.peak_gbps > 0.0)) throw UsageError("--peak-gbps must be positive");
  if (o.max_gib && !(*o.max_gib > 0.0)) throw UsageError("--max-gib must be positive");
  if (o.threads < 0) throw UsageError("--threads must be >= 0");
  if (o.device_text == "cuda") {
    if (!at::hasCUDA()) {
      throw UsageError("--device cuda: this build of ATen has no CUDA device available");
    }
    s.device = at::Device(at::kCUDA, 0);
  }
  const bool cuda = s.device.is_cuda();
  s.dtype = o.dtype_text.empty() ? (cuda ? at::kBFloat16 : at::kFloat)
                                 : parse_dtype(o.dtype_text, DtypeSpelling::kTorch, "--dtype");
  for (const auto& text : o.depth_texts) s.depths.push_back(parse_depth(text));
  if (s.depths.empty()) throw UsageError("--depths: give at least one depth");
  for (const auto& item : o.model_items) s.models.push_back(resolve_model(item));
  if (s.models.empty()) throw UsageError("--models: give at least one model");

  s.element_size = static_cast<int64_t>(c10::elementSize(s.dtype));
  s.prefill_tokens = o.prefill_tokens.value_or(cuda ? 2048 : 512);
  s.max_gib = o.max_gib.value_or(cuda ? 120.0 : 20.0);
  s.budget = static_cast<int64_t>(s.max_gib * static_cast<double>(kGiB));
  s.positions = std::max(o.context + o.steps + 1, s.prefill_tokens) + 16;
  // CUDA graphs exist on cuda only; on cpu every run is eager.
  for (const std::string& mode : o.graph_texts) {
    const bool on = mode == "on";
    if (on && !cuda) continue;
    if (std::find(s.graph_modes.begin(), s.graph_modes.end(), on) == s.graph_modes.end()) {
      s.graph_modes.push_back(on);
    }
  }
  if (s.graph_modes.empty()) s.graph_modes.push_back(false);
  return s;
}

// ---------------------------------------------------------------------------------------------
// The run

std::string gb(int64_t bytes) {
  return fmt::format("{:.3f}", static_cast<double>(bytes) / 1e9);
}

// Every model at every depth: what fits the memory budget is loaded, then its decode batches
// (in each CUDA graph mode) and its prefill are timed. Rows are printed as they are measured.
class Sweep {
 public:
  Sweep(const Options& options, const Setup& setup, const Peak& peak)
      : o_(options), s_(setup), peak_(peak), rng_(options.seed) {}

  void model(const ModelSpec& spec) {
    const ModelConfig& c = spec.config;
    const int64_t total_layers = c.num_hidden_layers;
    if (!spec.synthetic() && c.max_position_embeddings < s_.positions) {
      note(spec.label, fmt::format("max_position_embeddings {} < {} positions needed: rotary "
                                   "tables extended (speed only; not trained that long)",
                                   c.max_position_embeddings, s_.positions));
    }
    const ModelFootprint footprint = ModelFootprint::of(c, s_.element_size);
    ModelHolder holder(spec, s_.dtype, s_.device, s_.positions, o_.seed);
    std::set<int64_t> done_depths;
    for (const Depth& depth : s_.depths) {
      const int64_t layers = layers_for(depth, total_layers);
      const std::string depth_label = fmt::format("{}/{}", layers, total_layers);
      if (!done_depths.insert(layers).second) {
        note(spec.label, fmt::format("depth {} is {} layers again, skipped", depth.text, layers));
        continue;
      }
      const Fit fit = fit_budget(spec, footprint, layers, depth_label);
      if (fit.batches.empty() && !fit.prefill) continue;

      ModelHolder::View* view = nullptr;
      try {
        view = &holder.load(layers);
      } catch (const std::exception& e) {
        note(spec.label, fmt::format("depth {}: load failed: {}", depth_label, message_of(e)));
        failed_ = true;
        continue;
      }
      Transformer& transformer = *view->transformer;
      json common = {{"model", spec.label},
                     {"source", spec.synthetic() ? "synthetic" : spec.dir.string()},
                     {"dtype", dtype_name(s_.dtype)},
                     {"device", s_.device.str()},
                     {"depth", depth.text},
                     {"layers_loaded", layers},
                     {"layers_total", total_layers}};
      for (const bool graphs : s_.graph_modes) {
        transformer.set_cuda_graphs(graphs);
        common["cuda_graphs"] = transformer.cuda_graphs();
        for (const int64_t batch : fit.batches) {
          decode(spec, footprint, *view, batch, depth_label, common);
        }
      }
      transformer.set_cuda_graphs(false);
      if (fit.prefill) prefill(spec, footprint, transformer, layers, depth_label, common);
    }
  }

  void print_prefill_table() const {
    if (prefill_lines_.empty()) return;
    fmt::print("\nprefill: one sequence, median of {} runs after 1 warm-up\n", kPrefillRuns);
    fmt::print("{:<16} {:>8} {:>6} {:>7} {:>7} {:>10} {:>10} {:>9}\n", "model", "dtype", "device",
               "depth", "tokens", "ms", "tok/s", "TFLOP/s");
    for (const auto& p : prefill_lines_) {
      fmt::print("{:<16} {:>8} {:>6} {:>7} {:>7} {:>10.1f} {:>10.1f} {:>9.3f}\n", p.model,
                 dtype_name(s_.dtype), s_.device.str(), p.depth, p.tokens, p.ms,
                 p.tokens_per_second, p.tflops);
    }
  }

  const json& decode_rows() const { return decode_rows_; }
  const json& prefill_rows() const { return prefill_rows_; }
  const json& notes() const { return notes_; }
  bool failed() const { return failed_; }

 private:
  // What of one depth fits the memory budget, decided before anything of it is allocated.
  struct Fit {
    std::vector<int64_t> batches;
    bool prefill = false;
  };

  Fit fit_budget(const ModelSpec& spec, const ModelFootprint& footprint, int64_t layers,
                 const std::string& depth_label) {
    Fit fit;
    const ModelConfig& c = spec.config;
    const int64_t weight_bytes = footprint.weight_bytes(layers);
    if (weight_bytes > s_.budget) {
      note(spec.label,
           fmt::format("depth {}: weights alone are {:.2f} GiB > --max-gib {}, "
                       "skipped",
                       depth_label, static_cast<double>(weight_bytes) / kGiB, s_.max_gib));
      return fit;
    }
    const int64_t block_bytes = footprint.kv_block_bytes(layers, kBlockSize);
    for (const int64_t batch : o_.batches) {
      const int64_t kv =
          batch * blocks_for_tokens(o_.context + o_.steps + 1, kBlockSize) * block_bytes;
      const int64_t need =
          weight_bytes + kv + decode_workspace(c, batch, o_.context, s_.element_size);
      if (need > s_.budget) {
        note(spec.label,
             fmt::format("depth {} batch {}: weights + KV + workspace ~{:.2f} GiB "
                         "> --max-gib {}, skipped",
                         depth_label, batch, static_cast<double>(need) / kGiB, s_.max_gib));
      } else {
        fit.batches.push_back(batch);
      }
    }
    const int64_t tokens = s_.prefill_tokens;
    if (tokens > 0) {
      const int64_t need = weight_bytes + blocks_for_tokens(tokens, kBlockSize) * block_bytes +
                           prefill_workspace(c, tokens, s_.element_size);
      fit.prefill = need <= s_.budget;
      if (!fit.prefill) {
        note(spec.label,
             fmt::format("depth {} prefill of {}: ~{:.2f} GiB > --max-gib {}, "
                         "skipped",
                         depth_label, tokens, static_cast<double>(need) / kGiB, s_.max_gib));
      }
    }
    return fit;
  }

  // Times decode steps of one batch size, prints the row and records it.
  void decode(const ModelSpec& spec, const ModelFootprint& footprint, const ModelHolder::View& view,
              int64_t batch, const std::string& depth_label, const json& common) {
    const Transformer& transformer = *view.transformer;
    const std::string graphs = transformer.cuda_graphs() ? "on" : "off";
    DecodeTiming timing;
    try {
      timing = time_decode(transformer, batch, o_.context, o_.steps, o_.warmup, rng_);
    } catch (const std::exception& e) {
      note(spec.label,
           fmt::format("depth {} batch {}: decode failed: {}", depth_label, batch, message_of(e)));
      failed_ = true;
      return;
    }
    const StepBytes bytes = step_bytes(footprint, spec.config, view.weights, batch, o_.context);
    const double step_ms = median(timing.step_ms);
    const double achieved = static_cast<double>(bytes.total()) / (step_ms * 1e-3) / 1e9;
    const double tokens_per_second = static_cast<double>(batch) / (step_ms * 1e-3);
    fmt::print(
        "{:<16} {:>8} {:>6} {:>7} {:>6} {:>6} {:>9.3f} {:>9.3f} {:>10.1f} {:>8} {:>8.2f} "
        "{:>6.1f}%\n",
        spec.label, dtype_name(s_.dtype), s_.device.str(), depth_label, graphs, batch, step_ms,
        mean(timing.step_ms), tokens_per_second, gb(bytes.total()), achieved,
        100.0 * achieved / peak_.gbps);
    std::fflush(stdout);
    json row = common;
    row.update({{"batch", batch},
                {"context", o_.context},
                {"steps", o_.steps},
                {"step_ms_median", step_ms},
                {"step_ms_mean", mean(timing.step_ms)},
                {"step_ms_min", *std::min_element(timing.step_ms.begin(), timing.step_ms.end())},
                {"step_ms", timing.step_ms},
                {"tokens_per_second", tokens_per_second},
                {"bytes",
                 {{"layer_weights", bytes.layer_weights},
                  {"final_norm", bytes.final_norm},
                  {"lm_head", bytes.lm_head},
                  {"embedding_rows", bytes.embedding_rows},
                  {"kv_read", bytes.kv_read},
                  {"kv_write", bytes.kv_write}}},
                {"bytes_per_step", bytes.total()},
                {"achieved_gbps", achieved},
                {"fraction_of_peak", achieved / peak_.gbps},
                // On the CPU a step whose bytes fit in one core's L2 cache streams them from
                // there, not from memory: the copy peak is no roof for it.
                {"fits_in_cache", !s_.device.is_cuda() && bytes.total() <= l2_cache_bytes()},
                {"exit_head_evaluations", timing.exit_heads}});
    decode_rows_.push_back(row);
  }

  // Times the prefill of one sequence and records it for the prefill table.
  void prefill(const ModelSpec& spec, const ModelFootprint& footprint,
               const Transformer& transformer, int64_t layers, const std::string& depth_label,
               const json& common) {
    const int64_t tokens = s_.prefill_tokens;
    std::vector<double> ms;
    try {
      ms = time_prefill(transformer, tokens, rng_);
    } catch (const std::exception& e) {
      note(spec.label, fmt::format("depth {}: prefill failed: {}", depth_label, message_of(e)));
      failed_ = true;
      return;
    }
    const double flops = prefill_flops(spec.config, footprint, s_.element_size, layers, tokens);
    const double prefill_ms = median(ms);
    const double tflops = flops / (prefill_ms * 1e-3) / 1e12;
    const double prefill_tps = static_cast<double>(tokens) / (prefill_ms * 1e-3);
    prefill_lines_.push_back({spec.label, depth_label, tokens, prefill_ms, tflops, prefill_tps});
    json row = common;
    row.update({{"tokens", tokens},
                {"ms_median", prefill_ms},
                {"ms", ms},
                {"flops", flops},
                {"tflops", tflops},
                {"tokens_per_second", prefill_tps}});
    prefill_rows_.push_back(row);
  }

  void note(const std::string& model, const std::string& what) {
    fmt::print("  note: {}: {}\n", model, what);
    notes_.push_back({{"model", model}, {"note", what}});
  }

  struct PrefillLine {
    std::string model, depth;
    int64_t tokens;
    double ms, tflops, tokens_per_second;
  };

  const Options& o_;
  const Setup& s_;
  const Peak& peak_;
  std::mt19937_64 rng_;
  json decode_rows_ = json::array();
  json prefill_rows_ = json::array();
  json notes_ = json::array();
  std::vector<PrefillLine> prefill_lines_;
  bool failed_ = false;
};

void print_header(const Options& o, const Setup& s, const std::string& device_name,
                  const Peak& peak) {
  fmt::print("device {} ({}), {}, ATen threads {}\n", s.device.str(), device_name,
             dtype_name(s.dtype), at::get_num_threads());
  fmt::print("peak bandwidth {:.1f} GB/s ({}: {})\n", peak.gbps, peak.source, peak.method);
  fmt::print(
      "decode: context {} positions per sequence, {} timed steps after {} warm-up, early "
      "exit off\n\n",
      o.context, o.steps, o.warmup);
  fmt::print("{:<16} {:>8} {:>6} {:>7} {:>6} {:>6} {:>9} {:>9} {:>10} {:>8} {:>8} {:>7}\n", "model",
             "dtype", "device", "depth", "graphs", "batch", "step ms", "mean ms", "tok/s",
             "GB/step", "GB/s", "% peak");
}

void write_json(const Options& o, const Setup& s, const std::string& device_name, const Peak& peak,
                const Sweep& sweep) {
  const json result = {
      {"benchmark", "roofline"},
      {"device", s.device.str()},
      {"device_name", device_name},
      {"dtype", dtype_name(s.dtype)},
      {"aten_threads", at::get_num_threads()},
      {"peak", {{"gbps", peak.gbps}, {"source", peak.source}, {"method", peak.method}}},
      {"settings",
       {{"context", o.context},
        {"steps", o.steps},
        {"warmup", o.warmup},
        {"batches", o.batches},
        {"depths", o.depth_texts},
        {"models", o.model_items},
        {"prefill_tokens", s.prefill_tokens},
        {"max_gib", s.max_gib},
        {"rotary_positions", s.positions},
        {"kv_block_size", kBlockSize},
        {"seed", o.seed}}},
      {"decode", sweep.decode_rows()},
      {"prefill", sweep.prefill_rows()},
      {"notes", sweep.notes()}};
  std::ofstream out(o.json_out);
  out << result.dump(2) << "\n";
  if (!out) throw Fatal(fmt::format("cannot write {}", o.json_out.string()));
}

int run(const Options& o, const Setup& s) {
  if (o.threads > 0 && !s.device.is_cuda()) at::set_num_threads(o.threads);
  c10::InferenceMode inference;
  const std::string name = device_name(s.device);
  const Peak peak = o.peak_gbps ? Peak{*o.peak_gbps, "--peak-gbps", "given on the command line"}
                                : measure_peak(s.device);
  print_header(o, s, name, peak);
  Sweep sweep(o, s, peak);
  for (const ModelSpec& spec : s.models) sweep.model(spec);
  sweep.print_prefill_table();
  if (!o.json_out.empty()) write_json(o, s, name, peak, sweep);
  return sweep.failed() ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"helios roofline: decode-step bandwidth against the device's peak, and prefill"};
  Options options;
  add_options(app, options);
  // A parse error in CLI11's words, exiting 2 like any bad option.
  const helios::CliErrorStyle style{
      .prefix = "roofline", .one_line_parse_errors = false, .parse_error_status = 2};
  return helios::run_cli(app, argc, argv, style, [&] { return run(options, resolve(options)); });
}
