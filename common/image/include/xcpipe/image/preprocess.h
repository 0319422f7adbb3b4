// The official image preprocessing of each XComposer version, as float32 CHW tensors.
//
//   1.0 and 2.0-VL (fixed size):   PIL Resize((S, S), BICUBIC) -> ToTensor (/255) -> Normalize.
//                                   S = 224 (1.0), 490 (VL); always a parameter, never assumed.
//   2.0-4KHD and 2.5 (HD tiles):   HD_transform(hd_num) on the PIL image (portrait transpose,
//                                   scale rule, BILINEAR resize, white padding to a multiple of
//                                   the tile side S, transpose back) -> ToTensor -> Normalize.
//                                   S = 336 (4KHD), 560 (2.5). The CLIP tower then sees
//                                   1 + gh*gw inputs: a bicubic "global view" of the whole padded
//                                   image (torch F.interpolate, no antialias) and the S x S tiles.
//
// ToTensor and Normalize are computed in float32 in the same order as torchvision
// ((u8 / 255) - mean) / std), with the mean/std rounded to float32 as torch does, so fixed-size
// and HD `pixel_values` are bit-identical to the official ones. The global view follows
// PyTorch's CPU bicubic kernel (Keys a = -0.75, half-pixel centres, clamped borders, height
// taps outside width taps, float32, with the reference build's fused multiply-adds) and
// reproduces the fixtures' checksums exactly.
//
// Thread-safe (pure functions). Failures are InvalidArgument values naming the offending
// parameter and the accepted range (a zero tile side, hd_num < 1, an image so elongated that
// its resized height would be 0 pixels).
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "xcpipe/base/status.h"
#include "xcpipe/image/image_types.h"

namespace xcpipe::image {

// Per-channel Normalize parameters, already rounded to float32.
struct NormalizeParams {
  std::array<float, 3> mean{};
  std::array<float, 3> std{};
};

// OpenAI CLIP's mean/std, used by every XComposer version. The decimal constants are rounded
// through double to float, as `torch.as_tensor([...], dtype=float32)` does.
NormalizeParams ClipNormalize();

// ToTensor + Normalize: [3, H, W] float32 from an RGB image.
FloatImage ToNormalizedTensor(const RgbImage& image, const NormalizeParams& normalize);

// 1.0 / 2.0-VL: bicubic resize to input_size x input_size (aspect ratio not kept), then
// ToTensor + Normalize. Returns [3, input_size, input_size].
StatusOr<FloatImage> PreprocessFixedSize(const RgbImage& image, int64_t input_size,
                                         const NormalizeParams& normalize = ClipNormalize());

// The two HD variants differ only in the transform's details.
enum class HdVariant : uint8_t {
  kXComposer2_4khd,  // tile 336; padding split top/bottom, top = (target - h) / 2
  kXComposer2_5,     // tile 560; scale also capped by ceil(w / 560); all padding at the bottom
};

struct HdOptions {
  HdVariant variant = HdVariant::kXComposer2_4khd;
  int64_t tile_size = 336;  // S: the CLIP tower's input side
  int64_t hd_num = 25;      // tile budget; chat() defaults: 25 (4KHD), 24 (2.5; 6 with >1 image)
};

// The geometry HD_transform chooses for one input size; everything is in the final (not
// transposed) orientation except the resize, which happens in the landscape orientation.
struct HdPlan {
  bool transposed = false;     // the input was portrait (width < height)
  int64_t scale = 0;           // tiles along the long side
  int64_t resized_width = 0;   // landscape orientation: scale * S
  int64_t resized_height = 0;  // landscape orientation: int(scale * S / ratio)
  int64_t pad_top = 0;         // landscape orientation, white rows above the resized image
  int64_t pad_bottom = 0;      // landscape orientation, white rows below it
  int64_t grid_h = 0;          // tiles down the final image
  int64_t grid_w = 0;          // tiles across the final image
};

// The official scale rule on (width, height); no pixels touched.
StatusOr<HdPlan> PlanHdTransform(int64_t width, int64_t height, const HdOptions& options);

// HD_transform / Image_transform: the padded RGB image of size (grid_w * S) x (grid_h * S).
StatusOr<RgbImage> HdTransform(const RgbImage& image, const HdOptions& options);

struct HdPixelValues {
  FloatImage pixel_values;  // [3, grid_h * S, grid_w * S], normalized
  int64_t grid_h = 0;
  int64_t grid_w = 0;
  int64_t tile_size = 0;
};

// HdTransform, then ToTensor + Normalize.
StatusOr<HdPixelValues> PreprocessHd(const RgbImage& image, const HdOptions& options,
                                     const NormalizeParams& normalize = ClipNormalize());

// torch.nn.functional.interpolate(x, (out_height, out_width), mode='bicubic',
// align_corners=False) on a CHW float tensor: no antialias, so downscaling samples.
StatusOr<FloatImage> InterpolateBicubicLikeTorch(const FloatImage& image, int64_t out_height, int64_t out_width);

// The [C, height, width] window of `image` whose top-left corner is (y0, x0).
StatusOr<FloatImage> CropFloatImage(const FloatImage& image, int64_t y0, int64_t x0, int64_t height, int64_t width);

// The CLIP tower inputs of an HD image, in the order the tower consumes them: [0] the global
// view (bicubic S x S of the whole padded image), then the grid_h * grid_w tiles, row-major.
StatusOr<std::vector<FloatImage>> MakeHdClipInputs(const HdPixelValues& hd);

}  // namespace xcpipe::image
