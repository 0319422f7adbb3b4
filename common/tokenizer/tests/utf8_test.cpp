#include "xcpipe/tokenizer/utf8.h"

#include <gtest/gtest.h>

namespace xcpipe::tokenizer {
namespace {

TEST(Utf8Test, AcceptsValidText) {
  EXPECT_FALSE(FindUtf8Error(""));
  EXPECT_FALSE(FindUtf8Error("plain ascii\n"));
  EXPECT_FALSE(FindUtf8Error("浦语·灵笔 😀 ÀÉ"));
  EXPECT_FALSE(FindUtf8Error("\xF4\x8F\xBF\xBF"));  // U+10FFFF
}

TEST(Utf8Test, NamesOffsetAndReason) {
  auto e = FindUtf8Error("ok\xFFrest");
  ASSERT_TRUE(e);
  EXPECT_EQ(e->offset, 2u);
  EXPECT_EQ(e->reason, "invalid lead byte 0xff");

  e = FindUtf8Error("ab\xE4\xBD");
  ASSERT_TRUE(e);
  EXPECT_EQ(e->offset, 2u);
  EXPECT_NE(e->reason.find("truncated"), std::string::npos);

  e = FindUtf8Error("\xC0\xAF");
  ASSERT_TRUE(e);
  EXPECT_NE(e->reason.find("overlong"), std::string::npos);

  e = FindUtf8Error("\xE0\x80\xAF");  // overlong 3-byte '/'
  ASSERT_TRUE(e);
  EXPECT_NE(e->reason.find("overlong"), std::string::npos);

  e = FindUtf8Error("x\xED\xA0\x80");  // U+D800
  ASSERT_TRUE(e);
  EXPECT_EQ(e->offset, 1u);
  EXPECT_NE(e->reason.find("surrogate"), std::string::npos);

  e = FindUtf8Error("\xF4\x90\x80\x80");  // above U+10FFFF
  ASSERT_TRUE(e);
  EXPECT_NE(e->reason.find("10FFFF"), std::string::npos);

  e = FindUtf8Error("\xE4x\xBD");
  ASSERT_TRUE(e);
  EXPECT_NE(e->reason.find("continuation"), std::string::npos);
}

TEST(Utf8Test, PythonWhitespaceSet) {
  for (char32_t c : {U'\t', U'\n', U'\v', U'\f', U'\r', U'\x1c', U'\x1f', U' ', U'\x85', U'\xa0', U'\u1680', U'\u2000',
                     U'\u200a', U'\u2028', U'\u2029', U'\u202f', U'\u205f', U'\u3000'}) {
    EXPECT_TRUE(IsPythonWhitespace(c)) << static_cast<uint32_t>(c);
  }
  for (char32_t c : {U'a', U'\0', U'\x1b', U'\u200b', U'\ufeff', U'\u180e'}) {
    EXPECT_FALSE(IsPythonWhitespace(c)) << static_cast<uint32_t>(c);
  }
}

TEST(Utf8Test, StripsLikePython) {
  EXPECT_EQ(LstripPythonWhitespace(" \t\n x y "), "x y ");
  EXPECT_EQ(RstripPythonWhitespace(" x y \r\n"), " x y");
  EXPECT_EQ(LstripPythonWhitespace("\u3000\u00a0全角"), "全角");
  EXPECT_EQ(RstripPythonWhitespace("末尾\u2029\u3000"), "末尾");
  EXPECT_EQ(LstripPythonWhitespace("\u200bzero width stays"), "\u200bzero width stays");
  EXPECT_EQ(RstripPythonWhitespace("   "), "");
  EXPECT_EQ(LstripPythonWhitespace(""), "");
  // Bytes that are not UTF-8 stop the strip instead of being eaten.
  EXPECT_EQ(RstripPythonWhitespace("a\xFF "), "a\xFF");
  EXPECT_EQ(LstripPythonWhitespace(" \xFF "), "\xFF ");
}

}  // namespace
}  // namespace xcpipe::tokenizer
