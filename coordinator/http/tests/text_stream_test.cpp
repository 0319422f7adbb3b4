// Stop sequences on streamed text: matched across deltas, never sent; UTF-8 never split.
#include "xcpipe/http/text_stream.h"

#include <gtest/gtest.h>

namespace xcpipe::http {
namespace {

std::vector<std::string> Feed(TextStream& s, const std::vector<std::string>& deltas) {
  std::vector<std::string> out;
  for (const auto& d : deltas) out.push_back(s.Push(d));
  return out;
}

TEST(TextStreamTest, NoStopSequencesPassesTextThrough) {
  TextStream s({});
  EXPECT_EQ(Feed(s, {"Hel", "lo"}), (std::vector<std::string>{"Hel", "lo"}));
  EXPECT_EQ(s.Finish(), "");
  EXPECT_FALSE(s.stopped());
}

TEST(TextStreamTest, StopWithinOneDelta) {
  TextStream s({"END"});
  EXPECT_EQ(s.Push("abcENDdef"), "abc");
  EXPECT_TRUE(s.stopped());
  EXPECT_EQ(s.Push("more"), "");
  EXPECT_EQ(s.sent(), "abc");
}

TEST(TextStreamTest, StopAcrossDeltasIsHeldBackAndNeverSent) {
  TextStream s({"END"});
  EXPECT_EQ(s.Push("abcE"), "abc");  // "E" may start END
  EXPECT_EQ(s.Push("N"), "");
  EXPECT_EQ(s.Push("Dxyz"), "");
  EXPECT_TRUE(s.stopped());
  EXPECT_EQ(s.sent(), "abc");
}

TEST(TextStreamTest, FalseStartIsReleased) {
  TextStream s({"END"});
  EXPECT_EQ(s.Push("xE"), "x");
  EXPECT_EQ(s.Push("Nx"), "ENx");
  EXPECT_EQ(s.Push("EN"), "");
  EXPECT_EQ(s.Finish(), "EN");  // generation ended: what was held goes out
  EXPECT_EQ(s.sent(), "xENxEN");
}

TEST(TextStreamTest, EarliestOfSeveralStops) {
  TextStream s({"bb", "a"});
  EXPECT_EQ(s.Push("xbbya"), "x");
  EXPECT_EQ(s.sent(), "x");
}

TEST(TextStreamTest, Utf8CharacterNeverSplit) {
  TextStream s({});
  const std::string euro = "\xe2\x82\xac";  // U+20AC, 3 bytes
  EXPECT_EQ(s.Push("a" + euro.substr(0, 1)), "a");
  EXPECT_EQ(s.Push(euro.substr(1, 1)), "");
  EXPECT_EQ(s.Push(euro.substr(2, 1) + "b"), euro + "b");
  EXPECT_EQ(IncompleteUtf8Tail("\xf0\x9f\x98"), 3u);
  EXPECT_EQ(IncompleteUtf8Tail("\xf0\x9f\x98\x80"), 0u);
  EXPECT_EQ(IncompleteUtf8Tail("ab"), 0u);
}

}  // namespace
}  // namespace xcpipe::http
