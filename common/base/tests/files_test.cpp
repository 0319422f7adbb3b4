#include "xcpipe/base/files.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

namespace xcpipe {
namespace {

std::filesystem::path TempPath(const std::string& name) {
  return std::filesystem::temp_directory_path() / ("xcpipe_files_test_" + std::to_string(getpid()) + "_" + name);
}

TEST(FilesTest, WriteThenRead) {
  auto path = TempPath("a.txt");
  ASSERT_TRUE(WriteFileAtomically(path, "hello").ok());
  auto text = ReadFileToString(path);
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  EXPECT_EQ(*text, "hello");
  std::filesystem::remove(path);
}

TEST(FilesTest, MissingFileIsNotFoundAndNamesThePath) {
  auto r = ReadFileToString("/nonexistent/xcpipe/file.json");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("/nonexistent/xcpipe/file.json"), std::string::npos);
}

TEST(FilesTest, SizeLimitIsEnforced) {
  auto path = TempPath("big.txt");
  ASSERT_TRUE(WriteFileAtomically(path, std::string(100, 'x')).ok());
  auto r = ReadFileToString(path, 10);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  std::filesystem::remove(path);
}

TEST(FilesTest, BadJsonNamesSourceAndPosition) {
  auto r = ParseJson("{\"a\": 1,, }", "config.json");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("config.json"), std::string::npos);
  EXPECT_NE(r.status().message().find("byte"), std::string::npos);
  auto good = ParseJson("{\"a\": [1, 2]}", "x");
  ASSERT_TRUE(good.ok());
  EXPECT_EQ((*good)["a"][1].get<int>(), 2);
}

}  // namespace
}  // namespace xcpipe
