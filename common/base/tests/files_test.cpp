#include "xcpipe/base/files.h"

#include <gtest/gtest.h>
#include <signal.h>
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

#include "xcpipe/base/subprocess.h"

namespace xcpipe {
namespace {

TEST(SubprocessTest, CapturesLinesAndExitCode) {
  auto p = Subprocess::Start({"/bin/sh", "-c", "echo one; echo two; exit 3"}, {.capture_stdout = true, .silence_stderr = false, .extra_env = {}});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  auto a = (*p)->ReadLine(std::chrono::seconds(5));
  ASSERT_TRUE(a.ok() && a->has_value());
  EXPECT_EQ(**a, "one");
  auto b = (*p)->ReadLine(std::chrono::seconds(5));
  EXPECT_EQ(**b, "two");
  auto eof = (*p)->ReadLine(std::chrono::seconds(5));
  ASSERT_TRUE(eof.ok());
  EXPECT_FALSE(eof->has_value());
  auto code = (*p)->Wait(std::chrono::seconds(5));
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 3);
}

TEST(SubprocessTest, ReadLineTimesOutAndDestructorKills) {
  auto p = Subprocess::Start({"/bin/sleep", "30"}, {.capture_stdout = true, .silence_stderr = false, .extra_env = {}});
  ASSERT_TRUE(p.ok());
  auto line = (*p)->ReadLine(std::chrono::milliseconds(50));
  ASSERT_FALSE(line.ok());
  EXPECT_EQ(line.status().code(), StatusCode::kDeadlineExceeded);
  pid_t pid = (*p)->pid();
  p = UnavailableError("dropped");  // destroys the Subprocess
  EXPECT_NE(kill(pid, 0), 0);       // reaped: no such process
}

TEST(SubprocessTest, MissingProgramIsNotFound) {
  auto p = Subprocess::Start({"/nonexistent/program"});
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace xcpipe
