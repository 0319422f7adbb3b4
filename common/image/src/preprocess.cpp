#include "xcpipe/image/preprocess.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "xcpipe/image/resample.h"

namespace xcpipe::image {
namespace {

// hd_num beyond this would ask for images wider than ResizeLikePil produces anyway.
constexpr int64_t kMaxHdNum = 4096;

std::string Size(int64_t w, int64_t h) { return std::to_string(w) + "x" + std::to_string(h); }

Status CheckRgb(const RgbImage& image, const char* what) {
  if (image.width <= 0 || image.height <= 0 ||
      image.pixels.size() != static_cast<size_t>(image.width * image.height * 3)) {
    return InvalidArgumentError(std::string(what) + ": the RGB image is " + Size(image.width, image.height) +
                                " with " + std::to_string(image.pixels.size()) +
                                " bytes; expected positive sides and width*height*3 bytes");
  }
  return OkStatus();
}

Status CheckFloat(const FloatImage& image, const char* what) {
  if (image.channels <= 0 || image.height <= 0 || image.width <= 0 ||
      image.data.size() != static_cast<size_t>(image.numel())) {
    return InvalidArgumentError(std::string(what) + ": the tensor is [" + std::to_string(image.channels) + ", " +
                                std::to_string(image.height) + ", " + std::to_string(image.width) + "] with " +
                                std::to_string(image.data.size()) +
                                " values; expected positive dimensions and C*H*W values");
  }
  return OkStatus();
}

// PyTorch's cubic convolution kernels (Keys, A = -0.75), in float like its CPU kernel.
float CubicNear(float x, float a) { return ((a + 2) * x - (a + 3)) * x * x + 1; }        // |x| <= 1
float CubicFar(float x, float a) { return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a; }  // 1 < |x| < 2

struct CubicTaps {
  std::vector<std::array<int64_t, 4>> index;  // clamped source indices
  std::vector<std::array<float, 4>> weight;
};

CubicTaps ComputeCubicTaps(int64_t in_size, int64_t out_size) {
  // align_corners=False without an explicit scale factor: scale = in / out, in float.
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  CubicTaps taps;
  taps.index.resize(static_cast<size_t>(out_size));
  taps.weight.resize(static_cast<size_t>(out_size));
  for (int64_t i = 0; i < out_size; ++i) {
    // Half-pixel centres; for cubic the source index is not clamped at 0 before flooring.
    const float real = scale * (static_cast<float>(i) + 0.5f) - 0.5f;
    const float floored = std::floor(real);
    const auto base = static_cast<int64_t>(floored);
    const float t = real - floored;
    const float a = -0.75f;
    auto& w = taps.weight[static_cast<size_t>(i)];
    w[0] = CubicFar(t + 1.0f, a);
    w[1] = CubicNear(t, a);
    const float u = 1.0f - t;  // kept as torch writes it: (1 - t) + 1 rounds unlike 2 - t
    w[2] = CubicNear(u, a);
    w[3] = CubicFar(u + 1.0f, a);
    for (int j = 0; j < 4; ++j) {
      int64_t s = base - 1 + j;
      s = s < 0 ? 0 : (s > in_size - 1 ? in_size - 1 : s);
      taps.index[static_cast<size_t>(i)][static_cast<size_t>(j)] = s;
    }
  }
  return taps;
}

}  // namespace

NormalizeParams ClipNormalize() {
  // Python floats (doubles) rounded to float32, exactly as torch.as_tensor does.
  return NormalizeParams{
      {static_cast<float>(0.48145466), static_cast<float>(0.4578275), static_cast<float>(0.40821073)},
      {static_cast<float>(0.26862954), static_cast<float>(0.26130258), static_cast<float>(0.27577711)}};
}

FloatImage ToNormalizedTensor(const RgbImage& image, const NormalizeParams& normalize) {
  FloatImage out;
  out.channels = 3;
  out.height = image.height;
  out.width = image.width;
  out.data.resize(static_cast<size_t>(out.numel()));
  const size_t plane = static_cast<size_t>(image.width * image.height);
  for (int c = 0; c < 3; ++c) {
    float* dst = out.data.data() + static_cast<size_t>(c) * plane;
    const float mean = normalize.mean[static_cast<size_t>(c)];
    const float std = normalize.std[static_cast<size_t>(c)];
    for (size_t i = 0; i < plane; ++i) {
      // ToTensor: u8 -> float32, / 255. Normalize: (x - mean) / std. Same float32 steps as torch.
      const float x = static_cast<float>(image.pixels[3 * i + static_cast<size_t>(c)]) / 255.0f;
      dst[i] = (x - mean) / std;
    }
  }
  return out;
}

StatusOr<FloatImage> PreprocessFixedSize(const RgbImage& image, int64_t input_size, const NormalizeParams& normalize) {
  XCPIPE_RETURN_IF_ERROR(CheckRgb(image, "fixed-size preprocessing"));
  if (input_size <= 0 || input_size > kMaxResizeSide) {
    return InvalidArgumentError("fixed-size preprocessing: input size " + std::to_string(input_size) +
                                " is out of range; expected 1.." + std::to_string(kMaxResizeSide) +
                                " (the model's image size, e.g. 490 for XComposer2-VL, 224 for 1.0)");
  }
  XCPIPE_ASSIGN_OR_RETURN(RgbImage resized, ResizeLikePil(image, input_size, input_size, ResampleFilter::kBicubic));
  return ToNormalizedTensor(resized, normalize);
}

StatusOr<HdPlan> PlanHdTransform(int64_t width, int64_t height, const HdOptions& options) {
  const int64_t s = options.tile_size;
  if (s <= 0 || s > kMaxResizeSide) {
    return InvalidArgumentError("HD transform: tile size " + std::to_string(s) + " is out of range; expected 1.." +
                                std::to_string(kMaxResizeSide) + " (336 for 4KHD, 560 for 2.5)");
  }
  if (options.hd_num < 1 || options.hd_num > kMaxHdNum) {
    return InvalidArgumentError("HD transform: hd_num " + std::to_string(options.hd_num) + " is out of range; expected 1.." +
                                std::to_string(kMaxHdNum));
  }
  if (width <= 0 || height <= 0) {
    return InvalidArgumentError("HD transform: image size " + Size(width, height) + "; expected positive sides");
  }
  HdPlan plan;
  plan.transposed = width < height;
  const int64_t w = plan.transposed ? height : width;  // landscape orientation from here on
  const int64_t h = plan.transposed ? width : height;
  const double ratio = static_cast<double>(w) / static_cast<double>(h);

  // The largest scale with scale * ceil(scale / ratio) <= hd_num (the official loop, in double).
  int64_t scale = 1;
  while (static_cast<double>(scale) * std::ceil(static_cast<double>(scale) / ratio) <=
         static_cast<double>(options.hd_num)) {
    ++scale;
  }
  --scale;
  if (options.variant == HdVariant::kXComposer2_5) {
    // 2.5 never upsamples past the tiles the width needs.
    const auto cap = static_cast<int64_t>(std::ceil(static_cast<double>(w) / static_cast<double>(s)));
    if (cap < scale) scale = cap;
  }
  plan.scale = scale;
  plan.resized_width = scale * s;
  plan.resized_height = static_cast<int64_t>(static_cast<double>(plan.resized_width) / ratio);
  if (plan.resized_width > kMaxResizeSide) {
    return InvalidArgumentError("HD transform: hd_num " + std::to_string(options.hd_num) + " gives " +
                                std::to_string(scale) + " tiles of " + std::to_string(s) + " px across, wider than " +
                                std::to_string(kMaxResizeSide) + " px; lower hd_num");
  }
  if (plan.resized_height < 1) {
    return InvalidArgumentError("HD transform: a " + Size(width, height) + " image is too elongated: resizing it to " +
                                std::to_string(plan.resized_width) +
                                " px along its long side leaves 0 px along the short side; expected an aspect ratio "
                                "below " + std::to_string(plan.resized_width) + ":1");
  }
  const int64_t target = (plan.resized_height + s - 1) / s * s;
  const int64_t padding = target - plan.resized_height;
  plan.pad_top = options.variant == HdVariant::kXComposer2_4khd ? padding / 2 : 0;
  plan.pad_bottom = padding - plan.pad_top;
  const int64_t tiles_long = plan.resized_width / s;
  const int64_t tiles_short = target / s;
  plan.grid_w = plan.transposed ? tiles_short : tiles_long;
  plan.grid_h = plan.transposed ? tiles_long : tiles_short;
  return plan;
}

StatusOr<RgbImage> HdTransform(const RgbImage& image, const HdOptions& options) {
  XCPIPE_RETURN_IF_ERROR(CheckRgb(image, "HD transform"));
  XCPIPE_ASSIGN_OR_RETURN(HdPlan plan, PlanHdTransform(image.width, image.height, options));
  const RgbImage landscape = plan.transposed ? TransposeLikePil(image) : image;
  XCPIPE_ASSIGN_OR_RETURN(RgbImage resized, ResizeLikePil(landscape, plan.resized_width, plan.resized_height,
                                                          ResampleFilter::kBilinear));
  RgbImage padded = RgbImage::Filled(plan.resized_width, plan.pad_top + plan.resized_height + plan.pad_bottom, 255,
                                     255, 255);
  const size_t row_bytes = static_cast<size_t>(plan.resized_width) * 3;
  for (int64_t y = 0; y < plan.resized_height; ++y) {
    std::copy_n(resized.pixels.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(y) * row_bytes), row_bytes,
                padded.pixels.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(y + plan.pad_top) * row_bytes));
  }
  return plan.transposed ? TransposeLikePil(padded) : padded;
}

