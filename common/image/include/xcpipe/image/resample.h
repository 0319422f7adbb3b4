// Geometric operations on RgbImage that reproduce Pillow bit for bit, because the official
// preprocessing runs on PIL images and the fixtures hold its exact output.
//
// ResizeLikePil is Pillow's `Image.resize(size, BILINEAR | BICUBIC)` (libImaging/Resample.c):
//   - separable convolution, horizontal pass first (only over the source rows the vertical pass
//     will read), then vertical; a pass whose size does not change is skipped;
//   - the filter support is widened by the downscale factor (antialiasing), so shrinking
//     averages every source pixel instead of sampling;
//   - tap weights are computed in double, normalised to sum 1, then turned into fixed point
//     with 22 fractional bits (PRECISION_BITS = 32 - 8 - 2) and rounded half away from zero;
//   - each pass accumulates in 32-bit integers starting from one half, and the result is
//     shifted back and clipped to 0..255, so the intermediate image is 8-bit (as in Pillow).
//   BICUBIC is Keys' cubic with a = -0.5 and support 2; BILINEAR is the triangle with support 1.
//
// TransposeLikePil is `Image.transpose(Image.TRANSPOSE)`: out(x, y) = in(y, x).
//
// Thread-safe (pure functions). Failures are InvalidArgument values (non-positive or oversized
// output sizes, an input whose buffer does not match its dimensions).
#pragma once

#include <cstdint>

#include "xcpipe/base/status.h"
#include "xcpipe/image/image_types.h"

namespace xcpipe::image {

enum class ResampleFilter : uint8_t {
  kBilinear,  // PIL.Image.BILINEAR; torchvision's default InterpolationMode for PIL inputs
  kBicubic,   // PIL.Image.BICUBIC
};

// Largest output side ResizeLikePil produces: far above any model input, small enough that
// index arithmetic and buffers cannot overflow.
inline constexpr int64_t kMaxResizeSide = 1 << 16;

StatusOr<RgbImage> ResizeLikePil(const RgbImage& image, int64_t out_width, int64_t out_height,
                                 ResampleFilter filter);

RgbImage TransposeLikePil(const RgbImage& image);

}  // namespace xcpipe::image
