#include "xcpipe/image/fixture_checks.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>

#include <nlohmann/json.hpp>

#include "xcpipe/base/files.h"
#include "xcpipe/base/npy.h"
#include "xcpipe/image/decode.h"
#include "xcpipe/image/preprocess.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::image {
namespace {

namespace fs = std::filesystem;

fs::path Fixtures() { return xcpipe::testing::FixturesDir(); }

#define SKIP_WITHOUT(path) \
  if (!fs::exists(path)) GTEST_SKIP() << "fixture missing: " << (path)

// The fixed-size pixel_values must be bit-identical (Pillow's bicubic, torchvision's float32
// ToTensor/Normalize), well inside the manifest's atol of 0.02.
void ExpectPixelValuesBitExact(const fs::path& case_dir, int64_t size) {
  auto npy = ReadNpy(case_dir / "pixel_values.npy");
  ASSERT_TRUE(npy.ok()) << npy.status().ToString();
  const std::vector<float> ref = npy->ToFloat();
  const int64_t batch = npy->shape[0];
  ASSERT_EQ(npy->shape, (std::vector<int64_t>{batch, 3, size, size}));
  double worst = 0.0;
  for (int64_t b = 0; b < batch; ++b) {
    const std::string name = batch == 1 && fs::exists(case_dir / "image.png") ? "image.png"
                                                                              : "image" + std::to_string(b) + ".png";
    auto image = ReadImageFile(case_dir / name);
    ASSERT_TRUE(image.ok()) << image.status().ToString();
    auto tensor = PreprocessFixedSize(*image, size);
    ASSERT_TRUE(tensor.ok()) << tensor.status().ToString();
    const size_t offset = static_cast<size_t>(b * 3 * size * size);
    for (size_t i = 0; i < tensor->data.size(); ++i) {
      worst = std::max(worst, static_cast<double>(std::fabs(tensor->data[i] - ref[offset + i])));
    }
  }
  EXPECT_EQ(worst, 0.0) << case_dir;
  ::testing::Test::RecordProperty("max_abs_error", std::to_string(worst));
  std::cout << "[ fixture  ] " << case_dir.string() << ": max abs error " << worst << "\n";
}

TEST(FixturePixelValuesTest, XComposer2VlImageChat) {
  SKIP_WITHOUT(Fixtures() / "ixc2_vl/cases/image_chat/pixel_values.npy");
  ExpectPixelValuesBitExact(Fixtures() / "ixc2_vl/cases/image_chat", 490);
}

TEST(FixturePixelValuesTest, XComposer2VlBatchOfTwo) {
  SKIP_WITHOUT(Fixtures() / "ixc2_vl/cases/batch2_image_chat/pixel_values.npy");
  ExpectPixelValuesBitExact(Fixtures() / "ixc2_vl/cases/batch2_image_chat", 490);
}

TEST(FixturePixelValuesTest, XComposer1ImageChat) {
  SKIP_WITHOUT(Fixtures() / "ixc1/cases/image_chat/pixel_values.npy");
  ExpectPixelValuesBitExact(Fixtures() / "ixc1/cases/image_chat", 224);
}

void ExpectHdImageExact(const fs::path& case_dir, HdVariant variant, int64_t tile) {
  auto manifest = ReadJsonFile(case_dir / "manifest.json");
  ASSERT_TRUE(manifest.ok());
  const int64_t hd_num = (*manifest)["values"]["hd_num"].get<int64_t>();
  auto image = ReadImageFile(case_dir / "image.png");
  auto expected = ReadImageFile(case_dir / "hd_image.png");
  ASSERT_TRUE(image.ok() && expected.ok());
  auto hd = HdTransform(*image, {variant, tile, hd_num});
  ASSERT_TRUE(hd.ok()) << hd.status().ToString();
  ASSERT_EQ(hd->width, expected->width);
  ASSERT_EQ(hd->height, expected->height);
  size_t differing = 0;
  for (size_t i = 0; i < hd->pixels.size(); ++i) differing += hd->pixels[i] != expected->pixels[i];
  EXPECT_EQ(differing, 0u) << "samples differing from hd_image.png in " << case_dir;
}

TEST(FixtureHdTest, FourKhdTransformEqualsHdImage) {
  SKIP_WITHOUT(Fixtures() / "ixc2_4khd/cases/image_chat/hd_image.png");
  ExpectHdImageExact(Fixtures() / "ixc2_4khd/cases/image_chat", HdVariant::kXComposer2_4khd, 336);
}

TEST(FixtureHdTest, TwoPointFiveTransformEqualsHdImage) {
  SKIP_WITHOUT(Fixtures() / "ixc2d5/cases/image_chat/hd_image.png");
  ExpectHdImageExact(Fixtures() / "ixc2d5/cases/image_chat", HdVariant::kXComposer2_5, 560);
}

TEST(FixtureHdTest, WrongVariantIsCaught) {
  // The checks must be able to fail: 2.5's bottom padding on the 4KHD case differs.
  const fs::path case_dir = Fixtures() / "ixc2_4khd/cases/image_chat";
  SKIP_WITHOUT(case_dir / "hd_image.png");
  ModelImageSpec wrong;
  wrong.version = "ixc2.5";
  wrong.hd = true;
  wrong.hd_variant = HdVariant::kXComposer2_5;
  wrong.input_size = 336;
  const ImageFixtureCheck check = CheckImageFixtureCase(case_dir, wrong, "ixc2_4khd/image_chat");
  EXPECT_FALSE(check.passed);
  EXPECT_NE(check.message.find("hd_image.png"), std::string::npos) << check.message;
}

TEST(FixtureChecksTest, WrongInputSizeIsCaught) {
  const fs::path case_dir = Fixtures() / "ixc2_vl/cases/image_chat";
  SKIP_WITHOUT(case_dir / "pixel_values.npy");
  ModelImageSpec wrong;
  wrong.version = "ixc2-vl";
  wrong.input_size = 336;  // clip_vision_config.json's image_size: the trap the spec avoids
  const ImageFixtureCheck check = CheckImageFixtureCase(case_dir, wrong, "ixc2_vl/image_chat");
  EXPECT_FALSE(check.passed);
  EXPECT_NE(check.message.find("[1,3,336,336]"), std::string::npos) << check.message;
}

TEST(FixtureChecksTest, EveryImageCaseOfEveryModelFolderPasses) {
  SKIP_WITHOUT(Fixtures());
  const std::vector<ImageFixtureCheck> checks = RunImageFixtureChecks(Fixtures());
  std::map<std::string, const ImageFixtureCheck*> by_name;
  double worst = 0.0;
  for (const auto& check : checks) {
    EXPECT_TRUE(check.passed) << check.case_name << ": " << check.message;
    by_name[check.case_name] = &check;
    worst = std::max(worst, check.max_abs_error);
    std::cout << "[ fixture  ] " << check.case_name << (check.passed ? " PASS: " : " FAIL: ") << check.message
              << "\n";
  }
  RecordProperty("max_abs_error", std::to_string(worst));
  // The public set's image cases, when present, must all have been found.
  for (const char* name : {"ixc1/image_chat", "ixc1/history_chat", "ixc2_vl/image_chat", "ixc2_vl/batch2_image_chat",
                           "ixc2_4khd/image_chat", "ixc2d5/image_chat"}) {
    const std::string model = std::string(name).substr(0, std::string(name).find('/'));
    if (fs::exists(Fixtures() / model / "checkpoint")) {
      EXPECT_TRUE(by_name.count(name)) << name << " was not checked";
    }
  }
}

TEST(TensorChecksumTest, ComputesPopulationStatisticsAndComparesEachField) {
  const std::vector<float> values{1, -2, 3, -4, 5, -6, 7, -8, 9, -10};
  const TensorChecksum c = ComputeTensorChecksum(values, {2, 5});
  EXPECT_DOUBLE_EQ(c.mean, -0.5);
  EXPECT_DOUBLE_EQ(c.abs_mean, 5.5);
  EXPECT_DOUBLE_EQ(c.std, std::sqrt(38.25));
  EXPECT_EQ(c.first8.size(), 8u);
  EXPECT_EQ(c.last8.front(), 3.0);

  nlohmann::json expected = {{"shape", {2, 5}},           {"mean", -0.5},     {"abs_mean", 5.5},
                             {"std", std::sqrt(38.25)},   {"first8", c.first8}, {"last8", c.last8}};
  double worst = -1;
  EXPECT_TRUE(CompareTensorChecksum(c, expected, 1e-6, 1e-6, &worst).ok());
  EXPECT_EQ(worst, 0.0);
  nlohmann::json bad_shape = expected;
  bad_shape["shape"] = {10};
  EXPECT_FALSE(CompareTensorChecksum(c, bad_shape, 1e-6, 1e-6).ok());
  nlohmann::json bad_value = expected;
  bad_value["last8"][7] = -10.001;
  auto status = CompareTensorChecksum(c, bad_value, 1e-6, 1e-6);
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find("last8[7]"), std::string::npos) << status.message();
}

}  // namespace
}  // namespace xcpipe::image
