// The two plain image values of the vision path, with no dependency on torch:
//
//   RgbImage    8-bit RGB pixels as decoded from PNG/JPEG (what PIL calls an "RGB" image).
//   FloatImage  a float32 CHW tensor (what torchvision's ToTensor + Normalize produce), ready to
//               be framed onto the wire or wrapped by `torch::from_blob` on a worker.
//
// Value types: copyable, movable, no hidden sharing. Thread-compatible. Accessors do not check
// bounds (callers index within width/height/channels); the producers in this module always
// return images whose buffer size equals the product of their dimensions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace xcpipe::image {

struct RgbImage {
  int64_t width = 0;
  int64_t height = 0;
  // Row-major, 3 bytes per pixel (R, G, B), no row padding: size == width * height * 3.
  std::vector<uint8_t> pixels;

  // A width x height image of one colour.
  static RgbImage Filled(int64_t width, int64_t height, uint8_t r, uint8_t g, uint8_t b);

  uint8_t at(int64_t x, int64_t y, int channel) const {
    return pixels[static_cast<size_t>((y * width + x) * 3 + channel)];
  }
  uint8_t& at(int64_t x, int64_t y, int channel) {
    return pixels[static_cast<size_t>((y * width + x) * 3 + channel)];
  }
  friend bool operator==(const RgbImage&, const RgbImage&) = default;
};

struct FloatImage {
  int64_t channels = 0;
  int64_t height = 0;
  int64_t width = 0;
  // Channel-major (C, H, W), contiguous: size == channels * height * width.
  std::vector<float> data;

  int64_t numel() const { return channels * height * width; }
  float at(int64_t c, int64_t y, int64_t x) const {
    return data[static_cast<size_t>((c * height + y) * width + x)];
  }
  float& at(int64_t c, int64_t y, int64_t x) { return data[static_cast<size_t>((c * height + y) * width + x)]; }
  friend bool operator==(const FloatImage&, const FloatImage&) = default;
};

}  // namespace xcpipe::image
