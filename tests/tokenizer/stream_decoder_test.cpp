#include "helios/tokenizer/stream_decoder.h"

#include <gtest/gtest.h>

#include "helios/tokenizer/bpe_tokenizer.h"
#include "helios/tokenizer/byte_level.h"
#include "helios/tokenizer/byte_tokenizer.h"
#include "tokenizer/test_util.h"

namespace helios::tokenizer {
namespace {

ByteTokenizer byte_tokenizer() {
  return ByteTokenizer(260, 256, 257);
}

// Feeds `ids` one at a time; returns each push's output, then finish()'s.
std::vector<std::string> stream(const Tokenizer& tokenizer, const std::vector<int32_t>& ids) {
  StreamDecoder decoder(tokenizer);
  std::vector<std::string> out;
  for (const int32_t id : ids) out.push_back(decoder.push(id));
  out.push_back(decoder.finish());
  return out;
}

using Outputs = std::vector<std::string>;

TEST(StreamDecoder, HoldsBackASplitCharacter) {
  const auto tokenizer = byte_tokenizer();
  // "a中b": 中 is E4 B8 AD, one byte per token here.
  EXPECT_EQ(stream(tokenizer, {'a', 0xE4, 0xB8, 0xAD, 'b'}),
            (Outputs{"a", "", "", "\xe4\xb8\xad", "b", ""}));
  // 🦊 is F0 9F A6 8A.
  EXPECT_EQ(stream(tokenizer, {0xF0, 0x9F, 0xA6, 0x8A}),
            (Outputs{"", "", "", "\xf0\x9f\xa6\x8a", ""}));
  // Specials produce nothing and do not disturb a pending character.
  EXPECT_EQ(stream(tokenizer, {256, 0xC3, 257, 0xA9}), (Outputs{"", "", "", "\xc3\xa9", ""}));
}

// Ill-formed bytes pass through unchanged (no U+FFFD), as soon as they cannot become valid.
TEST(StreamDecoder, PassesInvalidBytesThrough) {
  const auto tokenizer = byte_tokenizer();
  EXPECT_EQ(stream(tokenizer, {0xFF, 'x'}), (Outputs{"\xff", "x", ""}));
  EXPECT_EQ(stream(tokenizer, {0x80, 0x80}), (Outputs{"\x80", "\x80", ""}));
  // A lead byte followed by a non-continuation: both are released together.
  EXPECT_EQ(stream(tokenizer, {0xE4, 'x'}), (Outputs{"", "\xe4x", ""}));
  // A truncated sequence at the end comes out of finish().
  EXPECT_EQ(stream(tokenizer, {'a', 0xE4, 0xB8}), (Outputs{"a", "", "", "\xe4\xb8"}));
}

TEST(StreamDecoder, ConcatenationEqualsDecode) {
  const auto tokenizer =
      BpeTokenizer::from_file(testing::fixture_path(), testing::fixture_config());
  const std::string text =
      "Caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\xa6\x8a the fox \xff\xfe end \xe4\xb8";
  const std::vector<int32_t> ids = tokenizer->encode(text);
  std::string joined;
  StreamDecoder decoder(*tokenizer);
  size_t max_pending = 0;
  for (const int32_t id : ids) {
    joined += decoder.push(id);
    max_pending = std::max(max_pending, decoder.pending_bytes());
  }
  EXPECT_EQ(decoder.pending_bytes(), 2u);  // the truncated "\xe4\xb8" at the end
  joined += decoder.finish();
  EXPECT_EQ(joined, text);
  EXPECT_GT(max_pending, 0u);  // the fixture has no multi-byte merges: characters do split
  EXPECT_EQ(decoder.pending_bytes(), 0u);
}

TEST(StreamDecoder, TokenEndingMidCharacter) {
  // With byte-level BPE one token can finish a character and start the next: add a token for
  // the bytes A9 E4 (the end of é = C3 A9 and the start of 中 = E4 B8 AD).
  nlohmann::json json = testing::fixture_json();
  json["model"]["vocab"][byte_level_encode("\xa9\xe4")] = 300;
  auto config = testing::fixture_config();
  config.vocab_size = 301;
  const auto tokenizer = BpeTokenizer::from_json(json, config, "split");
  EXPECT_EQ(stream(*tokenizer, {2 + 0xC3, 300, 2 + 0xB8, 2 + 0xAD}),
            (Outputs{"", "\xc3\xa9", "", "\xe4\xb8\xad", ""}));
}

TEST(StreamDecoder, FinishResets) {
  const auto tokenizer = byte_tokenizer();
  StreamDecoder decoder(tokenizer);
  EXPECT_EQ(decoder.push(0xE4), "");
  EXPECT_EQ(decoder.finish(), "\xe4");
  EXPECT_EQ(decoder.push('z'), "z");
  EXPECT_EQ(decoder.finish(), "");
}

}  // namespace
}  // namespace helios::tokenizer
