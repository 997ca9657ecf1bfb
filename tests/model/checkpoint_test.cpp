#include "helios/model/checkpoint.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "common/expect_error.h"
#include "common/scratch_dir.h"
#include "helios/common/error.h"
#include "helios/model/safetensors.h"

namespace helios::model {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Each test's files live in a fresh directory.
class ScratchDir : public testing::ScratchDir {
 public:
  ScratchDir() : testing::ScratchDir("helios_checkpoint") {}
};

ModelConfig tiny_config(bool tied) {
  ModelConfig c;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.vocab_size = 40;
  c.max_position_embeddings = 32;
  c.tie_word_embeddings = tied;
  c.exit_layers = {1, 2, 3, 4};
  return c;
}

// Independent of the loader: elements of one layer computed from the config.
int64_t layer_elements(const ModelConfig& c) {
  const int64_t h = c.hidden_size, i = c.intermediate_size;
  const int64_t q = c.num_attention_heads * c.head_dim();
  const int64_t kv = c.num_key_value_heads * c.head_dim();
  return 2 * h /* norms */ + 2 * q * h /* q, o */ + 2 * kv * h /* k, v */ + 3 * i * h /* mlp */;
}

using testing::expect_error;

void expect_weights_equal(const ModelWeights& a, const ModelWeights& b, bool tied,
                          double tolerance = 0) {
  const auto na = a.named_tensors(tied), nb = b.named_tensors(tied);
  ASSERT_EQ(na.size(), nb.size());
  for (size_t i = 0; i < na.size(); ++i) {
    SCOPED_TRACE(na[i].first);
    EXPECT_EQ(na[i].first, nb[i].first);
    const at::Tensor x = na[i].second.to(at::kFloat), y = nb[i].second.to(at::kFloat);
    if (tolerance == 0) {
      EXPECT_TRUE(at::equal(x, y));
    } else {
      EXPECT_TRUE(at::allclose(x, y, tolerance, 1e-6));
    }
  }
}

// Rewrites dir/model.safetensors from `tensors` (to plant a defect).
void rewrite(const fs::path& dir, std::vector<std::pair<std::string, at::Tensor>> tensors) {
  save_safetensors(dir / "model.safetensors", tensors, c10::kFloat);
}

TEST(CheckpointTest, SaveLoadRoundTripIsExact) {
  ScratchDir dir;
  const ModelConfig config = tiny_config(false);
  const ModelWeights weights = init_weights(config, 11);
  save_model(dir.path(), config, weights);
  EXPECT_TRUE(fs::exists(dir.path() / "config.json"));

  const LoadedModel loaded = load_model(dir.path());
  EXPECT_EQ(loaded.dir, dir.path());
  EXPECT_EQ(loaded.config.num_hidden_layers, 4);
  EXPECT_EQ(loaded.config.exit_layers, config.exit_layers);
  EXPECT_EQ(loaded.weights.loaded_layers(), 4);
  expect_weights_equal(loaded.weights, weights, false);
  const SafetensorsFile file(dir.path() / "model.safetensors");
  EXPECT_EQ(static_cast<uint64_t>(loaded.bytes_read), file.file_size() - file.data_offset());
}

TEST(CheckpointTest, InitWeightsIsSeededAndShaped) {
  const ModelConfig config = tiny_config(false);
  const ModelWeights a = init_weights(config, 5), b = init_weights(config, 5);
  const ModelWeights c = init_weights(config, 6);
  expect_weights_equal(a, b, false);
  EXPECT_FALSE(at::equal(a.embed_tokens, c.embed_tokens));
  EXPECT_TRUE(at::equal(a.layers[2].post_norm, at::ones({16})));
  EXPECT_TRUE(at::equal(a.final_norm, at::ones({16})));
  EXPECT_EQ(a.layers[0].k_proj.sizes(), (at::IntArrayRef{8, 16}));
  EXPECT_NEAR(a.layers[0].gate_proj.std().item<double>(), 0.02, 0.003);
  const int64_t embed = 40 * 16;
  EXPECT_EQ(a.resident_bytes(), 4 * (2 * embed + 16 + 4 * layer_elements(config)));
}

TEST(CheckpointTest, TiedEmbeddingsAreWrittenAndCountedOnce) {
  ScratchDir dir;
  const ModelConfig config = tiny_config(true);
  const ModelWeights weights = init_weights(config, 3);
  EXPECT_TRUE(weights.lm_head.is_same(weights.embed_tokens));
  const int64_t expected = 4 * (40 * 16 + 16 + 4 * layer_elements(config));
  EXPECT_EQ(weights.resident_bytes(), expected);
  save_model(dir.path(), config, weights);
  EXPECT_FALSE(SafetensorsFile(dir.path() / "model.safetensors").contains("lm_head.weight"));

  const LoadedModel loaded = load_model(dir.path());
  EXPECT_EQ(loaded.weights.lm_head.data_ptr(), loaded.weights.embed_tokens.data_ptr());
  EXPECT_EQ(loaded.weights.resident_bytes(), expected);
  expect_weights_equal(loaded.weights, weights, true);
}

TEST(CheckpointTest, Float16CheckpointLoadsAsFloat32) {
  ScratchDir dir;
  const ModelConfig config = tiny_config(false);
  const ModelWeights weights = init_weights(config, 4);
  save_model(dir.path(), config, weights, {.dtype = c10::kHalf});
  EXPECT_EQ(ModelConfig::from_file(dir.path() / "config.json").torch_dtype, "float16");
  const SafetensorsFile file(dir.path() / "model.safetensors");
  EXPECT_EQ(file.entry("model.layers.0.mlp.up_proj.weight").dtype, "F16");

  const LoadedModel loaded = load_model(dir.path());
  for (const auto& [name, tensor] : loaded.weights.named_tensors(false)) {
    EXPECT_EQ(tensor.scalar_type(), c10::kFloat) << name;
  }
  expect_weights_equal(loaded.weights, weights, false, 1e-3);
  EXPECT_EQ(loaded.weights.resident_bytes(), weights.resident_bytes());
  EXPECT_EQ(loaded.bytes_read * 2, weights.resident_bytes());  // read as F16, held as F32
}

TEST(CheckpointTest, BFloat16ResidentDtype) {
  ScratchDir dir;
  const ModelConfig config = tiny_config(false);
  const ModelWeights weights = init_weights(config, 4);
  save_model(dir.path(), config, weights, {.dtype = c10::kBFloat16});
  const LoadedModel loaded = load_model(dir.path(), {.dtype = c10::kBFloat16});
  EXPECT_EQ(loaded.weights.layers[3].down_proj.scalar_type(), c10::kBFloat16);
  EXPECT_EQ(loaded.weights.resident_bytes() * 2, weights.resident_bytes());
  expect_weights_equal(loaded.weights, weights, false, 8e-3);
}

TEST(CheckpointTest, ShardedSaveLoadEqualsSingleFile) {
  ScratchDir single, sharded;
  const ModelConfig config = tiny_config(false);
  const ModelWeights weights = init_weights(config, 9);
  const int64_t layer_bytes = 4 * layer_elements(config);
  save_model(single.path(), config, weights);
  save_model(sharded.path(), config, weights, {.max_shard_bytes = layer_bytes});

  EXPECT_FALSE(fs::exists(sharded.path() / "model.safetensors"));
  std::ifstream in(sharded.path() / "model.safetensors.index.json");
  const json index = json::parse(in);
  std::set<std::string> shards;
  for (const auto& [name, shard] : index["weight_map"].items()) shards.insert(shard);
  EXPECT_GT(shards.size(), 3u);
  int64_t on_disk = 0;
  for (const std::string& shard : shards) {
    EXPECT_TRUE(fs::exists(sharded.path() / shard)) << shard;
    const SafetensorsFile file(sharded.path() / shard);
    on_disk += file.file_size() - file.data_offset();
    EXPECT_LE(file.file_size() - file.data_offset(), static_cast<uint64_t>(layer_bytes));
  }
  EXPECT_EQ(index["metadata"]["total_size"].get<int64_t>(), on_disk);
  EXPECT_EQ(on_disk, weights.resident_bytes());

  const LoadedModel a = load_model(single.path()), b = load_model(sharded.path());
  expect_weights_equal(a.weights, b.weights, false);
  expect_weights_equal(b.weights, weights, false);
  EXPECT_EQ(a.bytes_read, b.bytes_read);

  // Saving single-file over a sharded directory leaves no stale index or shard behind.
  save_model(sharded.path(), config, weights);
  EXPECT_FALSE(fs::exists(sharded.path() / "model.safetensors.index.json"));
  for (const std::string& shard : shards) EXPECT_FALSE(fs::exists(sharded.path() / shard));
  expect_weights_equal(load_model(sharded.path()).weights, weights, false);
}

TEST(CheckpointTest, ShallowLoadHoldsExactlyThePrefixLayers) {
  ScratchDir dir;
  const ModelConfig config = tiny_config(false);
  const ModelWeights weights = init_weights(config, 2);
  save_model(dir.path(), config, weights);
  const int64_t embed_bytes = 4 * 40 * 16, norm_bytes = 4 * 16, head_bytes = 4 * 40 * 16;
  const int64_t layer_bytes = 4 * layer_elements(config);
  int64_t previous = 0;
  for (int64_t depth = 1; depth <= 4; ++depth) {
    SCOPED_TRACE(depth);
    const LoadedModel loaded = load_model(dir.path(), {.max_layers = depth});
    EXPECT_EQ(loaded.config.num_hidden_layers, 4);  // the config still describes the model
    EXPECT_EQ(loaded.weights.loaded_layers(), depth);
    for (const auto& [name, tensor] : loaded.weights.named_tensors(false)) {
      for (int64_t deeper = depth; deeper < 4; ++deeper) {
        EXPECT_EQ(name.find("model.layers." + std::to_string(deeper) + "."), std::string::npos);
      }
    }
    const int64_t expected = embed_bytes + norm_bytes + head_bytes + depth * layer_bytes;
    EXPECT_EQ(loaded.weights.resident_bytes(), expected);
    EXPECT_EQ(loaded.bytes_read, expected);  // nothing beyond what is resident was read
    if (depth > 1) EXPECT_EQ(loaded.weights.resident_bytes() - previous, layer_bytes);
    previous = loaded.weights.resident_bytes();
    for (int64_t l = 0; l < depth; ++l) {
      EXPECT_TRUE(at::equal(loaded.weights.layers[l].o_proj, weights.layers[l].o_proj));
    }
  }
  EXPECT_EQ(load_model(dir.path(), {.max_layers = 99}).weights.loaded_layers(), 4);
  expect_error([&] { load_model(dir.path(), {.max_layers = -1}); }, ErrorCode::kInvalidArgument,
               {"max_layers"});
}

TEST(CheckpointTest, DeeperLayersCorruptedInPlaceAreNeverRead) {
  ScratchDir dir;
  const ModelConfig config = tiny_config(false);
  const ModelWeights weights = init_weights(config, 8);
  save_model(dir.path(), config, weights);
  const fs::path path = dir.path() / "model.safetensors";
  {
    // Overwrite every byte of layers 2 and 3 with 0xFF (NaN as F32).
    const SafetensorsFile file(path);
    std::fstream io(path, std::ios::binary | std::ios::in | std::ios::out);
    for (const std::string& name : file.names()) {
      if (name.rfind("model.layers.2.", 0) != 0 && name.rfind("model.layers.3.", 0) != 0) continue;
      const SafetensorsEntry& e = file.entry(name);
      io.seekp(static_cast<std::streamoff>(file.data_offset() + e.begin));
      const std::string garbage(e.nbytes(), '\xff');
      io.write(garbage.data(), static_cast<std::streamsize>(garbage.size()));
    }
  }
  const LoadedModel loaded = load_model(dir.path(), {.max_layers = 2});
  EXPECT_EQ(loaded.weights.loaded_layers(), 2);
  for (const auto& [name, tensor] : loaded.weights.named_tensors(false)) {
    EXPECT_TRUE(at::isfinite(tensor).all().item<bool>()) << name;
  }
  EXPECT_EQ(loaded.bytes_read, loaded.weights.resident_bytes());
  // The full depth does read them: the corruption is real.
  const LoadedModel full = load_model(dir.path());
  EXPECT_TRUE(at::isnan(full.weights.layers[3].q_proj).all().item<bool>());
}

TEST(CheckpointTest, ShardsOfDeeperLayersAreNeverOpened) {
  ScratchDir dir;
  const ModelConfig config = tiny_config(false);
  const ModelWeights weights = init_weights(config, 12);
  save_model(dir.path(), config, weights, {.max_shard_bytes = 4 * layer_elements(config)});
  std::ifstream in(dir.path() / "model.safetensors.index.json");
  const json index = json::parse(in);
  std::set<std::string> needed, all;
  for (const auto& [name, shard] : index["weight_map"].items()) {
    all.insert(shard);
    if (name.rfind("model.layers.", 0) != 0 || name.rfind("model.layers.0.", 0) == 0) {
      needed.insert(shard.get<std::string>());
    }
  }
  int replaced = 0;
  for (const std::string& shard : all) {
    if (needed.count(shard) != 0) continue;
    std::ofstream(dir.path() / shard, std::ios::trunc) << "not a safetensors file";
    ++replaced;
  }
  ASSERT_GE(replaced, 1);
  const LoadedModel loaded = load_model(dir.path(), {.max_layers = 1});
  EXPECT_EQ(loaded.weights.loaded_layers(), 1);
  EXPECT_TRUE(at::equal(loaded.weights.layers[0].up_proj, weights.layers[0].up_proj));
  expect_error([&] { load_model(dir.path()); }, ErrorCode::kDataLoss, {"model-0000"});
}

TEST(CheckpointTest, MissingTensorNamesTensorAndFile) {
  ScratchDir dir;
  const ModelConfig config = tiny_config(false);
  const ModelWeights weights = init_weights(config, 1);
  save_model(dir.path(), config, weights);
  auto tensors = weights.named_tensors(false);
  std::erase_if(tensors,
                [](const auto& t) { return t.first == "model.layers.1.mlp.up_proj.weight"; });
  rewrite(dir.path(), tensors);
  expect_error(
      [&] { load_model(dir.path()); }, ErrorCode::kNotFound,
      {"\"model.layers.1.mlp.up_proj.weight\"", (dir.path() / "model.safetensors").string()});
  // The missing tensor lies deeper than a one-layer load.
  EXPECT_EQ(load_model(dir.path(), {.max_layers = 1}).weights.loaded_layers(), 1);
}

TEST(CheckpointTest, UntiedModelWithoutHeadIsAnError) {
  ScratchDir dir;
  const ModelConfig config = tiny_config(false);
  const ModelWeights weights = init_weights(config, 1);
  save_model(dir.path(), config, weights);
  rewrite(dir.path(), weights.named_tensors(true));  // everything but lm_head.weight
  expect_error([&] { load_model(dir.path()); }, ErrorCode::kNotFound,
               {"\"lm_head.weight\"", "model.safetensors"});
}

TEST(CheckpointTest, MisshapenTensorNamesShapes) {
  ScratchDir dir;
  const ModelConfig config = tiny_config(false);
  const ModelWeights weights = init_weights(config, 1);
  save_model(dir.path(), config, weights);
  auto tensors = weights.named_tensors(false);
  for (auto& [name, tensor] : tensors) {
    if (name == "model.layers.0.self_attn.k_proj.weight") tensor = at::zeros({16, 16});
  }
  rewrite(dir.path(), tensors);
  expect_error([&] { load_model(dir.path()); }, ErrorCode::kDataLoss,
               {"\"model.layers.0.self_attn.k_proj.weight\"", "[16, 16]", "expected [8, 16]",
                "model.safetensors"});
}

TEST(CheckpointTest, ShardedIndexDefects) {
  ScratchDir dir;
  const ModelConfig config = tiny_config(false);
  const ModelWeights weights = init_weights(config, 1);
  save_model(dir.path(), config, weights, {.max_shard_bytes = 8192});
  const fs::path index_path = dir.path() / "model.safetensors.index.json";
  std::ifstream in(index_path);
  json index = json::parse(in);
  in.close();

  json missing = index;
  missing["weight_map"].erase("model.norm.weight");
  std::ofstream(index_path, std::ios::trunc) << missing.dump();
  expect_error([&] { load_model(dir.path()); }, ErrorCode::kNotFound,
               {"\"model.norm.weight\"", index_path.string(), "model-00001-of-"});

  json escaping = index;
  escaping["weight_map"]["model.norm.weight"] = "../elsewhere.safetensors";
  std::ofstream(index_path, std::ios::trunc) << escaping.dump();
  expect_error([&] { load_model(dir.path()); }, ErrorCode::kDataLoss, {"\"model.norm.weight\""});

  std::ofstream(index_path, std::ios::trunc) << index.dump();
  const std::string shard = index["weight_map"]["lm_head.weight"];
  fs::remove(dir.path() / shard);
  expect_error([&] { load_model(dir.path()); }, ErrorCode::kNotFound, {shard, "does not exist"});

  std::ofstream(index_path, std::ios::trunc) << "{\"weight_map\": ";
  expect_error([&] { load_model(dir.path()); }, ErrorCode::kDataLoss, {index_path.string()});

  // A shard name nested 200000 levels deep: refused while parsing, never dumped whole.
  std::ofstream(index_path, std::ios::trunc)
      << R"({"weight_map": {"model.norm.weight": )" << std::string(200000, '[')
      << std::string(200000, ']') << "}}";
  expect_error([&] { load_model(dir.path()); }, ErrorCode::kInvalidArgument,
               {index_path.string(), "64 levels"});

  // Nested within the limit: the message shows an excerpt.
  std::ofstream(index_path, std::ios::trunc)
      << R"({"weight_map": {"model.norm.weight": [["a.safetensors"]]}})";
  expect_error([&] { load_model(dir.path()); }, ErrorCode::kDataLoss,
               {"\"model.norm.weight\"", "shard [[... 1 items]] is not a file name"});
}

TEST(CheckpointTest, WeightMapParsesFromText) {
  const auto map = parse_weight_map(
      R"({"metadata": {}, "weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}})",
      "index.json");
  EXPECT_EQ(map.at("a"), "model-1.safetensors");
  EXPECT_EQ(map.at("b"), "model-2.safetensors");
  expect_error([] { parse_weight_map(R"({"weight_map": {"a": "../x"}})", "index.json"); },
               ErrorCode::kDataLoss, {"index.json", "\"a\""});
}

