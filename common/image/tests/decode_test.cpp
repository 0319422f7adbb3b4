#include "xcpipe/image/decode.h"

#include <gtest/gtest.h>
#include <turbojpeg.h>

#include <filesystem>
#include <string>
#include <vector>

#include "png_builder.h"
#include "xcpipe/base/files.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::image {
namespace {

using testing::BuildPng;
using testing::PngSpec;
using testing::RgbPattern;

bool Contains(const Status& status, const std::string& needle) {
  return status.message().find(needle) != std::string::npos;
}

// Encodes `image` as JPEG with TurboJPEG (tests only).
std::string EncodeJpeg(const RgbImage& image, int subsampling, int quality, int flags = 0, bool grey = false) {
  tjhandle handle = tjInitCompress();
  unsigned char* out = nullptr;
  unsigned long size = 0;
  std::vector<unsigned char> grey_pixels;
  const unsigned char* src = image.pixels.data();
  int format = TJPF_RGB;
  if (grey) {
    for (size_t i = 0; i < image.pixels.size(); i += 3) grey_pixels.push_back(image.pixels[i]);
    src = grey_pixels.data();
    format = TJPF_GRAY;
    subsampling = TJSAMP_GRAY;
  }
  const int rc = tjCompress2(handle, src, static_cast<int>(image.width), 0, static_cast<int>(image.height), format,
                             &out, &size, subsampling, quality, flags);
  EXPECT_EQ(rc, 0) << tjGetErrorStr2(handle);
  std::string bytes(reinterpret_cast<char*>(out), size);
  tjFree(out);
  tjDestroy(handle);
  return bytes;
}

RgbImage Pattern(int64_t w, int64_t h) {
  RgbImage image = RgbImage::Filled(w, h, 0, 0, 0);
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) {
      image.at(x, y, 0) = static_cast<uint8_t>(x * 255 / (w - 1));
      image.at(x, y, 1) = static_cast<uint8_t>(y * 255 / (h - 1));
      image.at(x, y, 2) = 128;
    }
  }
  return image;
}

TEST(DetectImageFormatTest, RecognisesMagicBytes) {
  EXPECT_EQ(DetectImageFormat(BuildPng(RgbPattern(2, 2))).value(), ImageFormat::kPng);
  EXPECT_EQ(DetectImageFormat(std::string("\xFF\xD8\xFF\xE0", 4)).value(), ImageFormat::kJpeg);
}

TEST(DetectImageFormatTest, RefusesWrongMagicNamingWhatWasExpected) {
  auto gif = DetectImageFormat("GIF89a\x01\x00");
  ASSERT_FALSE(gif.ok());
  EXPECT_EQ(gif.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(gif.status(), "47 49 46 38")) << gif.status().message();
  EXPECT_TRUE(Contains(gif.status(), "PNG signature")) << gif.status().message();
  EXPECT_TRUE(Contains(gif.status(), "FF D8 FF")) << gif.status().message();

  auto empty = DecodeImage("");
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(empty.status(), "no bytes")) << empty.status().message();
}

TEST(DecodePngTest, Rgb8RoundTripsExactly) {
  const PngSpec spec = RgbPattern(13, 7);
  auto image = DecodeImage(BuildPng(spec));
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  ASSERT_EQ(image->width, 13);
  ASSERT_EQ(image->height, 7);
  for (uint32_t y = 0; y < 7; ++y) {
    for (uint32_t x = 0; x < 13; ++x) {
      const auto s = spec.samples(x, y);
      for (int c = 0; c < 3; ++c) ASSERT_EQ(image->at(x, y, c), s[c]) << x << "," << y << "," << c;
    }
  }
}

TEST(DecodePngTest, InterlacedEqualsProgressive) {
  PngSpec spec = RgbPattern(11, 9);
  auto plain = DecodeImage(BuildPng(spec));
  spec.interlaced = true;
  auto interlaced = DecodeImage(BuildPng(spec));
  ASSERT_TRUE(plain.ok() && interlaced.ok()) << interlaced.status().ToString();
  EXPECT_EQ(*plain, *interlaced);
}

TEST(DecodePngTest, RgbaDropsAlphaWithoutCompositing) {
  PngSpec spec;
  spec.width = 2;
  spec.height = 1;
  spec.color_type = 6;
  spec.samples = [](uint32_t x, uint32_t) {
    return x == 0 ? std::vector<uint32_t>{10, 20, 30, 0} : std::vector<uint32_t>{200, 100, 50, 128};
  };
  auto image = DecodeImage(BuildPng(spec));
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  // PIL's convert('RGB') keeps the colour of a fully transparent pixel.
  EXPECT_EQ(image->pixels, (std::vector<uint8_t>{10, 20, 30, 200, 100, 50}));
}

