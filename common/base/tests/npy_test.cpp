#include "xcpipe/base/npy.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "xcpipe/testing/paths.h"

namespace xcpipe {
namespace {

std::string MakeNpy(const std::string& descr, const std::string& shape, const std::string& payload) {
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + shape + "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string out = "\x93NUMPY";
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>(header.size() >> 8);
  return out + header + payload;
}

TEST(NpyTest, ParsesFloatMatrix) {
  float values[6] = {1, 2, 3, 4, 5, 6.5f};
  auto a = ParseNpy(MakeNpy("<f4", "2, 3", std::string(reinterpret_cast<char*>(values), sizeof(values))), "t");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a->ToFloat()[5], 6.5f);
}

TEST(NpyTest, RejectsShapePayloadMismatch) {
  auto a = ParseNpy(MakeNpy("<f4", "2, 3", std::string(20, '\0')), "x.npy");
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("x.npy"), std::string::npos);
  EXPECT_NE(a.status().message().find("needs 24"), std::string::npos);
}

TEST(NpyTest, RejectsBadMagicAndDtype) {
  EXPECT_FALSE(ParseNpy("not an npy file at all", "t").ok());
  auto a = ParseNpy(MakeNpy("<c8", "1,", std::string(8, '\0')), "t");
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("unsupported dtype"), std::string::npos);
}

TEST(NpyTest, ReadsAFixtureWhenPresent) {
  auto path = testing::FixturesDir() / "ixc2_vl/cases/text_chat/input_ids.npy";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "fixtures not found at " << path;
  auto a = ReadNpy(path);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->dtype, "i8");
  ASSERT_EQ(a->shape.size(), 2u);
  auto ids = a->ToInt64();
  // Text-only XComposer2-VL prompts start with a literal <s> plus the tokenizer's BOS.
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(ids[1], 1);
  EXPECT_EQ(ids[2], 92543);
}

}  // namespace
}  // namespace xcpipe
