// load_tokenizer on tokenizer.json files, and the errors for malformed ones.
#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <thread>

#include "helios/common/error.h"
#include "helios/tokenizer/bpe_tokenizer.h"
#include "helios/tokenizer/tokenizer.h"
#include "helios/tokenizer/tokenizer_json.h"
#include "tokenizer/test_util.h"

namespace helios::tokenizer {
namespace {

using nlohmann::json;
using testing::fixture_config;
using testing::fixture_json;

void write(const std::filesystem::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// Loads `text` as model_dir/tokenizer.json and checks the error's code, and that its message
// names both the file and `field`.
void expect_error(const std::string& name, const std::string& text, ErrorCode code,
                  const std::string& field, const model::ModelConfig& config = fixture_config()) {
  SCOPED_TRACE(name);
  const testing::ScratchDir scratch;
  const auto& dir = scratch.path();
  write(dir / "tokenizer.json", text);
  try {
    load_tokenizer(dir, config);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_EQ(error_code_name(e.code()), error_code_name(code)) << message;
    EXPECT_NE(message.find((dir / "tokenizer.json").string()), std::string::npos) << message;
    EXPECT_NE(message.find(field), std::string::npos) << "wanted " << field << " in " << message;
  }
}

void expect_error(const std::string& name, const std::function<void(json&)>& edit, ErrorCode code,
                  const std::string& field) {
  json document = fixture_json();
  edit(document);
  expect_error(name, document.dump(), code, field);
}

TEST(LoadTokenizer, LoadsTheFixture) {
  const testing::ScratchDir scratch;
  const auto& dir = scratch.path();
  std::filesystem::copy_file(testing::fixture_path(), dir / "tokenizer.json");
  const auto tokenizer = load_tokenizer(dir, fixture_config());
  ASSERT_NE(dynamic_cast<const BpeTokenizer*>(tokenizer.get()), nullptr);
  EXPECT_EQ(tokenizer->decode(tokenizer->encode("the fox")), "the fox");
}

TEST(LoadTokenizer, MissingFile) {
  const testing::ScratchDir scratch;
  const auto& dir = scratch.path();
  try {
    load_tokenizer(dir, fixture_config());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound);
    EXPECT_NE(std::string(e.what()).find((dir / "tokenizer.json").string()), std::string::npos);
  }
}

TEST(LoadTokenizer, NotJson) {
  expect_error("bad_json", "{\"model\": {\"vocab\": ", ErrorCode::kDataLoss, "invalid JSON");
  expect_error("not_object", "[1, 2]", ErrorCode::kDataLoss, "(document)");
}

TEST(LoadTokenizer, MalformedModel) {
  const auto k = ErrorCode::kDataLoss;
  expect_error(
      "no_model", [](json& j) { j.erase("model"); }, k, "model is missing");
  expect_error(
      "no_vocab", [](json& j) { j["model"].erase("vocab"); }, k, "model.vocab");
  expect_error(
      "vocab_array", [](json& j) { j["model"]["vocab"] = json::array(); }, k,
      "model.vocab is not an object");
  expect_error(
      "vocab_value", [](json& j) { j["model"]["vocab"]["a"] = "99"; }, k,
      "model.vocab['a'] is not an integer");
  expect_error(
      "duplicate_id", [](json& j) { j["model"]["vocab"]["a"] = 100; }, k, "model.vocab['");
  expect_error(
      "missing_byte", [](json& j) { j["model"]["vocab"].erase("a"); }, k,
      "model.vocab: no token for byte 97");
  expect_error(
      "no_merges", [](json& j) { j["model"].erase("merges"); }, k, "model.merges");
  expect_error(
      "merges_object", [](json& j) { j["model"]["merges"] = json::object(); }, k,
      "model.merges is not an array");
  expect_error(
      "merge_unknown", [](json& j) { j["model"]["merges"][3] = "zz q"; }, k,
      "model.merges[3]: left token 'zz' is not in model.vocab");
  expect_error(
      "merge_unknown_pair",
      [](json& j) {
        j["model"]["merges"][5] = json::array({"q", "zz"});
      },
      k, "model.merges[5]: right token 'zz'");
  expect_error(
      "merge_result", [](json& j) { j["model"]["merges"].push_back("x y"); }, k,
      "model.merges[42]: merged token 'xy'");
  expect_error(
      "merge_no_space", [](json& j) { j["model"]["merges"][0] = "ab"; }, k, "model.merges[0]");
  expect_error(
      "merge_two_spaces", [](json& j) { j["model"]["merges"][0] = "a b c"; }, k, "model.merges[0]");
  expect_error(
      "merge_numbers",
      [](json& j) {
        j["model"]["merges"][1] = json::array({1, 2});
      },
      k, "model.merges[1][0] is not a string");
}

TEST(LoadTokenizer, MalformedAddedTokens) {
  const auto k = ErrorCode::kDataLoss;
  expect_error(
      "added_object", [](json& j) { j["added_tokens"] = json::object(); }, k,
      "added_tokens is not an array");
  expect_error(
      "added_no_id", [](json& j) { j["added_tokens"][1].erase("id"); }, k,
      "added_tokens[1].id is missing");
  expect_error(
      "added_content", [](json& j) { j["added_tokens"][0]["content"] = 5; }, k,
      "added_tokens[0].content is not a string");
  expect_error(
      "added_empty", [](json& j) { j["added_tokens"][0]["content"] = ""; }, k,
      "added_tokens[0].content is empty");
  expect_error(
      "added_twice", [](json& j) { j["added_tokens"][1]["content"] = "<s>"; }, k,
      "added_tokens[1].content '<s>' is listed twice");
}

TEST(LoadTokenizer, UnsupportedFeatures) {
  const auto k = ErrorCode::kInvalidArgument;
  expect_error(
      "wordpiece", [](json& j) { j["model"]["type"] = "WordPiece"; }, k,
      "model.type 'WordPiece' is not supported");
  expect_error(
      "suffix", [](json& j) { j["model"]["end_of_word_suffix"] = "</w>"; }, k,
      "model.end_of_word_suffix");
  expect_error(
      "no_pre", [](json& j) { j.erase("pre_tokenizer"); }, k, "pre_tokenizer");
  expect_error(
      "metaspace",
      [](json& j) {
        j["pre_tokenizer"] = {{"type", "Metaspace"}};
      },
      k, "pre_tokenizer.type 'Metaspace'");
  const auto split = [](json step) {
    return json{{"type", "Sequence"},
                {"pretokenizers", {step, {{"type", "ByteLevel"}, {"use_regex", false}}}}};
  };
  expect_error(
      "split_removed",
      [&](json& j) {
        j["pre_tokenizer"] =
            split({{"type", "Split"}, {"pattern", {{"Regex", "\\s+"}}}, {"behavior", "Removed"}});
      },
      k, "pre_tokenizer.pretokenizers[0].behavior");
  expect_error(
      "split_lookbehind",
      [&](json& j) {
        j["pre_tokenizer"] = split(
            {{"type", "Split"}, {"pattern", {{"Regex", "(?<=a)b"}}}, {"behavior", "Isolated"}});
      },
      k, "pre_tokenizer.pretokenizers[0].pattern.Regex");
  expect_error(
      "split_no_pattern",
      [&](json& j) {
        j["pre_tokenizer"] = split({{"type", "Split"}, {"behavior", "Isolated"}});
      },
      ErrorCode::kDataLoss, "pre_tokenizer.pretokenizers[0].pattern is missing");
  expect_error(
      "no_byte_level",
      [](json& j) {
        j["pre_tokenizer"] = {
            {"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "Isolated"}};
      },
      k, "pre_tokenizer has no ByteLevel step");
  expect_error(
      "decoder",
      [](json& j) {
        j["decoder"] = {{"type", "WordPiece"}};
      },
      k, "decoder.type 'WordPiece'");
  expect_error(
      "normalizer",
      [](json& j) {
        j["normalizer"] = {{"type", "Lowercase"}};
      },
      k, "normalizer.type 'Lowercase'");
}

TEST(LoadTokenizer, ConfigMismatch) {
  const std::string text = testing::read_file(testing::fixture_path());
  auto config = fixture_config();
  config.vocab_size = 299;  // the fixture uses ids up to 299
  expect_error("small_vocab", text, ErrorCode::kInvalidArgument, "vocab_size 299", config);
  config = fixture_config();
  config.eos_token_id = 300;
  expect_error("eos_range", text, ErrorCode::kInvalidArgument, "eos_token_id 300", config);
}

TEST(LoadTokenizer, StringSplitPatternIsLiteral) {
  json document = fixture_json();
  document["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       {{{"type", "Split"}, {"pattern", {{"String", "."}}}, {"behavior", "Isolated"}},
        {{"type", "ByteLevel"}, {"use_regex", false}}}}};
  const auto tokenizer = BpeTokenizer::from_json(document, fixture_config(), "string");
  // "." is literal, so "he" (a merge) survives in "he.he" but "h.e" has no "he".
  const int32_t he = *tokenizer->token_id("he");
  EXPECT_EQ(tokenizer->encode("he.he"), (std::vector<int32_t>{he, 2 + '.', he}));
}

// NFC is accepted (with a warning) since skipping it is exact for NFC text.
TEST(LoadTokenizer, NfcNormalizerIsAccepted) {
  json document = fixture_json();
  document["normalizer"] = {{"type", "NFC"}};
  const auto tokenizer = BpeTokenizer::from_json(document, fixture_config(), "nfc");
  EXPECT_EQ(tokenizer->decode(tokenizer->encode("caf\xc3\xa9")), "caf\xc3\xa9");
}

// Tokenizers are immutable after construction: concurrent encodes agree with a serial one.
TEST(LoadTokenizer, ConcurrentEncode) {
  const auto tokenizer = BpeTokenizer::from_file(testing::fixture_path(), fixture_config());
  const std::string text = testing::read_file(testing::data_dir() / "corpus.txt");
  const std::vector<int32_t> expected = tokenizer->encode(text);
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) ok[t] += tokenizer->encode(text) == expected;
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(ok, (std::vector<int>(4, 20)));
}

TEST(LoadTokenizer, DeeplyNestedDocumentIsRefusedNamingFileAndLimit) {
  json document = fixture_json();
  std::string text = document.dump();
  text.insert(1, R"("notes": )" + std::string(200000, '[') + std::string(200000, ']') + ",");
  expect_error("deep", text, ErrorCode::kInvalidArgument, "64 levels");
}

TEST(LoadTokenizer, IdsPastInt64MaxAreOutOfRangeNotWrapped) {
  // Spliced in as text: a json built in C++ cannot hold 2^64-1 and an int64 at once.
  std::string text = fixture_json().dump();
  text.insert(text.find("\"vocab\":{") + 9, R"("zzz":18446744073709551615,)");
  expect_error("huge_id", text, ErrorCode::kDataLoss, "18446744073709551615 is out of range");
  expect_error("float_overflow", R"({"model": {"vocab": {"a": 1e400}}})", ErrorCode::kDataLoss,
               "invalid JSON");
}

TEST(LoadTokenizer, ParsesFromText) {
  const std::string text = read_file(testing::fixture_path());
  const auto tokenizer = parse_tokenizer_json(text, fixture_config(), "memory");
  EXPECT_EQ(tokenizer->decode(tokenizer->encode("the fox")), "the fox");
  try {
    parse_tokenizer_json("[]", fixture_config(), "memory");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kDataLoss);
    EXPECT_EQ(std::string(e.what()).rfind("memory: ", 0), 0u) << e.what();
  }
}

}  // namespace
}  // namespace helios::tokenizer
