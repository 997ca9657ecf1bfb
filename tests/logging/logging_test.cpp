// The log line formats: text events as "name: key=value ...", JSON lines with typed fields.
#include "helios/common/logging.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "common/expect_error.h"
#include "helios/common/error.h"

namespace helios::testing {
namespace {

using nlohmann::json;

// Points the default logger at a string stream for one test, restoring it afterwards.
class CapturedLog {
 public:
  explicit CapturedLog(logging::Format format) : previous_(spdlog::default_logger()) {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out_);
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink));
    logging::configure("info", format);
  }
  ~CapturedLog() {
    spdlog::set_default_logger(previous_);
    logging::configure("info", logging::Format::kText);
  }
  std::vector<std::string> lines() const {
    std::vector<std::string> result;
    std::istringstream in(out_.str());
    for (std::string line; std::getline(in, line);) result.push_back(line);
    return result;
  }

 private:
  std::ostringstream out_;
  std::shared_ptr<spdlog::logger> previous_;
};

const nlohmann::ordered_json kFields = {{"id", "req 7"},          {"prompt_tokens", 12}, {"ttft_ms", 3.25},
                      {"finish", "length"},     {"ok", true},          {"figures", {{"a", 1}}}};

TEST(Logging, TextEventsAreKeyValuePairsWithQuotedStrings) {
  EXPECT_EQ(logging::text_fields(kFields),
            "id=\"req 7\" prompt_tokens=12 ttft_ms=3.25 finish=length ok=true figures={\"a\":1}");
  CapturedLog log(logging::Format::kText);
  logging::event(spdlog::level::info, "request_finished", {{"id", "r1"}, {"output_tokens", 4}});
  spdlog::debug("below the level: not written");
  const auto lines = log.lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find("[info] request finished: id=r1 output_tokens=4"), std::string::npos)
      << lines[0];
}

TEST(Logging, JsonLinesCarryTimestampLevelAndTypedFields) {
  CapturedLog log(logging::Format::kJson);
  spdlog::info("plain {} with \"quotes\"", "message");
  logging::event(spdlog::level::warn, "request_finished", kFields);
  spdlog::error("bytes \xff\xfe are not UTF-8");
  const auto lines = log.lines();
  ASSERT_EQ(lines.size(), 3u);
  std::vector<json> parsed;
  for (const std::string& line : lines) {
    parsed.push_back(json::parse(line));  // throws (fails the test) on a malformed line
    EXPECT_TRUE(std::regex_match(parsed.back()["ts"].get<std::string>(),
                                 std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)")))
        << line;
  }
  EXPECT_EQ(parsed[0]["level"], "info");
  EXPECT_EQ(parsed[0]["msg"], "plain message with \"quotes\"");
  EXPECT_EQ(parsed[1]["level"], "warning");
  EXPECT_EQ(parsed[1]["event"], "request_finished");
  EXPECT_EQ(parsed[1]["msg"], "request finished");
  EXPECT_EQ(parsed[1]["prompt_tokens"], 12);  // a number, not a string
  EXPECT_EQ(parsed[1]["ttft_ms"], 3.25);
  EXPECT_EQ(parsed[1]["ok"], true);
  EXPECT_EQ(parsed[1]["figures"]["a"], 1);
  EXPECT_EQ(parsed[2]["level"], "error");
  EXPECT_NE(parsed[2]["msg"].get<std::string>().find("are not UTF-8"), std::string::npos);
}

TEST(Logging, TextLinesEscapeControlCharactersSoNoLineCanBeForged) {
  const std::string forged = "r1\n[2026-01-01 00:00:00.000] [info] admin token accepted";
  CapturedLog log(logging::Format::kText);
  logging::event(spdlog::level::info, "request_finished", {{"id", forged}, {"output_tokens", 4}});
  spdlog::info("request rejected: {}", "id\r\nx\x1b[31m\x7f\xc2\x85\xe2\x80\xa8" "end");
  const auto lines = log.lines();
  ASSERT_EQ(lines.size(), 2u) << log.lines().back();
  EXPECT_NE(lines[0].find("r1\\n[2026-01-01"), std::string::npos) << lines[0];
  EXPECT_NE(lines[1].find("id\\r\\nx\\x1b[31m\\x7f\\u0085\\u2028end"), std::string::npos)
      << lines[1];
  EXPECT_EQ(logging::printable("plain \xc3\xa9t\xc3\xa9 \\ text"), "plain \xc3\xa9t\xc3\xa9 \\ text");
}

TEST(Logging, LongClientStringsAreCutInTextEvents) {
  const std::string model(10000, 'm');
  const std::string fields = logging::text_fields({{"model", model}, {"layers", 3}});
  EXPECT_LT(fields.size(), logging::kMaxTextFieldBytes + 64) << fields;
  EXPECT_NE(fields.find("...(+" + std::to_string(10000 - logging::kMaxTextFieldBytes) + " bytes)"),
            std::string::npos)
      << fields;
  EXPECT_NE(fields.find("layers=3"), std::string::npos);
  // Never inside a UTF-8 sequence: 2-byte characters cut at an odd byte back off by one.
  std::string accents;
  for (int i = 0; i < 300; ++i) accents += "\xc3\xa9";
  const std::string cut = logging::printable(accents, 255);
  EXPECT_EQ(cut.substr(0, cut.find("...")).size(), 254u);
  // JSON lines keep the whole value (they are escaped by construction).
  CapturedLog log(logging::Format::kJson);
  logging::event(spdlog::level::info, "pin", {{"model", model}});
  ASSERT_EQ(log.lines().size(), 1u);
  EXPECT_EQ(json::parse(log.lines()[0])["model"], model);
}

TEST(Logging, UnknownFormatNamesTheKey) {
  expect_error([] { logging::parse_format("xml"); }, ErrorCode::kInvalidArgument,
               {"logging.format", "xml"});
}

}  // namespace
}  // namespace helios::testing
