#include "helios/model/config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/scratch_dir.h"
#include "helios/common/error.h"

namespace helios::model {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Each test's files live in a fresh directory.
class ScratchDir : public testing::ScratchDir {
 public:
  ScratchDir() : testing::ScratchDir("helios_config") {}
};

// A trimmed real-world HF Llama config: many keys helios ignores, no num_key_value_heads.
json hf_config() {
  return json::parse(R"({
    "_name_or_path": "meta-llama/Llama-2-7b-hf",
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": false,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 176,
    "max_position_embeddings": 4096,
    "model_type": "llama",
    "num_attention_heads": 8,
    "num_hidden_layers": 6,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": null,
    "rope_theta": 10000.0,
    "tie_word_embeddings": false,
    "torch_dtype": "float16",
    "transformers_version": "4.31.0.dev0",
    "use_cache": true,
    "vocab_size": 320
  })");
}

void expect_same(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.architecture, b.architecture);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_DOUBLE_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_DOUBLE_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_id, b.eos_token_id);
  EXPECT_EQ(a.torch_dtype, b.torch_dtype);
  EXPECT_EQ(a.exit_layers, b.exit_layers);
  EXPECT_EQ(a.tokenizer, b.tokenizer);
}

TEST(ModelConfigTest, ParsesHuggingFaceConfigWithDefaults) {
  const ModelConfig c = ModelConfig::from_json(hf_config());
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 176);
  EXPECT_EQ(c.num_hidden_layers, 6);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.num_key_value_heads, 8);  // absent: HF falls back to num_attention_heads
  EXPECT_EQ(c.vocab_size, 320);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_id, 2);
  EXPECT_EQ(c.torch_dtype, "float16");
  EXPECT_EQ(c.head_dim(), 8);
  EXPECT_EQ(c.exit_layers, (std::vector<int>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(c.tokenizer, TokenizerKind::kHuggingFace);
}

TEST(ModelConfigTest, ParsesHeliosKeysAndEosList) {
  json j = hf_config();
  j["num_key_value_heads"] = 2;
  j["early_exit"] = {{"exit_layers", {2, 4, 6}}};
  j["tokenizer"] = {{"type", "byte"}};
  j["eos_token_id"] = {257, 300};
  j["bos_token_id"] = 256;
  const ModelConfig c = ModelConfig::from_json(j);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.exit_layers, (std::vector<int>{2, 4, 6}));
  EXPECT_EQ(c.tokenizer, TokenizerKind::kByte);
  EXPECT_EQ(c.eos_token_id, 257);
  EXPECT_EQ(c.bos_token_id, 256);
}