TEST(CheckpointTest, MissingFilesAreNotFound) {
  ScratchDir dir;
  expect_error([&] { load_model(dir.path() / "absent"); }, ErrorCode::kNotFound, {"absent"});
  expect_error([&] { load_model(dir.path()); }, ErrorCode::kNotFound, {"config.json"});
  tiny_config(false).save(dir.path() / "config.json");
  expect_error([&] { load_model(dir.path()); }, ErrorCode::kNotFound,
               {"model.safetensors", dir.path().string()});
}

TEST(CheckpointTest, PlainHuggingFaceCheckpointLoadsUnchanged) {
  // As a LayerSkip / stock HF export looks: HF config keys only, BF16, tensors in the
  // alphabetical order HF writes, plus a buffer helios does not use.
  ScratchDir dir;
  ModelConfig config = tiny_config(true);
  const ModelWeights weights = init_weights(config, 21);
  json hf = config.to_json();
  hf.erase("early_exit");
  hf["torch_dtype"] = "bfloat16";
  hf["transformers_version"] = "4.44.0";
  hf["pretraining_tp"] = 1;
  std::ofstream(dir.path() / "config.json") << hf.dump(2);
  auto tensors = weights.named_tensors(true);
  tensors.emplace_back("model.layers.0.self_attn.rotary_emb.inv_freq", at::ones({2}));
  std::sort(tensors.begin(), tensors.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  save_safetensors(dir.path() / "model.safetensors", tensors, c10::kBFloat16);

  const LoadedModel loaded = load_model(dir.path());
  EXPECT_EQ(loaded.config.exit_layers, (std::vector<int>{1, 2, 3, 4}));
  EXPECT_EQ(loaded.weights.loaded_layers(), 4);
  EXPECT_EQ(loaded.weights.embed_tokens.scalar_type(), c10::kFloat);
  expect_weights_equal(loaded.weights, weights, true, 8e-3);
}

TEST(CheckpointTest, SaveRejectsWeightsThatDisagreeWithConfig) {
  ScratchDir dir;
  const ModelConfig config = tiny_config(false);
  ModelWeights weights = init_weights(config, 1);
  ModelWeights shallow = weights;
  shallow.layers.pop_back();
  expect_error([&] { save_model(dir.path(), config, shallow); }, ErrorCode::kInvalidArgument,
               {"layers"});
  weights.layers[1].v_proj = at::zeros({16, 16});
  expect_error([&] { save_model(dir.path(), config, weights); }, ErrorCode::kInvalidArgument,
               {"\"model.layers.1.self_attn.v_proj.weight\"", "expected [8, 16]"});
  EXPECT_FALSE(fs::exists(dir.path() / "model.safetensors"));
}

}  // namespace
}  // namespace helios::model
