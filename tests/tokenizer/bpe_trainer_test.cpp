#include "helios/tokenizer/bpe_trainer.h"

#include <gtest/gtest.h>

#include <cstdlib>

#include "helios/common/error.h"
#include "helios/tokenizer/bpe_tokenizer.h"
#include "tokenizer/test_util.h"

namespace helios::tokenizer {
namespace {

using testing::data_dir;
using testing::fixture_path;
using testing::read_file;

BpeTrainerOptions fixture_options() {
  BpeTrainerOptions options;
  options.vocab_size = testing::kFixtureVocab;
  options.special_tokens = {"<s>", "</s>"};
  return options;
}

// The checked-in fixture is exactly what train_bpe makes from corpus.txt. Run with
// HELIOS_REGENERATE_TOKENIZER_FIXTURES=1 to rewrite it after changing the trainer or corpus.
TEST(BpeTrainer, FixtureIsTrainerOutput) {
  const auto document = train_bpe(read_file(data_dir() / "corpus.txt"), fixture_options());
  if (std::getenv("HELIOS_REGENERATE_TOKENIZER_FIXTURES") != nullptr) {
    write_tokenizer_json(document, fixture_path());
  }
  EXPECT_EQ(document.dump(2, ' ', false) + "\n", read_file(fixture_path()));
}

TEST(BpeTrainer, LayoutAndDeterminism) {
  const std::string corpus = "low lower lowest low low newer newest new";
  BpeTrainerOptions options;
  options.vocab_size = 270;
  options.special_tokens = {"<eos>"};
  const auto document = train_bpe(corpus, options);
  EXPECT_EQ(document, train_bpe(corpus, options));
  EXPECT_EQ(document["model"]["type"], "BPE");
  EXPECT_EQ(document["pre_tokenizer"]["type"], "ByteLevel");
  EXPECT_EQ(document["decoder"]["type"], "ByteLevel");
  EXPECT_EQ(document["added_tokens"][0]["content"], "<eos>");
  EXPECT_EQ(document["model"]["vocab"]["<eos>"], 0);
  EXPECT_EQ(document["model"]["vocab"]["a"], 1 + 'a');
  EXPECT_EQ(document["model"]["vocab"]["Ġ"], 1 + ' ');
  // "Ġl" and "lo"... the most frequent pair in this corpus is "l"+"o" (in 6 words, tied with
  // "o"+"w"; the smaller left id wins).
  EXPECT_EQ(document["model"]["merges"][0], "l o");
  EXPECT_LE(document["model"]["vocab"].size(), 270u);

  // The result loads, and merged words encode to single tokens.
  model::ModelConfig config;
  config.vocab_size = 270;
  config.bos_token_id = 0;
  config.eos_token_id = 0;
  const auto tokenizer =
      BpeTokenizer::from_json(nlohmann::json::parse(document.dump()), config, "trained");
  EXPECT_EQ(tokenizer->decode(tokenizer->encode(corpus)), corpus);
  EXPECT_LT(tokenizer->encode(corpus).size(), corpus.size() / 2);
}

TEST(BpeTrainer, StopsAtMinFrequency) {
  BpeTrainerOptions options;
  options.vocab_size = 1000;
  options.min_frequency = 2;
  const auto document = train_bpe("abab cd", options);
  // "a b" occurs twice, "b a" once after that merge... only pairs seen twice get merged.
  EXPECT_EQ(document["model"]["merges"].size(), 1u);
  EXPECT_EQ(document["model"]["merges"][0], "a b");
}

TEST(BpeTrainer, NeverMergesIntoASpecialToken) {
  BpeTrainerOptions options;
  options.vocab_size = 300;
  options.special_tokens = {"ab"};
  const auto document = train_bpe("ab ab ab ab", options);
  for (const auto& merge : document["model"]["merges"]) EXPECT_NE(merge, "a b");
}

TEST(BpeTrainer, RejectsBadOptions) {
  BpeTrainerOptions options;
  options.vocab_size = 257;
  options.special_tokens = {"<s>", "</s>"};
  EXPECT_THROW(train_bpe("x", options), Error);
  options.vocab_size = 300;
  options.special_tokens = {"<s>", "<s>"};
  EXPECT_THROW(train_bpe("x", options), Error);
}

}  // namespace
}  // namespace helios::tokenizer
