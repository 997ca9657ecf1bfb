#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "common/scratch_dir.h"
#include "helios/common/files.h"
#include "helios/model/config.h"

namespace helios::tokenizer::testing {

inline std::filesystem::path data_dir() {
  return std::filesystem::path(HELIOS_TEST_DATA_DIR) / "tokenizer";
}

using helios::read_file;

// The fixture: train_bpe on corpus.txt, 300 tokens, "<s>" = 0 and "</s>" = 1, bytes 2-257.
inline std::filesystem::path fixture_path() {
  return data_dir() / "tiny_bpe.json";
}
constexpr int64_t kFixtureVocab = 300;
constexpr int64_t kFixtureSpecials = 2;

inline nlohmann::json fixture_json() {
  return nlohmann::json::parse(read_file(fixture_path()));
}

inline model::ModelConfig fixture_config() {
  model::ModelConfig config;
  config.vocab_size = kFixtureVocab;
  config.bos_token_id = 0;
  config.eos_token_id = 1;
  return config;
}

// A fresh directory for one test's files, removed when it goes out of scope.
class ScratchDir : public helios::testing::ScratchDir {
 public:
  ScratchDir() : helios::testing::ScratchDir("helios_tokenizer") {}
};

}  // namespace helios::tokenizer::testing