TEST(ModelConfigTest, JsonAndFileRoundTrip) {
  json j = hf_config();
  j["num_key_value_heads"] = 4;
  j["tie_word_embeddings"] = true;
  j["rope_theta"] = 500000.0;
  j["early_exit"] = {{"exit_layers", {1, 3}}};
  j["tokenizer"] = {{"type", "byte"}};
  const ModelConfig original = ModelConfig::from_json(j);

  const json written = original.to_json();
  EXPECT_EQ(written["architectures"], json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(written["model_type"], "llama");
  EXPECT_EQ(written["early_exit"]["exit_layers"], json::array({1, 3}));
  EXPECT_EQ(written["tokenizer"]["type"], "byte");
  expect_same(ModelConfig::from_json(written), original);

  ScratchDir dir;
  original.save(dir.path() / "config.json");
  expect_same(ModelConfig::from_file(dir.path() / "config.json"), original);
}

TEST(ModelConfigTest, DefaultsStayImplicitWhenSaved) {
  const ModelConfig c = ModelConfig::from_json(hf_config());
  const json written = c.to_json();
  EXPECT_FALSE(written.contains("early_exit"));
  EXPECT_FALSE(written.contains("tokenizer"));
  expect_same(ModelConfig::from_json(written), c);
}

TEST(ModelConfigTest, EmptyExitListRoundTrips) {
  ModelConfig c = ModelConfig::from_json(hf_config());
  c.exit_layers.clear();
  c.validate();
  expect_same(ModelConfig::from_json(c.to_json()), c);
}

struct InvalidCase {
  std::string field;  // must appear in the message
  json patch;         // merged into the HF config; null removes the key
};

TEST(ModelConfigTest, EachInvalidFieldIsNamed) {
  const std::vector<InvalidCase> cases = {
      {"hidden_size", {{"hidden_size", nullptr}}},
      {"hidden_size", {{"hidden_size", 0}}},
      {"hidden_size", {{"hidden_size", -64}}},
      {"hidden_size", {{"hidden_size", "64"}}},
      {"hidden_size", {{"hidden_size", 64.5}}},
      {"intermediate_size", {{"intermediate_size", 0}}},
      {"intermediate_size", {{"intermediate_size", nullptr}}},
      {"num_hidden_layers", {{"num_hidden_layers", true}}},
      {"num_hidden_layers", {{"num_hidden_layers", nullptr}}},
      {"num_attention_heads", {{"num_attention_heads", 0}}},
      {"num_attention_heads", {{"num_attention_heads", 7}}},   // 64 % 7 != 0
      {"num_attention_heads", {{"num_attention_heads", 64}}},  // head_dim 1 is odd
      {"num_key_value_heads", {{"num_key_value_heads", 3}}},   // 8 % 3 != 0
      {"num_key_value_heads", {{"num_key_value_heads", -1}}},
      {"vocab_size", {{"vocab_size", 0}}},
      {"vocab_size", {{"vocab_size", nullptr}}},
      {"max_position_embeddings", {{"max_position_embeddings", 0}}},
      {"rms_norm_eps", {{"rms_norm_eps", 0.0}}},
      {"rms_norm_eps", {{"rms_norm_eps", "small"}}},
      {"rope_theta", {{"rope_theta", -1.0}}},
      {"tie_word_embeddings", {{"tie_word_embeddings", "yes"}}},
      {"bos_token_id", {{"bos_token_id", -1}}},
      {"bos_token_id", {{"bos_token_id", 320}}},
      {"eos_token_id", {{"eos_token_id", json::array()}}},
      {"eos_token_id", {{"eos_token_id", 1000}}},
      {"torch_dtype", {{"torch_dtype", 16}}},
      {"torch_dtype", {{"torch_dtype", "int8"}}},
      {"architectures", {{"architectures", {"GPT2LMHeadModel"}}}},
      {"architectures", {{"architectures", "LlamaForCausalLM"}}},
      {"model_type", {{"model_type", "gpt2"}}},
      {"hidden_act", {{"hidden_act", "gelu"}}},
      {"attention_bias", {{"attention_bias", true}}},
      {"rope_scaling", {{"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}}}}},
      {"head_dim", {{"head_dim", 16}}},
      {"early_exit", {{"early_exit", {1, 2}}}},
      {"exit_layers", {{"early_exit", {{"layers", {1}}}}}},
      {"exit_layers", {{"early_exit", {{"exit_layers", {0, 2}}}}}},
      {"exit_layers", {{"early_exit", {{"exit_layers", {2, 7}}}}}},
      {"exit_layers", {{"early_exit", {{"exit_layers", {3, 3}}}}}},
      {"exit_layers", {{"early_exit", {{"exit_layers", {4, 2}}}}}},
      {"exit_layers", {{"early_exit", {{"exit_layers", {"1"}}}}}},
      {"tokenizer", {{"tokenizer", "byte"}}},
      {"tokenizer", {{"tokenizer", {{"type", "sentencepiece"}}}}},
      {"vocab_size",
       {{"tokenizer", {{"type", "byte"}}},
        {"vocab_size", 100},
        {"bos_token_id", 1},
        {"eos_token_id", 2}}},
  };
  for (const InvalidCase& c : cases) {
    json j = hf_config();
    for (const auto& [key, value] : c.patch.items()) {
      if (value.is_null()) {
        j.erase(key);
      } else {
        j[key] = value;
      }
    }
    SCOPED_TRACE(c.patch.dump());
    try {
      ModelConfig::from_json(j);
      ADD_FAILURE() << "accepted an invalid config";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(c.field), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
    }
  }
}

TEST(ModelConfigTest, NonObjectRootIsRejected) {
  try {
    ModelConfig::from_json(json::array({1, 2}));
    FAIL() << "accepted an array";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
  }
}

TEST(ModelConfigTest, ValidateNamesFieldOfProgrammaticConfig) {
  ModelConfig c = ModelConfig::from_json(hf_config());
  c.exit_layers = {1, 9};
  try {
    c.validate();
    FAIL() << "accepted exit layer 9 of 6";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("exit_layers"), std::string::npos) << e.what();
  }
  ScratchDir dir;
  EXPECT_THROW(c.save(dir.path() / "config.json"), Error);
}

TEST(ModelConfigTest, MissingFileIsNotFound) {
  ScratchDir dir;
  const fs::path path = dir.path() / "config.json";
  try {
    ModelConfig::from_file(path);
    FAIL() << "read a missing file";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound);
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
  }
}

TEST(ModelConfigTest, UnparsableJsonIsDataLossNamingFile) {
  ScratchDir dir;
  const fs::path path = dir.path() / "config.json";
  std::ofstream(path) << "{\"hidden_size\": 64, // a comment\n}";
  try {
    ModelConfig::from_file(path);
    FAIL() << "parsed invalid JSON";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kDataLoss);
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("parse"), std::string::npos) << e.what();
  }
}

