#include "helios/engine/stop_matcher.h"

#include <gtest/gtest.h>

namespace helios::engine {
namespace {

// Feeds `pieces` one at a time; returns everything sent plus what flush() gives at the end.
std::string stream(StopMatcher& matcher, const std::vector<std::string>& pieces) {
  std::string sent;
  for (const auto& piece : pieces) sent += matcher.push(piece);
  return sent + matcher.flush();
}

TEST(StopMatcher, NoStopStringsPassesEverythingAtOnce) {
  StopMatcher matcher({});
  EXPECT_EQ(matcher.push("abc"), "abc");
  EXPECT_EQ(matcher.push("def"), "def");
  EXPECT_FALSE(matcher.stopped());
}

TEST(StopMatcher, CutsBeforeAStopStringSplitAcrossPieces) {
  StopMatcher matcher({"END"});
  EXPECT_EQ(matcher.push("hello E"), "hello ");  // "E" may begin "END": held back
  EXPECT_EQ(matcher.push("N"), "");
  EXPECT_EQ(matcher.push("D and more"), "");
  EXPECT_TRUE(matcher.stopped());
  EXPECT_EQ(matcher.push("ignored"), "");
  EXPECT_EQ(matcher.flush(), "");
}

TEST(StopMatcher, ReleasesHeldTextThatTurnsOutNotToStop) {
  StopMatcher matcher({"END"});
  EXPECT_EQ(stream(matcher, {"a E", "Nx", "y"}), "a ENxy");
  EXPECT_FALSE(matcher.stopped());
}

TEST(StopMatcher, EarliestOfSeveralStopsWins) {
  StopMatcher matcher({"world", "lo"});
  EXPECT_EQ(stream(matcher, {"hello world"}), "hel");
  EXPECT_TRUE(matcher.stopped());
}

TEST(StopMatcher, FlushReturnsAPartialMatchAtTheEnd) {
  StopMatcher matcher({"\n\n"});
  EXPECT_EQ(matcher.push("line\n"), "line");
  EXPECT_EQ(matcher.flush(), "\n");
}

}  // namespace
}  // namespace helios::engine