TEST(DecodePngTest, GreyIsReplicatedAndLowBitDepthsScaled) {
  PngSpec grey;
  grey.width = 3;
  grey.color_type = 0;
  grey.samples = [](uint32_t x, uint32_t) { return std::vector<uint32_t>{x * 100}; };
  auto g8 = DecodeImage(BuildPng(grey));
  ASSERT_TRUE(g8.ok()) << g8.status().ToString();
  EXPECT_EQ(g8->pixels, (std::vector<uint8_t>{0, 0, 0, 100, 100, 100, 200, 200, 200}));

  PngSpec one_bit = grey;
  one_bit.width = 10;
  one_bit.bit_depth = 1;
  one_bit.samples = [](uint32_t x, uint32_t) { return std::vector<uint32_t>{x % 2}; };
  auto g1 = DecodeImage(BuildPng(one_bit));
  ASSERT_TRUE(g1.ok()) << g1.status().ToString();
  for (int x = 0; x < 10; ++x) EXPECT_EQ(g1->at(x, 0, 1), x % 2 ? 255 : 0);

  PngSpec four_bit = grey;
  four_bit.width = 5;
  four_bit.bit_depth = 4;
  four_bit.samples = [](uint32_t x, uint32_t) { return std::vector<uint32_t>{x * 3}; };
  auto g4 = DecodeImage(BuildPng(four_bit));
  ASSERT_TRUE(g4.ok()) << g4.status().ToString();
  for (int x = 0; x < 5; ++x) EXPECT_EQ(g4->at(x, 0, 2), x * 3 * 17);
}

TEST(DecodePngTest, GreyAlphaDropsAlpha) {
  PngSpec spec;
  spec.width = 2;
  spec.color_type = 4;
  spec.samples = [](uint32_t x, uint32_t) { return std::vector<uint32_t>{x == 0 ? 40u : 250u, x == 0 ? 0u : 9u}; };
  auto image = DecodeImage(BuildPng(spec));
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  EXPECT_EQ(image->pixels, (std::vector<uint8_t>{40, 40, 40, 250, 250, 250}));
}

TEST(DecodePngTest, PaletteWithTransparencyGivesPaletteColours) {
  PngSpec spec;
  spec.width = 4;
  spec.color_type = 3;
  spec.bit_depth = 2;
  spec.palette = std::string("\x0A\x0B\x0C\xF0\xF1\xF2\x00\x80\xFF", 9);  // 3 entries
  spec.trns = std::string("\x00\x40", 2);                                  // entry 0 transparent
  spec.samples = [](uint32_t x, uint32_t) { return std::vector<uint32_t>{x % 3}; };
  auto image = DecodeImage(BuildPng(spec));
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  EXPECT_EQ(image->pixels, (std::vector<uint8_t>{10, 11, 12, 240, 241, 242, 0, 128, 255, 10, 11, 12}));
}

TEST(DecodePngTest, SixteenBitKeepsHighByteAndGreySaturatesLikePil) {
  PngSpec rgb16;
  rgb16.width = 1;
  rgb16.bit_depth = 16;
  rgb16.samples = [](uint32_t, uint32_t) { return std::vector<uint32_t>{0x12FF, 0xAB01, 0x0080}; };
  auto rgb = DecodeImage(BuildPng(rgb16));
  ASSERT_TRUE(rgb.ok()) << rgb.status().ToString();
  EXPECT_EQ(rgb->pixels, (std::vector<uint8_t>{0x12, 0xAB, 0x00}));

  PngSpec grey16;
  grey16.width = 3;
  grey16.bit_depth = 16;
  grey16.color_type = 0;
  grey16.samples = [](uint32_t x, uint32_t) { return std::vector<uint32_t>{x == 0 ? 7u : (x == 1 ? 255u : 256u)}; };
  auto grey = DecodeImage(BuildPng(grey16));
  ASSERT_TRUE(grey.ok()) << grey.status().ToString();
  EXPECT_EQ(grey->pixels, (std::vector<uint8_t>{7, 7, 7, 255, 255, 255, 255, 255, 255}));
}

