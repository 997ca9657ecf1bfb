#include "helios/tokenizer/utf8.h"

#include <gtest/gtest.h>

#include "helios/tokenizer/byte_level.h"

namespace helios::tokenizer {
namespace {

TEST(Utf8, SequenceLength) {
  EXPECT_EQ(utf8_sequence_length("a", 0), 1u);
  EXPECT_EQ(utf8_sequence_length("\xc3\xa9", 0), 2u);          // é
  EXPECT_EQ(utf8_sequence_length("\xe4\xb8\xad", 0), 3u);      // 中
  EXPECT_EQ(utf8_sequence_length("\xf0\x9f\xa6\x8a", 0), 4u);  // 🦊
  EXPECT_EQ(utf8_sequence_length("\x80", 0), 0u);              // lone continuation
  EXPECT_EQ(utf8_sequence_length("\xe4\xb8", 0), 0u);          // truncated
  EXPECT_EQ(utf8_sequence_length("\xc0\xaf", 0), 0u);          // overlong '/'
  EXPECT_EQ(utf8_sequence_length("\xed\xa0\x80", 0), 0u);      // surrogate D800
  EXPECT_EQ(utf8_sequence_length("\xf4\x90\x80\x80", 0), 0u);  // above U+10FFFF
  EXPECT_EQ(utf8_sequence_length("\xff", 0), 0u);
}

TEST(Utf8, DecodeAndAppendRoundTrip) {
  for (const char32_t cp : {U'a', U'\u00e9', U'\u4e2d', U'\U0001F98A', U'\u0080', U'\uffff'}) {
    std::string text;
    append_utf8(&text, cp);
    char32_t back = 0;
    ASSERT_EQ(decode_utf8(text, 0, &back), text.size());
    EXPECT_EQ(back, cp);
  }
}

TEST(Utf8, IncompleteTail) {
  EXPECT_EQ(incomplete_utf8_tail(""), 0u);
  EXPECT_EQ(incomplete_utf8_tail("abc"), 0u);
  EXPECT_EQ(incomplete_utf8_tail("a\xc3"), 1u);
  EXPECT_EQ(incomplete_utf8_tail("a\xc3\xa9"), 0u);
  EXPECT_EQ(incomplete_utf8_tail("\xe4\xb8"), 2u);
  EXPECT_EQ(incomplete_utf8_tail("\xf0\x9f\xa6"), 3u);
  EXPECT_EQ(incomplete_utf8_tail("\xf0\x9f\xa6\x8a"), 0u);
  EXPECT_EQ(incomplete_utf8_tail("\x80\x80"), 0u);  // continuation bytes with no lead
  EXPECT_EQ(incomplete_utf8_tail("\xff"), 0u);      // can never complete
  EXPECT_EQ(incomplete_utf8_tail("\xe0\x80"), 0u);  // E0 80 is already an overlong form
  EXPECT_EQ(incomplete_utf8_tail("\xed\xa0"), 0u);  // a surrogate in the making
}

TEST(ByteLevel, Gpt2Table) {
  const auto& table = byte_to_unicode();
  EXPECT_EQ(table['A'], U'A');
  EXPECT_EQ(table[' '], U'\u0120');   // Ġ
  EXPECT_EQ(table['\n'], U'\u010a');  // Ċ
  EXPECT_EQ(table[0], U'\u0100');
  EXPECT_EQ(table[0xAD], U'\u0143');  // the last of the remapped bytes
  EXPECT_EQ(table[0xE9], U'\u00e9');
  for (int b = 0; b < 256; ++b) EXPECT_EQ(unicode_to_byte(table[b]), b);
  EXPECT_FALSE(unicode_to_byte(U' ').has_value());
  EXPECT_FALSE(unicode_to_byte(U'\u4e2d').has_value());
}

TEST(ByteLevel, EncodeDecodeAllBytes) {
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  EXPECT_EQ(byte_level_decode(byte_level_encode(all)), all);
  EXPECT_EQ(byte_level_encode(" the\n"), "\xc4\xa0the\xc4\x8a");  // "Ġthe" "Ċ"
  // Characters outside the table pass through.
  EXPECT_EQ(byte_level_decode("x\xe4\xb8\xady"), "x\xe4\xb8\xady");
}

}  // namespace
}  // namespace helios::tokenizer
