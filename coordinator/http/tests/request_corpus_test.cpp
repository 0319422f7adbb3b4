// Replays the request fuzzer's corpus (coordinator/http/fuzz/corpus) as a regression test:
// files named bad_* must be refused by the parser, the others accepted, and no file may break
// an invariant of the fuzz target.
#include <gtest/gtest.h>

#include <filesystem>

#include "../fuzz/request_fuzz_body.h"
#include "xcpipe/base/files.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::http {
namespace {

namespace fs = std::filesystem;

TEST(RequestCorpusTest, EveryFileIsAcceptedOrRefusedCleanly) {
  const fs::path corpus = xcpipe::testing::SourceDir() / "coordinator/http/fuzz/corpus";
  ASSERT_TRUE(fs::is_directory(corpus)) << corpus;
  int files = 0;
  for (const auto& entry : fs::directory_iterator(corpus)) {
    const std::string name = entry.path().filename().string();
    auto bytes = ReadFileToString(entry.path());
    ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
    bool accepted = false;
    EXPECT_EQ(fuzz::CheckRequestOnce(*bytes, &accepted), "") << name;
    EXPECT_EQ(accepted, !name.starts_with("bad_")) << name;
    ++files;
  }
  EXPECT_GE(files, 8);
}

}  // namespace
}  // namespace xcpipe::http