StatusOr<HdPixelValues> PreprocessHd(const RgbImage& image, const HdOptions& options,
                                     const NormalizeParams& normalize) {
  XCPIPE_ASSIGN_OR_RETURN(RgbImage hd, HdTransform(image, options));
  HdPixelValues out;
  out.tile_size = options.tile_size;
  out.grid_h = hd.height / options.tile_size;
  out.grid_w = hd.width / options.tile_size;
  out.pixel_values = ToNormalizedTensor(hd, normalize);
  return out;
}

StatusOr<FloatImage> InterpolateBicubicLikeTorch(const FloatImage& image, int64_t out_height, int64_t out_width) {
  XCPIPE_RETURN_IF_ERROR(CheckFloat(image, "bicubic interpolation"));
  if (out_height <= 0 || out_width <= 0 || out_height > kMaxResizeSide || out_width > kMaxResizeSide) {
    return InvalidArgumentError("bicubic interpolation: output size " + Size(out_width, out_height) +
                                " is out of range; expected sides in 1.." + std::to_string(kMaxResizeSide));
  }
  const CubicTaps rows = ComputeCubicTaps(image.height, out_height);
  const CubicTaps cols = ComputeCubicTaps(image.width, out_width);
  FloatImage out;
  out.channels = image.channels;
  out.height = out_height;
  out.width = out_width;
  out.data.resize(static_cast<size_t>(out.numel()));
  for (int64_t c = 0; c < image.channels; ++c) {
    for (int64_t oy = 0; oy < out_height; ++oy) {
      const auto& ry = rows.index[static_cast<size_t>(oy)];
      const auto& wy = rows.weight[static_cast<size_t>(oy)];
      for (int64_t ox = 0; ox < out_width; ++ox) {
        const auto& rx = cols.index[static_cast<size_t>(ox)];
        const auto& wx = cols.weight[static_cast<size_t>(ox)];
        // Height taps outside, width taps inside. Each 4-tap sum is accumulated the way the
        // reference build of torch's CPU kernel (GCC, AVX2+FMA) evaluates
        // `out = t0*w0; out += t1*w1; out += t2*w2; out += t3*w3`: t1*w1 rounded, then the
        // other three fused. This reproduces its float32 results bit for bit on the fixtures;
        // plain left-to-right sums differ in the last bit.
        float row_sums[4];
        for (size_t j = 0; j < 4; ++j) {
          const auto tap = [&](size_t k) { return image.at(c, ry[j], rx[k]); };
          float acc = tap(1) * wx[1];
          acc = std::fma(tap(0), wx[0], acc);
          acc = std::fma(tap(2), wx[2], acc);
          row_sums[j] = std::fma(tap(3), wx[3], acc);
        }
        float value = row_sums[1] * wy[1];
        value = std::fma(row_sums[0], wy[0], value);
        value = std::fma(row_sums[2], wy[2], value);
        value = std::fma(row_sums[3], wy[3], value);
        out.at(c, oy, ox) = value;
      }
    }
  }
  return out;
}

