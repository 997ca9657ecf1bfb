#include "helios/common/json_limits.h"

#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "common/expect_error.h"
#include "common/scratch_dir.h"
#include "helios/common/json_section.h"

namespace helios {
namespace {

using nlohmann::json;
using testing::expect_error;

// `depth` arrays, one inside the other.
std::string nested_arrays(size_t depth) {
  return std::string(depth, '[') + std::string(depth, ']');
}

TEST(ParseJson, RefusesNestingPastTheLimitNamingSourceAndLimit) {
  // Deep enough that any recursive walk of the document would exhaust the stack.
  expect_error([] { parse_json(nested_arrays(200000), "deep.json"); },
               ErrorCode::kInvalidArgument, {"deep.json", "64 levels"});
  std::string objects;
  for (int i = 0; i < 200000; ++i) objects += "{\"a\":";
  expect_error([&] { parse_json(objects, "objects.json"); }, ErrorCode::kInvalidArgument,
               {"objects.json", "64"});
  // Truncated deep input: the depth is seen before the missing brackets.
  expect_error([] { parse_json(std::string(200000, '['), "open.json"); },
               ErrorCode::kInvalidArgument, {"open.json", "64"});
}

TEST(ParseJson, AcceptsExactlyTheLimit) {
  EXPECT_TRUE(parse_json(nested_arrays(kMaxJsonDepth), "ok.json").is_array());
  expect_error([] { parse_json(nested_arrays(kMaxJsonDepth + 1), "over.json"); },
               ErrorCode::kInvalidArgument, {"over.json"});
  EXPECT_TRUE(parse_json(nested_arrays(3), "small.json", {.max_depth = 3}).is_array());
  expect_error([] { parse_json(nested_arrays(4), "small.json", {.max_depth = 3}); },
               ErrorCode::kInvalidArgument, {"3 levels"});
}

TEST(ParseJson, SyntaxAndNumberErrorsAreHeliosErrorsOfTheChosenCode) {
  expect_error([] { parse_json("{\"a\": ", "a.json"); }, ErrorCode::kInvalidArgument,
               {"a.json", "invalid JSON"});
  expect_error([] { parse_json("[1, 2,]", "m.json", {.syntax_error = ErrorCode::kDataLoss}); },
               ErrorCode::kDataLoss, {"m.json", "line 1"});
}

TEST(ParseJson, NumberOverflowIsNotANlohmannException) {
  // nlohmann throws out_of_range (not parse_error) for a float past double's range.
  expect_error([] { parse_json("{\"a\": 1e400}", "big.json", {.syntax_error = ErrorCode::kDataLoss}); },
               ErrorCode::kDataLoss, {"big.json", "invalid JSON"});
}

TEST(ParseJson, CommentsOnlyWhenAsked) {
  EXPECT_EQ(parse_json("// note\n{\"a\": 1}", "c.json", {.comments = true})["a"], 1);
  expect_error([] { parse_json("// note\n{\"a\": 1}", "c.json"); }, ErrorCode::kInvalidArgument,
               {"c.json"});
}

TEST(JsonExcerpt, DocumentsTooDeepToParseAreExcerptedAndDestroyedWithoutRecursion) {
  // Built in memory (parse_json would refuse it): 200000 levels.
  json root = json::array();
  json* inner = &root;
  for (int i = 0; i < 200000; ++i) {
    inner->push_back(json::array());
    inner = &inner->back();
  }
  EXPECT_EQ(json_excerpt(root), "[[... 1 items]]");
  // Leaving the scope destroys it: nlohmann's destructor is iterative, so this returns.
}

TEST(JsonExcerpt, StaysShortWhateverTheValue) {
  EXPECT_EQ(json_excerpt(json(42)), "42");
  EXPECT_EQ(json_excerpt(json("text")), "\"text\"");
  EXPECT_EQ(json_excerpt(json(nullptr)), "null");
  EXPECT_EQ(json_excerpt(json::array()), "[]");
  EXPECT_EQ(json_excerpt(json::object()), "{}");
  EXPECT_EQ(json_excerpt(json::parse(R"([1, [2, 3, 4], {"a": 1, "b": 2}])")),
            "[1, [... 3 items], {... 2 keys}]");
  EXPECT_EQ(json_excerpt(json::parse(R"({"k": [1, 2]})")), "{\"k\": [... 2 items]}");

  const std::string long_text(1 << 20, 'x');
  const std::string excerpt = json_excerpt(json(long_text), 80);
  EXPECT_LE(excerpt.size(), 120u);
  EXPECT_NE(excerpt.find("..."), std::string::npos);

  json many = json::array();
  for (int i = 0; i < 100000; ++i) many.push_back(i);
  const std::string list = json_excerpt(many, 80);
  EXPECT_LE(list.size(), 120u);
  EXPECT_NE(list.find("more"), std::string::npos) << list;

  // A cut through a multi-byte character leaves valid UTF-8 (dump() would throw otherwise).
  const std::string snowmen = std::string(100, 'a') + "\xe2\x98\x83\xe2\x98\x83";
  EXPECT_NO_THROW(json(json_excerpt(json(snowmen), 101)).dump());
}

TEST(ReadJsonFile, RefusesFilesPastTheLimitBeforeReading) {
  const testing::ScratchDir dir("json_limits");
  const auto path = dir.path() / "big.json";
  std::ofstream(path) << std::string(1000, ' ') << "{}";
  EXPECT_EQ(read_json_file(path).size(), 1002u);
  expect_error([&] { read_json_file(path, 1000); }, ErrorCode::kInvalidArgument,
               {path.string(), "1000 bytes"});
  expect_error([&] { read_json_file(dir.path() / "missing.json"); }, ErrorCode::kNotFound,
               {"missing.json"});
  expect_error([&] { read_json_file(dir.path()); }, ErrorCode::kNotFound, {dir.path().string()});
}

TEST(JsonSection, UnsignedIntegersPastInt64MaxAreOutOfRangeNotWrapped) {
  const json root = json::parse(R"({"http": {"port": 18446744073709551615}})");
  JsonSection http(root, "http");
  int64_t port = 9464;
  expect_error([&] { http.integer("port", port); }, ErrorCode::kInvalidArgument,
               {"http.port", "18446744073709551615", "out of range"});
  EXPECT_EQ(port, 9464);
  expect_error([&] { http.integer("port", port, -1, 65535); }, ErrorCode::kInvalidArgument,
               {"http.port", "out of range"});
}

TEST(JsonSection, RangedIntegersNameKeyRangeAndValue) {
  const json root = json::parse(R"({"s": {"n": 70000, "m": 5}})");
  JsonSection s(root, "s");
  int64_t n = 0;
  expect_error([&] { s.integer("n", n, -1, 65535); }, ErrorCode::kInvalidArgument,
               {"s.n", "[-1, 65535]", "70000"});
  int64_t m = 0;
  EXPECT_TRUE(s.integer("m", m, 1, 10));
  EXPECT_EQ(m, 5);
}

TEST(JsonSection, TypeErrorsShowABoundedExcerpt) {
  json root = json::object();
  json* inner = &root["s"]["k"];
  *inner = json::array();
  for (int i = 0; i < 200000; ++i) {
    inner->push_back(json::array());
    inner = &inner->back();
  }
  JsonSection s(root, "s");
  int64_t value = 0;
  try {
    s.integer("k", value);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "s.k: must be an integer, got [[... 1 items]]");
  }
}

}  // namespace
}  // namespace helios
