#include "helios/tokenizer/bpe_tokenizer.h"

#include <gtest/gtest.h>

#include "helios/common/error.h"
#include "helios/tokenizer/byte_level.h"
#include "tokenizer/test_util.h"

namespace helios::tokenizer {
namespace {

using Ids = std::vector<int32_t>;
using testing::fixture_config;
using testing::fixture_json;

// Ids in the fixture: "<s>" 0, "</s>" 1, byte b is 2 + b, and merge number k (in the order of
// model.merges) made token 258 + k.
constexpr int32_t byte_id(char c) {
  return 2 + static_cast<uint8_t>(c);
}
constexpr int32_t merge_id(int k) {
  return 258 + k;
}

class FixtureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tokenizer_ = BpeTokenizer::from_file(testing::fixture_path(), fixture_config());
  }
  Ids encode(std::string_view text) const { return tokenizer_->encode(text); }
  std::string round_trip(std::string_view text) const {
    return tokenizer_->decode(tokenizer_->encode(text));
  }
  std::unique_ptr<BpeTokenizer> tokenizer_;
};

TEST_F(FixtureTest, MergeIdsAreAsDocumented) {
  EXPECT_EQ(tokenizer_->token_id("he"), merge_id(1));
  EXPECT_EQ(tokenizer_->token_id("\xc4\xa0"
                                 "fox"),
            merge_id(24));  // "Ġfox"
  EXPECT_EQ(tokenizer_->token_id("\xc4\xa0"
                                 "forest"),
            merge_id(38));  // "Ġforest"
  EXPECT_EQ(tokenizer_->token_id("00"), merge_id(20));
  EXPECT_EQ(tokenizer_->token_id("</s>"), 1);
  EXPECT_EQ(tokenizer_->token_id("t"), byte_id('t'));
  EXPECT_FALSE(tokenizer_->token_id("fox").has_value());
  EXPECT_EQ(tokenizer_->vocab_size(), 300);
  EXPECT_EQ(tokenizer_->bos_id(), 0);
  EXPECT_EQ(tokenizer_->eos_id(), 1);
}

// Worked by hand from the fixture's merges (rank k is merges[k]):
TEST_F(FixtureTest, KnownEncodings) {
  // "the": only "h e" (1) applies; there is no "t he", only "Ġt he".
  // " fox": "Ġ f" (6) -> "Ġf o" (10) -> "Ġfo x" (24).
  EXPECT_EQ(encode("the fox"), (Ids{byte_id('t'), merge_id(1), merge_id(24)}));
  // "The": "h e" (1) -> "T he" (21). " dog": "Ġ d" (11) before "o g" (16), then "Ġd og" (17).
  EXPECT_EQ(encode("The dog"), (Ids{merge_id(21), merge_id(17)}));
  // " The": "h e" (1), "T he" (21), "Ġ The" (33).
  EXPECT_EQ(encode("The The"), (Ids{merge_id(21), merge_id(33)}));
  // " forest": Ġf (6), re (8), Ġfo (10), st (35), rest (37), Ġforest (38).
  EXPECT_EQ(encode(" forest"), (Ids{merge_id(38)}));
  // Equal ranks merge leftmost first: "1000" is 1 00 0, not 1 0 00.
  EXPECT_EQ(encode("1000"), (Ids{byte_id('1'), merge_id(20), byte_id('0')}));
  EXPECT_EQ(encode("1000000"), (Ids{byte_id('1'), merge_id(20), merge_id(20), merge_id(20)}));
  // Whitespace runs: "a", "  " (no merge for two spaces), " b" ("Ġ b" is merge 18).
  EXPECT_EQ(encode("a   b"), (Ids{byte_id('a'), byte_id(' '), byte_id(' '), merge_id(18)}));
  EXPECT_TRUE(encode("").empty());
}

TEST_F(FixtureTest, RoundTrips) {
  for (const std::string text : {
           std::string("The quick brown fox jumps over the lazy dog."),
           std::string("caf\xc3\xa9 cr\xc3\xa8me"),               // é, è
           std::string("\xe4\xb8\xad\xe6\x96\x87"),               // 中文
           std::string("\xf0\x9f\xa6\x8a and \xf0\x9f\x90\xb6"),  // emoji
           std::string("a   b"),
           std::string("trailing   "),
           std::string("\n\n\nx\n"),
           std::string("\t tabs \t\r\n"),
           std::string("it's we'LL 3.14"),
           std::string("\xff\xfe"),
           std::string("\x80\xbf lone"),
           std::string("ab\xe4\xb8"),
           std::string("\xe4\xb8 truncated"),
           std::string("nul\0byte", 8),
       }) {
    EXPECT_EQ(round_trip(text), text);
  }
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  EXPECT_EQ(round_trip(all), all);
}

TEST_F(FixtureTest, InvalidUtf8BytesAreByteTokens) {
  EXPECT_EQ(encode("\xff\xfe"), (Ids{byte_id('\xff'), byte_id('\xfe')}));
  EXPECT_EQ(encode("the\x80"), (Ids{byte_id('t'), merge_id(1), byte_id('\x80')}));
}