StatusOr<FloatImage> CropFloatImage(const FloatImage& image, int64_t y0, int64_t x0, int64_t height, int64_t width) {
  XCPIPE_RETURN_IF_ERROR(CheckFloat(image, "crop"));
  if (y0 < 0 || x0 < 0 || height <= 0 || width <= 0 || y0 + height > image.height || x0 + width > image.width) {
    return InvalidArgumentError("crop: window " + Size(width, height) + " at (y=" + std::to_string(y0) +
                                ", x=" + std::to_string(x0) + ") does not fit in a " +
                                Size(image.width, image.height) + " image");
  }
  FloatImage out;
  out.channels = image.channels;
  out.height = height;
  out.width = width;
  out.data.resize(static_cast<size_t>(out.numel()));
  for (int64_t c = 0; c < image.channels; ++c) {
    for (int64_t y = 0; y < height; ++y) {
      for (int64_t x = 0; x < width; ++x) out.at(c, y, x) = image.at(c, y0 + y, x0 + x);
    }
  }
  return out;
}

StatusOr<std::vector<FloatImage>> MakeHdClipInputs(const HdPixelValues& hd) {
  const int64_t s = hd.tile_size;
  if (s <= 0 || hd.grid_h <= 0 || hd.grid_w <= 0 || hd.pixel_values.height != hd.grid_h * s ||
      hd.pixel_values.width != hd.grid_w * s) {
    return InvalidArgumentError("HD CLIP inputs: pixel_values is " +
                                Size(hd.pixel_values.width, hd.pixel_values.height) + " but the grid says " +
                                std::to_string(hd.grid_h) + "x" + std::to_string(hd.grid_w) + " tiles of " +
                                std::to_string(s) + " px");
  }
  std::vector<FloatImage> inputs;
  inputs.reserve(static_cast<size_t>(1 + hd.grid_h * hd.grid_w));
  XCPIPE_ASSIGN_OR_RETURN(FloatImage global_view, InterpolateBicubicLikeTorch(hd.pixel_values, s, s));
  inputs.push_back(std::move(global_view));
  for (int64_t r = 0; r < hd.grid_h; ++r) {
    for (int64_t c = 0; c < hd.grid_w; ++c) {
      XCPIPE_ASSIGN_OR_RETURN(FloatImage tile, CropFloatImage(hd.pixel_values, r * s, c * s, s, s));
      inputs.push_back(std::move(tile));
    }
  }
  return inputs;
}

}  // namespace xcpipe::image