TEST(ModelConfigTest, FieldErrorsFromFileNameThePath) {
  ScratchDir dir;
  const fs::path path = dir.path() / "config.json";
  json j = hf_config();
  j["vocab_size"] = -5;
  std::ofstream(path) << j.dump();
  try {
    ModelConfig::from_file(path);
    FAIL() << "accepted a negative vocab_size";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("\"vocab_size\""), std::string::npos) << e.what();
  }
}

// Sizes are bounded as they are read, before the exit list or any table is sized from them.
TEST(ModelConfigTest, SizesPastTheirBoundsAreRefusedNamingTheField) {
  struct Case {
    std::string field;
    std::string patch;  // JSON members replacing hf_config()'s
    std::string needle;
  };
  const std::vector<Case> cases = {
      {"num_hidden_layers", R"("num_hidden_layers": 4000000000)", "at most 1024"},
      {"num_hidden_layers", R"("num_hidden_layers": 18446744073709551615)",
       "got 18446744073709551615"},
      {"max_position_embeddings", R"("max_position_embeddings": 400000000)", "at most 1048576"},
      {"hidden_size", R"("hidden_size": 131072)", "at most 65536"},
      {"intermediate_size", R"("intermediate_size": 1000000)", "at most 262144"},
      {"num_attention_heads", R"("num_attention_heads": 2048)", "at most 1024"},
      {"num_key_value_heads", R"("num_key_value_heads": 4096)", "at most 1024"},
      {"vocab_size", R"("vocab_size": 8388608)", "at most 4194304"},
      // Each within its bound, but the RoPE tables they ask for (2^20 x 65536) are not.
      {"max_position_embeddings",
       R"("hidden_size": 65536, "num_attention_heads": 1, "max_position_embeddings": 1048576)",
       "rotary"},
      {"bos_token_id", R"("bos_token_id": 18446744073709551615)", "18446744073709551615"},
      {"head_dim", R"("head_dim": 9223372036854775807)", "head_dim"},
      {"head_dim", R"("head_dim": 18446744073709551615)", "head_dim"},
      {"exit_layers", R"("early_exit": {"exit_layers": [1, 2, 3, 4, 5, 6, 7]})",
       "more than num_hidden_layers = 6"},
      {"exit_layers", R"("early_exit": {"exit_layers": [18446744073709551615]})", "exit_layers"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.patch);
    const json patch = json::parse("{" + c.patch + "}");
    json j = hf_config();
    for (const auto& [key, value] : patch.items()) j[key] = value;
    try {
      ModelConfig::parse(j.dump(), "bounds/config.json");
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(c.field), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(c.needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("bounds/config.json"), std::string::npos) << e.what();
    }
  }
  // A programmatic config gets the same bounds from validate().
  ModelConfig c = ModelConfig::from_json(hf_config());
  c.num_hidden_layers = int64_t{4} << 30;
  EXPECT_THROW(c.validate(), Error);
}

TEST(ModelConfigTest, DeeplyNestedConfigIsRefusedNamingFileAndLimit) {
  ScratchDir dir;
  const fs::path path = dir.path() / "config.json";
  std::string text = hf_config().dump();
  text.insert(1, R"("notes": )" + std::string(200000, '[') + std::string(200000, ']') + ",");
  std::ofstream(path) << text;
  try {
    ModelConfig::from_file(path);
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("64 levels"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace helios::model