TEST_F(FixtureTest, SpecialTokensMatchedVerbatim) {
  EXPECT_EQ(encode("<s>the</s>"), (Ids{0, byte_id('t'), merge_id(1), 1}));
  // A special inside a word still splits it; the text around it is pre-tokenized separately.
  EXPECT_EQ(encode("ab</s>cd"), (Ids{byte_id('a'), byte_id('b'), 1, byte_id('c'), byte_id('d')}));
  // Near misses are ordinary text.
  EXPECT_EQ(encode("<s"), (Ids{byte_id('<'), byte_id('s')}));
  // Specials decode to nothing.
  EXPECT_EQ(tokenizer_->decode(encode("<s>the fox</s>")), "the fox");
}

TEST_F(FixtureTest, DecodeChecksRange) {
  EXPECT_THROW(tokenizer_->decode(Ids{300}), Error);
  EXPECT_THROW(tokenizer_->decode(Ids{-1}), Error);
  EXPECT_EQ(tokenizer_->decode(Ids{merge_id(24), merge_id(17)}), " fox dog");
}

TEST(BpeTokenizer, PaddedModelVocab) {
  auto config = fixture_config();
  config.vocab_size = 320;  // embedding rows beyond the tokenizer's ids
  const auto tokenizer = BpeTokenizer::from_json(fixture_json(), config, "fixture");
  EXPECT_EQ(tokenizer->vocab_size(), 320);
  EXPECT_EQ(tokenizer->decode(Ids{310, byte_id('x')}), "x");
}

TEST(BpeTokenizer, MergesAsPairsEncodeTheSame) {
  nlohmann::json json = fixture_json();
  for (auto& merge : json["model"]["merges"]) {
    const std::string line = merge.get<std::string>();
    const size_t space = line.find(' ');
    merge = nlohmann::json::array({line.substr(0, space), line.substr(space + 1)});
  }
  const auto pairs = BpeTokenizer::from_json(json, fixture_config(), "pairs");
  const auto strings = BpeTokenizer::from_file(testing::fixture_path(), fixture_config());
  const std::string text = testing::read_file(testing::data_dir() / "corpus.txt");
  EXPECT_EQ(pairs->encode(text), strings->encode(text));
  EXPECT_LT(strings->encode(text).size(), text.size() * 2 / 3);
}

TEST(BpeTokenizer, NonSpecialAddedTokenDecodesToContent) {
  nlohmann::json json = fixture_json();
  json["added_tokens"].push_back({{"id", 300}, {"content", "<tool>"}, {"special", false}});
  auto config = fixture_config();
  config.vocab_size = 301;
  const auto tokenizer = BpeTokenizer::from_json(json, config, "added");
  EXPECT_EQ(tokenizer->encode("x<tool>"), (Ids{byte_id('x'), 300}));
  EXPECT_EQ(tokenizer->decode(Ids{byte_id('x'), 300, 1}), "x<tool>");
}

TEST(BpeTokenizer, LongestAddedTokenWins) {
  nlohmann::json json = fixture_json();
  json["added_tokens"].push_back({{"id", 300}, {"content", "<s>x"}, {"special", true}});
  auto config = fixture_config();
  config.vocab_size = 301;
  const auto tokenizer = BpeTokenizer::from_json(json, config, "longest");
  EXPECT_EQ(tokenizer->encode("<s>x<s>"), (Ids{300, 0}));
}

TEST(BpeTokenizer, IgnoreMerges) {
  nlohmann::json json = fixture_json();
  json["model"]["vocab"]["xyz"] = 300;  // in the vocab, but no merges build it
  auto config = fixture_config();
  config.vocab_size = 301;
  const Ids spelled = {byte_id('x'), byte_id('y'), byte_id('z')};
  EXPECT_EQ(BpeTokenizer::from_json(json, config, "merges")->encode("xyz"), spelled);
  json["model"]["ignore_merges"] = true;
  EXPECT_EQ(BpeTokenizer::from_json(json, config, "ignore")->encode("xyz"), Ids{300});
}

// Llama 3's layout: a Split with its regex, then ByteLevel without its own regex.
TEST(BpeTokenizer, Llama3StylePreTokenizer) {
  nlohmann::json json = fixture_json();
  json["pre_tokenizer"] = {{"type", "Sequence"},
                           {"pretokenizers",
                            {{{"type", "Split"},
                              {"pattern", {{"Regex", std::string(kLlama3Pattern)}}},
                              {"behavior", "Isolated"},
                              {"invert", false}},
                             {{"type", "ByteLevel"},
                              {"add_prefix_space", false},
                              {"trim_offsets", true},
                              {"use_regex", false}}}}};
  const auto tokenizer = BpeTokenizer::from_json(json, fixture_config(), "llama3");
  // Digits go in groups of three: "100" "000" "0".
  EXPECT_EQ(tokenizer->encode("1000000"),
            (Ids{byte_id('1'), merge_id(20), merge_id(20), byte_id('0'), byte_id('0')}));
  const std::string text = "It's   the fox!\n\n\xe4\xb8\xad\xff";
  EXPECT_EQ(tokenizer->decode(tokenizer->encode(text)), text);
}

TEST(BpeTokenizer, AddPrefixSpace) {
  nlohmann::json json = fixture_json();
  json["pre_tokenizer"]["add_prefix_space"] = true;
  const auto tokenizer = BpeTokenizer::from_json(json, fixture_config(), "prefix");
  EXPECT_EQ(tokenizer->encode("fox"), Ids{merge_id(24)});
  EXPECT_EQ(tokenizer->decode(tokenizer->encode("fox")), " fox");
}

}  // namespace
}  // namespace helios::tokenizer