TEST(DecodePngTest, RefusesEveryTruncation) {
  const std::string png = BuildPng(RgbPattern(9, 5));
  for (size_t cut = 0; cut < png.size(); ++cut) {
    auto image = DecodeImage(png.substr(0, cut));
    ASSERT_FALSE(image.ok()) << "a PNG cut at " << cut << " of " << png.size() << " bytes was accepted";
    EXPECT_EQ(image.status().code(), StatusCode::kInvalidArgument) << cut;
    if (cut >= 8) {
      EXPECT_TRUE(Contains(image.status(), "truncated")) << "cut " << cut << ": " << image.status().message();
    }
  }
}

TEST(DecodePngTest, RefusesTruncatedFixtureImage) {
  const auto path = xcpipe::testing::FixturesDir() / "ixc2_vl/cases/image_chat/image.png";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "fixture missing: " << path;
  auto bytes = ReadFileToString(path);
  ASSERT_TRUE(bytes.ok());
  ASSERT_TRUE(DecodeImage(*bytes).ok());
  for (size_t cut : {bytes->size() / 2, bytes->size() - 20, bytes->size() - 1}) {
    auto image = DecodeImage(bytes->substr(0, cut));
    ASSERT_FALSE(image.ok()) << cut;
    EXPECT_TRUE(Contains(image.status(), "PNG is truncated")) << image.status().message();
  }
}

TEST(DecodePngTest, RefusesCorruptData) {
  const std::string good = BuildPng(RgbPattern(6, 6));
  // A flipped byte in the IDAT payload breaks its CRC.
  std::string bad_idat = good;
  bad_idat[good.find("IDAT") + 20] ^= 0x55;
  auto idat = DecodeImage(bad_idat);
  ASSERT_FALSE(idat.ok());
  EXPECT_EQ(idat.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(idat.status(), "corrupt PNG")) << idat.status().message();

  std::string bad_ihdr = good;
  bad_ihdr[18] ^= 0x01;  // width changes, CRC does not
  auto ihdr = DecodeImage(bad_ihdr);
  ASSERT_FALSE(ihdr.ok());
  EXPECT_TRUE(Contains(ihdr.status(), "IHDR chunk's CRC")) << ihdr.status().message();

  std::string not_ihdr = good;
  not_ihdr.replace(12, 4, "IDAT");
  auto first = DecodeImage(not_ihdr);
  ASSERT_FALSE(first.ok());
  EXPECT_TRUE(Contains(first.status(), "expected 'IHDR'")) << first.status().message();
}

TEST(DecodePngTest, RefusesInvalidBitDepthAndZeroSize) {
  std::string png("\x89PNG\r\n\x1a\n", 8);
  testing::AppendChunk(&png, "IHDR", testing::IhdrPayload(4, 4, 3, 2, 0));
  auto depth = ReadImageHeader(png);
  ASSERT_FALSE(depth.ok());
  EXPECT_TRUE(Contains(depth.status(), "bit depth 3")) << depth.status().message();

  std::string zero("\x89PNG\r\n\x1a\n", 8);
  testing::AppendChunk(&zero, "IHDR", testing::IhdrPayload(0, 4, 8, 2, 0));
  auto size = ReadImageHeader(zero);
  ASSERT_FALSE(size.ok());
  EXPECT_EQ(size.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(size.status(), "at least 1")) << size.status().message();
}

