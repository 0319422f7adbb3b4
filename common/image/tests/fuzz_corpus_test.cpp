// Replays the fuzzer's seed corpus (common/image/fuzz/corpus) through the decoder: every file
// must either decode to a consistent image or be refused with a code and a message.
#include <gtest/gtest.h>

#include <filesystem>

#include "xcpipe/base/files.h"
#include "xcpipe/image/decode.h"
#include "xcpipe/image/resample.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::image {
namespace {

namespace fs = std::filesystem;

TEST(FuzzCorpusTest, EveryFileDecodesOrIsRefusedCleanly) {
  const fs::path corpus = xcpipe::testing::SourceDir() / "common/image/fuzz/corpus";
  ASSERT_TRUE(fs::is_directory(corpus)) << corpus;
  int decoded = 0;
  int refused = 0;
  for (const auto& entry : fs::directory_iterator(corpus)) {
    auto bytes = ReadFileToString(entry.path());
    ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
    auto image = DecodeImage(*bytes);
    const std::string name = entry.path().filename().string();
    if (image.ok()) {
      ++decoded;
      ASSERT_EQ(image->pixels.size(), static_cast<size_t>(image->width * image->height * 3)) << name;
      EXPECT_TRUE(ResizeLikePil(*image, 7, 5, ResampleFilter::kBicubic).ok()) << name;
    } else {
      ++refused;
      EXPECT_TRUE(image.status().code() == StatusCode::kInvalidArgument ||
                  image.status().code() == StatusCode::kResourceExhausted)
          << name << ": " << image.status().ToString();
      EXPECT_FALSE(image.status().message().empty()) << name;
    }
    // Files named bad_* are refusals on purpose; everything else must decode.
    EXPECT_EQ(image.ok(), name.rfind("bad_", 0) != 0) << name << ": " << image.status().ToString();
  }
  EXPECT_GE(decoded, 5) << "the seed corpus lost its valid images";
  EXPECT_GE(refused, 5) << "the seed corpus lost its refusals";
}

}  // namespace
}  // namespace xcpipe::image
