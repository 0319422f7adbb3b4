#include "xcpipe/image/preprocess.h"

#include <gtest/gtest.h>

#include <cmath>

#include "xcpipe/image/resample.h"

namespace xcpipe::image {
namespace {

RgbImage Pattern(int64_t w, int64_t h) {
  RgbImage image = RgbImage::Filled(w, h, 0, 0, 0);
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) {
      image.at(x, y, 0) = static_cast<uint8_t>((x * 13 + y * 3) % 256);
      image.at(x, y, 1) = static_cast<uint8_t>((y * 17) % 256);
      image.at(x, y, 2) = static_cast<uint8_t>((x * y) % 256);
    }
  }
  return image;
}

TEST(NormalizeTest, FollowsTorchvisionFloat32Steps) {
  const NormalizeParams clip = ClipNormalize();
  EXPECT_EQ(clip.mean[0], static_cast<float>(0.48145466));
  EXPECT_EQ(clip.std[2], static_cast<float>(0.27577711));
  RgbImage image = RgbImage::Filled(2, 1, 255, 0, 128);
  const FloatImage t = ToNormalizedTensor(image, clip);
  ASSERT_EQ(t.channels, 3);
  ASSERT_EQ(t.height, 1);
  ASSERT_EQ(t.width, 2);
  EXPECT_EQ(t.at(0, 0, 1), (1.0f - clip.mean[0]) / clip.std[0]);
  EXPECT_EQ(t.at(1, 0, 0), (0.0f - clip.mean[1]) / clip.std[1]);
  EXPECT_EQ(t.at(2, 0, 0), (128.0f / 255.0f - clip.mean[2]) / clip.std[2]);
  // White in the XComposer fixtures' HD padding: 2.1458969116210938 in channel 2.
  EXPECT_FLOAT_EQ((1.0f - clip.mean[2]) / clip.std[2], 2.1458969116210938f);
}

TEST(PreprocessFixedSizeTest, SizeIsAParameter) {
  const RgbImage image = Pattern(40, 30);
  for (int64_t size : {224, 490, 7}) {
    auto t = PreprocessFixedSize(image, size);
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    EXPECT_EQ(t->channels, 3);
    EXPECT_EQ(t->height, size);
    EXPECT_EQ(t->width, size);
    auto resized = ResizeLikePil(image, size, size, ResampleFilter::kBicubic);
    ASSERT_TRUE(resized.ok());
    EXPECT_EQ(*t, ToNormalizedTensor(*resized, ClipNormalize()));
  }
  auto zero = PreprocessFixedSize(image, 0);
  ASSERT_FALSE(zero.ok());
  EXPECT_NE(zero.status().message().find("input size 0"), std::string::npos);
}

TEST(PlanHdTransformTest, FourKhdLandscape) {
  // The 4KHD fixture: 480x200, hd_num 4 -> scale 2 (3 * ceil(3/2.4) = 6 > 4), 672x280,
  // padded to 336 with 28 rows above and 28 below -> grid 1x2.
  auto plan = PlanHdTransform(480, 200, {HdVariant::kXComposer2_4khd, 336, 4});
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_FALSE(plan->transposed);
  EXPECT_EQ(plan->scale, 2);
  EXPECT_EQ(plan->resized_width, 672);
  EXPECT_EQ(plan->resized_height, 280);
  EXPECT_EQ(plan->pad_top, 28);
  EXPECT_EQ(plan->pad_bottom, 28);
  EXPECT_EQ(plan->grid_h, 1);
  EXPECT_EQ(plan->grid_w, 2);
}

TEST(PlanHdTransformTest, FourKhdPortraitIsPlannedTransposed) {
  auto plan = PlanHdTransform(200, 480, {HdVariant::kXComposer2_4khd, 336, 4});
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE(plan->transposed);
  EXPECT_EQ(plan->resized_width, 672);
  EXPECT_EQ(plan->grid_h, 2);
  EXPECT_EQ(plan->grid_w, 1);
}

TEST(PlanHdTransformTest, TwoPointFivePadsAtTheBottomAndCapsScale) {
  // The 2.5 fixture: 640x300 -> 1120x525, 35 white rows at the bottom.
  auto plan = PlanHdTransform(640, 300, {HdVariant::kXComposer2_5, 560, 4});
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->resized_width, 1120);
  EXPECT_EQ(plan->resized_height, 525);
  EXPECT_EQ(plan->pad_top, 0);
  EXPECT_EQ(plan->pad_bottom, 35);
  EXPECT_EQ(plan->grid_w, 2);
  // A small image is not blown up past ceil(w / 560) tiles in 2.5, but is in 4KHD.
  auto small25 = PlanHdTransform(300, 100, {HdVariant::kXComposer2_5, 560, 24});
  auto small4k = PlanHdTransform(300, 100, {HdVariant::kXComposer2_4khd, 560, 24});
  ASSERT_TRUE(small25.ok() && small4k.ok());
  EXPECT_EQ(small25->scale, 1);
  EXPECT_EQ(small4k->scale, 8);  // 8 * ceil(8/3) = 24 <= 24; 9 * 3 = 27 > 24
}

