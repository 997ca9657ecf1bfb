#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "helios/model/config.h"

namespace helios::tokenizer::testing {

inline std::filesystem::path data_dir() {
  return std::filesystem::path(HELIOS_TEST_DATA_DIR) / "tokenizer";
}

inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

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

// A fresh empty directory under the system temp dir, unique to this process and `name`.
inline std::filesystem::path temp_dir(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("helios_tokenizer_" + std::to_string(::getpid()) + "_" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace helios::tokenizer::testing
