#include "helios/tokenizer/byte_tokenizer.h"

#include <gtest/gtest.h>

#include "helios/common/error.h"
#include "helios/tokenizer/tokenizer.h"

namespace helios::tokenizer {
namespace {

model::ModelConfig byte_config(int64_t vocab = 260) {
  model::ModelConfig config;
  config.tokenizer = model::TokenizerKind::kByte;
  config.vocab_size = vocab;
  config.bos_token_id = 256;
  config.eos_token_id = 257;
  return config;
}

TEST(ByteTokenizer, IdsAreBytes) {
  const ByteTokenizer tokenizer(byte_config());
  EXPECT_EQ(tokenizer.encode("Az\n"), (std::vector<int32_t>{65, 122, 10}));
  EXPECT_EQ(tokenizer.encode("\xc3\xa9"), (std::vector<int32_t>{0xC3, 0xA9}));
  EXPECT_TRUE(tokenizer.encode("").empty());
  EXPECT_EQ(tokenizer.vocab_size(), 260);
  EXPECT_EQ(tokenizer.bos_id(), 256);
  EXPECT_EQ(tokenizer.eos_id(), 257);
}

TEST(ByteTokenizer, RoundTripsAnyBytes) {
  const ByteTokenizer tokenizer(byte_config());
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  for (const std::string text :
       {std::string("\xff\xfe"), std::string("\x80\x80x\xbf"), std::string("ab\xe4\xb8"),
        std::string("caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\xa6\x8a"),
        std::string("nul\0inside", 10), all}) {
    EXPECT_EQ(tokenizer.decode(tokenizer.encode(text)), text);
  }
}

TEST(ByteTokenizer, SpecialsDecodeToNothing) {
  const ByteTokenizer tokenizer(byte_config());
  const std::vector<int32_t> ids = {256, 'h', 'i', 259, 257};
  EXPECT_EQ(tokenizer.decode(ids), "hi");
}

TEST(ByteTokenizer, RejectsOutOfRangeIds) {
  const ByteTokenizer tokenizer(byte_config());
  for (const int32_t id : {-1, 260, 100000}) {
    const std::vector<int32_t> ids = {id};
    try {
      tokenizer.decode(ids);
      ADD_FAILURE() << "no error for id " << id;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kOutOfRange);
      EXPECT_NE(std::string(e.what()).find(std::to_string(id)), std::string::npos);
    }
  }
}

TEST(ByteTokenizer, ValidatesConfig) {
  const auto expect_field = [](const model::ModelConfig& config, const std::string& field) {
    try {
      ByteTokenizer tokenizer(config);
      ADD_FAILURE() << "no error for " << field;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
  };
  expect_field(byte_config(255), "vocab_size");
  auto config = byte_config();
  config.bos_token_id = 260;
  expect_field(config, "bos_token_id");
  config = byte_config();
  config.eos_token_id = -3;
  expect_field(config, "eos_token_id");
}

TEST(ByteTokenizer, LoadTokenizerPicksIt) {
  // kByte never reads the directory, so a missing one is fine.
  const auto tokenizer = load_tokenizer("/nonexistent/model", byte_config(300));
  ASSERT_NE(dynamic_cast<const ByteTokenizer*>(tokenizer.get()), nullptr);
  EXPECT_EQ(tokenizer->vocab_size(), 300);
}

}  // namespace
}  // namespace helios::tokenizer