TEST(DecodeLimitsTest, HugeDeclaredSizeIsRefusedBeforeDecoding) {
  // A valid signature and IHDR declaring 100000 x 100000, and nothing else: were it decoded,
  // it would first fail as truncated; the limit must answer first.
  std::string png("\x89PNG\r\n\x1a\n", 8);
  testing::AppendChunk(&png, "IHDR", testing::IhdrPayload(100000, 100000, 8, 2, 0));
  auto side = DecodeImage(png);
  ASSERT_FALSE(side.ok());
  EXPECT_EQ(side.status().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(Contains(side.status(), "100000x100000")) << side.status().message();
  EXPECT_TRUE(Contains(side.status(), "max_side")) << side.status().message();

  ImageLimits wide;
  wide.max_side = 200000;
  auto pixels = DecodeImage(png, wide);
  ASSERT_FALSE(pixels.ok());
  EXPECT_EQ(pixels.status().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(Contains(pixels.status(), "max_pixels")) << pixels.status().message();
}

TEST(DecodeLimitsTest, EachLimitIsEnforcedAndNamed) {
  const std::string png = BuildPng(RgbPattern(40, 30));
  ImageLimits tight_bytes;
  tight_bytes.max_encoded_bytes = png.size() - 1;
  auto bytes = DecodeImage(png, tight_bytes);
  ASSERT_FALSE(bytes.ok());
  EXPECT_EQ(bytes.status().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(Contains(bytes.status(), "max_encoded_bytes")) << bytes.status().message();

  ImageLimits tight_side;
  tight_side.max_side = 39;
  EXPECT_EQ(DecodeImage(png, tight_side).status().code(), StatusCode::kResourceExhausted);
  ImageLimits tight_pixels;
  tight_pixels.max_pixels = 40 * 30 - 1;
  EXPECT_EQ(DecodeImage(png, tight_pixels).status().code(), StatusCode::kResourceExhausted);
  ImageLimits exact;
  exact.max_side = 40;
  exact.max_pixels = 40 * 30;
  exact.max_encoded_bytes = png.size();
  EXPECT_TRUE(DecodeImage(png, exact).ok());
}

TEST(DecodeJpegTest, DecodesColourAndGrey) {
  const RgbImage pattern = Pattern(32, 24);
  auto colour = DecodeImage(EncodeJpeg(pattern, TJSAMP_444, 100));
  ASSERT_TRUE(colour.ok()) << colour.status().ToString();
  ASSERT_EQ(colour->width, 32);
  ASSERT_EQ(colour->height, 24);
  int worst = 0;
  for (size_t i = 0; i < pattern.pixels.size(); ++i) {
    worst = std::max(worst, std::abs(int{pattern.pixels[i]} - int{colour->pixels[i]}));
  }
  EXPECT_LE(worst, 4);

  auto grey = DecodeImage(EncodeJpeg(pattern, TJSAMP_GRAY, 95, 0, /*grey=*/true));
  ASSERT_TRUE(grey.ok()) << grey.status().ToString();
  for (size_t i = 0; i < grey->pixels.size(); i += 3) {
    ASSERT_EQ(grey->pixels[i], grey->pixels[i + 1]);
    ASSERT_EQ(grey->pixels[i], grey->pixels[i + 2]);
  }

  auto progressive = DecodeImage(EncodeJpeg(pattern, TJSAMP_420, 90, TJFLAG_PROGRESSIVE));
  ASSERT_TRUE(progressive.ok()) << progressive.status().ToString();
  auto baseline = DecodeImage(EncodeJpeg(pattern, TJSAMP_420, 90));
  ASSERT_TRUE(baseline.ok());
  EXPECT_EQ(*progressive, *baseline);  // same coefficients, same decoder
}

TEST(DecodeJpegTest, RefusesTruncationAndCorruption) {
  const std::string jpeg = EncodeJpeg(Pattern(64, 48), TJSAMP_420, 90);
  for (size_t cut : {size_t{3}, size_t{40}, jpeg.size() / 2, jpeg.size() - 2}) {
    auto image = DecodeImage(jpeg.substr(0, cut));
    ASSERT_FALSE(image.ok()) << "a JPEG cut at " << cut << " of " << jpeg.size() << " bytes was accepted";
    EXPECT_EQ(image.status().code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(Contains(image.status(), "truncated")) << cut << ": " << image.status().message();
  }
  std::string garbage = jpeg.substr(0, 3) + std::string(200, '\x42');
  auto corrupt = DecodeImage(garbage);
  ASSERT_FALSE(corrupt.ok());
  EXPECT_EQ(corrupt.status().code(), StatusCode::kInvalidArgument);
}

TEST(DecodeJpegTest, HugeDeclaredSizeIsRefusedBeforeDecoding) {
  std::string jpeg = EncodeJpeg(Pattern(16, 16), TJSAMP_444, 90);
  const size_t sof = jpeg.find("\xFF\xC0");
  ASSERT_NE(sof, std::string::npos);
  // SOF0: FF C0, length (2), precision (1), height (2), width (2).
  jpeg[sof + 5] = '\xEA';
  jpeg[sof + 6] = '\x60';  // 60000
  jpeg[sof + 7] = '\xEA';
  jpeg[sof + 8] = '\x60';
  auto image = DecodeImage(jpeg);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.status().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(Contains(image.status(), "60000x60000")) << image.status().message();
}

TEST(ReadImageFileTest, ReadsFixtureAndNamesMissingFiles) {
  const auto path = xcpipe::testing::FixturesDir() / "ixc2_vl/cases/image_chat/image.png";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "fixture missing: " << path;
  auto image = ReadImageFile(path);
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  EXPECT_EQ(image->width, 320);
  EXPECT_EQ(image->height, 240);

  auto missing = ReadImageFile("/nonexistent/picture.png");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);

  ImageLimits small;
  small.max_encoded_bytes = 100;
  auto big = ReadImageFile(path, small);
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(Contains(big.status(), "max_encoded_bytes")) << big.status().message();
}

}  // namespace
}  // namespace xcpipe::image
