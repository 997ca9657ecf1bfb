#include "helios/tokenizer/pre_tokenizer.h"

#include <gtest/gtest.h>

#include "helios/common/error.h"

namespace helios::tokenizer {
namespace {

using Pieces = std::vector<std::string>;

Pieces split(std::string_view pattern, std::string_view text) {
  const RegexSplitter splitter(pattern);
  std::vector<std::string_view> pieces;
  splitter.split(text, &pieces);
  return {pieces.begin(), pieces.end()};
}

Pieces gpt2(std::string_view text) {
  return split(kGpt2Pattern, text);
}
Pieces llama3(std::string_view text) {
  return split(kLlama3Pattern, text);
}

TEST(Gpt2Pattern, WordsNumbersPunctuation) {
  EXPECT_EQ(gpt2("Hello world"), (Pieces{"Hello", " world"}));
  EXPECT_EQ(gpt2("it's 42!!"), (Pieces{"it", "'s", " 42", "!!"}));
  EXPECT_EQ(gpt2("caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87"),
            (Pieces{"caf\xc3\xa9", " \xe4\xb8\xad\xe6\x96\x87"}));
  EXPECT_EQ(gpt2("a \xf0\x9f\xa6\x8a!"), (Pieces{"a", " \xf0\x9f\xa6\x8a!"}));
  EXPECT_TRUE(gpt2("").empty());
}

// \s+(?!\S): a whitespace run before a word gives its last character to the word.
TEST(Gpt2Pattern, WhitespaceLookahead) {
  EXPECT_EQ(gpt2("a   b"), (Pieces{"a", "  ", " b"}));
  EXPECT_EQ(gpt2("a  "), (Pieces{"a", "  "}));  // at the end the whole run stays together
  EXPECT_EQ(gpt2("a b"), (Pieces{"a", " b"}));
  EXPECT_EQ(gpt2("   "), (Pieces{"   "}));
  EXPECT_EQ(gpt2("x \t y"), (Pieces{"x", " \t", " y"}));
  // A one-character run that cannot join the word fails the lookahead alternative; the
  // plain \s+ alternative takes it alone.
  EXPECT_EQ(gpt2("a\n\nb"), (Pieces{"a", "\n", "\n", "b"}));
  EXPECT_EQ(gpt2("a\nb"), (Pieces{"a", "\n", "b"}));
  EXPECT_EQ(gpt2("line\n  next\n"), (Pieces{"line", "\n ", " next", "\n"}));
}

// \s is Unicode White_Space as in Oniguruma, not RE2's ASCII class.
TEST(Gpt2Pattern, UnicodeWhitespace) {
  EXPECT_EQ(gpt2("a\xe3\x80\x80\xe3\x80\x80"
                 "b"),  // two U+3000 IDEOGRAPHIC SPACE
            (Pieces{"a", "\xe3\x80\x80", "\xe3\x80\x80", "b"}));
  EXPECT_EQ(gpt2("a\xc2\xa0"
                 "b"),
            (Pieces{"a", "\xc2\xa0", "b"}));  // U+00A0
  EXPECT_EQ(gpt2("a\v\vb"), (Pieces{"a", "\v", "\v", "b"}));
}

// Bytes that are not UTF-8 match nothing and become pieces of their own; nothing is lost.
TEST(Gpt2Pattern, InvalidUtf8IsCovered) {
  EXPECT_EQ(gpt2("ab\xff\xfe"
                 "cd"),
            (Pieces{"ab", "\xff\xfe", "cd"}));
  EXPECT_EQ(gpt2("a \xff"), (Pieces{"a", " ", "\xff"}));
  EXPECT_EQ(gpt2("\x80"), (Pieces{"\x80"}));
  EXPECT_EQ(gpt2("x\xe4\xb8"), (Pieces{"x", "\xe4\xb8"}));
  EXPECT_EQ(gpt2("  \xc3"), (Pieces{" ", " ", "\xc3"}));  // an ill-formed byte counts as \S
}

TEST(Llama3Pattern, Splits) {
  EXPECT_EQ(llama3("1234567"), (Pieces{"123", "456", "7"}));
  EXPECT_EQ(llama3("I'M here"), (Pieces{"I", "'M", " here"}));  // (?i:...) contractions
  EXPECT_EQ(llama3("a\r\n\r\nb"), (Pieces{"a", "\r\n\r\n", "b"}));
  EXPECT_EQ(llama3("a   b"), (Pieces{"a", "  ", " b"}));
  EXPECT_EQ(llama3("hello!!\n"), (Pieces{"hello", "!!\n"}));
  EXPECT_EQ(llama3("(x)"), (Pieces{"(x", ")"}));
  EXPECT_EQ(llama3("  \n  x"), (Pieces{"  \n", " ", " x"}));
}

TEST(RegexSplitter, KeepsTextBetweenMatches) {
  EXPECT_EQ(split("[0-9]+", "ab12cd3"), (Pieces{"ab", "12", "cd", "3"}));
  EXPECT_EQ(split("x*", "abx"), (Pieces{"ab", "x"}));  // empty matches make no pieces
}

TEST(RegexSplitter, RejectsUnsupportedPatterns) {
  for (const char* pattern : {"a(?=b)", "a(?!b)", "(?<=a)b", "(?<!a)b", "a(b", "[\\S]"}) {
    try {
      RegexSplitter splitter(pattern);
      ADD_FAILURE() << "accepted " << pattern;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(pattern), std::string::npos) << e.what();
    }
  }
}

TEST(PreTokenizer, ChainsAndPrefixSpace) {
  std::vector<RegexSplitter> splitters;
  splitters.emplace_back("[^,]+|,");
  splitters.emplace_back(kGpt2Pattern);
  const PreTokenizer pre(true, std::move(splitters));
  EXPECT_EQ(pre.split("hi there,you"), (Pieces{" hi", " there", ",", "you"}));
  EXPECT_EQ(pre.split(" x"), (Pieces{" x"}));  // already starts with a space
  EXPECT_TRUE(pre.split("").empty());
}

}  // namespace
}  // namespace helios::tokenizer