TEST(PlanHdTransformTest, RefusesBadParameters) {
  EXPECT_EQ(PlanHdTransform(10, 10, {HdVariant::kXComposer2_4khd, 336, 0}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanHdTransform(10, 10, {HdVariant::kXComposer2_4khd, 0, 4}).status().code(),
            StatusCode::kInvalidArgument);
  auto thin = PlanHdTransform(20000, 1, {HdVariant::kXComposer2_4khd, 336, 1});
  ASSERT_FALSE(thin.ok());
  EXPECT_NE(thin.status().message().find("too elongated"), std::string::npos) << thin.status().message();
}

TEST(HdTransformTest, PortraitIsTheTransposeOfLandscape) {
  const RgbImage landscape = Pattern(90, 40);
  for (auto variant : {HdVariant::kXComposer2_4khd, HdVariant::kXComposer2_5}) {
    const HdOptions options{variant, 28, 6};
    auto a = HdTransform(landscape, options);
    auto b = HdTransform(TransposeLikePil(landscape), options);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(TransposeLikePil(*a), *b);
    EXPECT_EQ(a->width % 28, 0);
    EXPECT_EQ(a->height % 28, 0);
  }
}

TEST(HdTransformTest, PaddingIsWhiteWhereThePlanSays) {
  const RgbImage image = RgbImage::Filled(100, 30, 0, 0, 0);
  auto plan = PlanHdTransform(100, 30, {HdVariant::kXComposer2_4khd, 50, 4});
  auto out = HdTransform(image, {HdVariant::kXComposer2_4khd, 50, 4});
  ASSERT_TRUE(plan.ok() && out.ok());
  ASSERT_GT(plan->pad_top, 0);
  EXPECT_EQ(out->at(0, 0, 0), 255);
  EXPECT_EQ(out->at(0, plan->pad_top, 0), 0);
  EXPECT_EQ(out->at(0, plan->pad_top + plan->resized_height - 1, 0), 0);
  EXPECT_EQ(out->at(0, out->height - 1, 0), 255);
  auto bottom = HdTransform(image, {HdVariant::kXComposer2_5, 50, 4});
  ASSERT_TRUE(bottom.ok());
  EXPECT_EQ(bottom->at(3, 0, 1), 0);
  EXPECT_EQ(bottom->at(3, bottom->height - 1, 1), 255);
}

FloatImage RampTensor(int64_t c, int64_t h, int64_t w) {
  FloatImage t{c, h, w, std::vector<float>(static_cast<size_t>(c * h * w))};
  for (int64_t k = 0; k < c; ++k) {
    for (int64_t y = 0; y < h; ++y) {
      for (int64_t x = 0; x < w; ++x) t.at(k, y, x) = static_cast<float>(x) + 0.25f * static_cast<float>(y) - k;
    }
  }
  return t;
}

TEST(InterpolateBicubicLikeTorchTest, SameSizeIsExact) {
  const FloatImage t = RampTensor(2, 5, 7);
  auto out = InterpolateBicubicLikeTorch(t, 5, 7);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out, t);
}

TEST(InterpolateBicubicLikeTorchTest, HalvingSamplesBetweenPixelsWithoutAntialias) {
  // Width 16 -> 8: source x = 2*ox + 0.5, t = 0.5. A cubic convolution reproduces a linear
  // ramp exactly away from the clamped border, so the result is x + 0.5.
  const FloatImage t = RampTensor(1, 3, 16);
  auto out = InterpolateBicubicLikeTorch(t, 3, 8);
  ASSERT_TRUE(out.ok());
  for (int64_t y = 0; y < 3; ++y) {
    for (int64_t ox = 1; ox < 7; ++ox) {
      EXPECT_NEAR(out->at(0, y, ox), 2.0f * ox + 0.5f + 0.25f * y, 1e-5) << ox;
    }
  }
  // At the left border the clamp repeats pixel 0: taps at x = -1, 0, 1, 2 read 0, 0, 1, 2 with
  // weights (-0.09375, 0.59375, 0.59375, -0.09375) -> 0.40625 (+0.25 y).
  EXPECT_NEAR(out->at(0, 0, 0), 0.40625f, 1e-6);
}

TEST(MakeHdClipInputsTest, GlobalViewThenRowMajorTiles) {
  HdPixelValues hd;
  hd.tile_size = 4;
  hd.grid_h = 2;
  hd.grid_w = 3;
  hd.pixel_values = RampTensor(3, 8, 12);
  auto inputs = MakeHdClipInputs(hd);
  ASSERT_TRUE(inputs.ok()) << inputs.status().ToString();
  ASSERT_EQ(inputs->size(), 7u);
  auto global = InterpolateBicubicLikeTorch(hd.pixel_values, 4, 4);
  ASSERT_TRUE(global.ok());
  EXPECT_EQ((*inputs)[0], *global);
  // Tile 5 = row 1, column 1.
  EXPECT_EQ((*inputs)[5].at(2, 1, 3), hd.pixel_values.at(2, 4 + 1, 4 + 3));
  EXPECT_EQ((*inputs)[3].at(0, 0, 0), hd.pixel_values.at(0, 0, 8));

  hd.grid_w = 2;
  EXPECT_FALSE(MakeHdClipInputs(hd).ok());
}

TEST(CropFloatImageTest, RefusesWindowsOutside) {
  const FloatImage t = RampTensor(1, 4, 4);
  EXPECT_TRUE(CropFloatImage(t, 1, 1, 3, 3).ok());
  EXPECT_FALSE(CropFloatImage(t, 2, 0, 3, 3).ok());
  EXPECT_FALSE(CropFloatImage(t, -1, 0, 1, 1).ok());
}

TEST(PreprocessHdTest, ReturnsGridAndNormalizedPixels) {
  const RgbImage image = Pattern(90, 40);
  const HdOptions options{HdVariant::kXComposer2_5, 28, 6};
  auto hd = PreprocessHd(image, options);
  auto rgb = HdTransform(image, options);
  ASSERT_TRUE(hd.ok() && rgb.ok());
  EXPECT_EQ(hd->grid_h * 28, rgb->height);
  EXPECT_EQ(hd->grid_w * 28, rgb->width);
  EXPECT_EQ(hd->pixel_values, ToNormalizedTensor(*rgb, ClipNormalize()));
}

}  // namespace
}  // namespace xcpipe::image
