// Pillow-exact resampling (see resample.h for the algorithm). Floating-point expressions here
// are written in the same order as Pillow's so the doubles, and therefore the fixed-point taps,
// are identical; the module is built with -ffp-contract=off so no FMA can change a rounding.
#include "xcpipe/image/resample.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace xcpipe::image {
namespace {

// 8 bits of result, 2 bits of headroom for negative lobes and sums above 1, in a 32-bit int.
constexpr int kPrecisionBits = 32 - 8 - 2;

double TriangleWeight(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return 1.0 - x;
  return 0.0;
}

// Keys' cubic convolution with a = -0.5 (Pillow's BICUBIC).
double KeysCubicWeight(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

struct Filter {
  double (*weight)(double);
  double support;
};

Filter FilterFor(ResampleFilter filter) {
  switch (filter) {
    case ResampleFilter::kBilinear:
      return {TriangleWeight, 1.0};
    case ResampleFilter::kBicubic:
      return {KeysCubicWeight, 2.0};
  }
  return {TriangleWeight, 1.0};
}

// For each output position along one axis: the first source index, the number of taps, and
// `taps_per_output` fixed-point weights (zero beyond the count).
struct AxisTaps {
  int taps_per_output = 0;
  std::vector<int> first;
  std::vector<int> count;
  std::vector<int32_t> weights;
};

AxisTaps ComputeAxisTaps(int in_size, int out_size, const Filter& filter) {
  // Pillow resamples the box (0, 0, in_w, in_h) given as floats; in0 = 0 and in1 = in_size.
  const float in0 = 0.0f;
  const float in1 = static_cast<float>(in_size);
  const double scale = static_cast<double>(in1 - in0) / out_size;
  const double filter_scale = scale < 1.0 ? 1.0 : scale;  // widen the filter only when shrinking
  const double support = filter.support * filter_scale;

  AxisTaps taps;
  taps.taps_per_output = static_cast<int>(std::ceil(support)) * 2 + 1;
  const size_t k = static_cast<size_t>(taps.taps_per_output);
  taps.first.resize(static_cast<size_t>(out_size));
  taps.count.resize(static_cast<size_t>(out_size));
  taps.weights.assign(static_cast<size_t>(out_size) * k, 0);
  std::vector<double> w(k);

  for (int xx = 0; xx < out_size; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    const double inverse_scale = 1.0 / filter_scale;
    // Truncation toward zero, as Pillow's (int) casts.
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double total = 0.0;
    for (int x = 0; x < xmax; ++x) {
      w[static_cast<size_t>(x)] = filter.weight((x + xmin - center + 0.5) * inverse_scale);
      total += w[static_cast<size_t>(x)];
    }
    for (int x = 0; x < xmax; ++x) {
      if (total != 0.0) w[static_cast<size_t>(x)] /= total;
    }
    int32_t* out = &taps.weights[static_cast<size_t>(xx) * k];
    for (int x = 0; x < xmax; ++x) {
      const double v = w[static_cast<size_t>(x)];
      // Round half away from zero into 22 fractional bits.
      out[x] = v < 0 ? static_cast<int32_t>(-0.5 + v * (1 << kPrecisionBits))
                     : static_cast<int32_t>(0.5 + v * (1 << kPrecisionBits));
    }
    taps.first[static_cast<size_t>(xx)] = xmin;
    taps.count[static_cast<size_t>(xx)] = xmax;
  }
  return taps;
}

// Back from fixed point, clipped to 0..255 (Pillow's clip8 lookup table does the same for the
// range a convolution can reach). >> on a negative int is an arithmetic shift in C++20.
inline uint8_t Clip8(int32_t accumulator) {
  const int32_t v = accumulator >> kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// Horizontal pass over source rows [row_begin, row_begin + rows).
RgbImage ResampleRows(const RgbImage& in, int row_begin, int rows, int out_width, const AxisTaps& taps) {
  RgbImage out;
  out.width = out_width;
  out.height = rows;
  out.pixels.resize(static_cast<size_t>(out_width) * static_cast<size_t>(rows) * 3);
  const size_t k = static_cast<size_t>(taps.taps_per_output);
  for (int yy = 0; yy < rows; ++yy) {
    const uint8_t* src_row = &in.pixels[static_cast<size_t>(yy + row_begin) * static_cast<size_t>(in.width) * 3];
    uint8_t* dst_row = &out.pixels[static_cast<size_t>(yy) * static_cast<size_t>(out_width) * 3];
    for (int xx = 0; xx < out_width; ++xx) {
      const int xmin = taps.first[static_cast<size_t>(xx)];
      const int n = taps.count[static_cast<size_t>(xx)];
      const int32_t* w = &taps.weights[static_cast<size_t>(xx) * k];
      int32_t s0 = 1 << (kPrecisionBits - 1);
      int32_t s1 = s0;
      int32_t s2 = s0;
      for (int x = 0; x < n; ++x) {
        const uint8_t* p = src_row + static_cast<size_t>(x + xmin) * 3;
        s0 += p[0] * w[x];
        s1 += p[1] * w[x];
        s2 += p[2] * w[x];
      }
      dst_row[static_cast<size_t>(xx) * 3 + 0] = Clip8(s0);
      dst_row[static_cast<size_t>(xx) * 3 + 1] = Clip8(s1);
      dst_row[static_cast<size_t>(xx) * 3 + 2] = Clip8(s2);
    }
  }
  return out;
}

// Vertical pass; taps.first are relative to the first row of `in`.
RgbImage ResampleColumns(const RgbImage& in, int out_height, const AxisTaps& taps, int first_shift) {
  RgbImage out;
  out.width = in.width;
  out.height = out_height;
  out.pixels.resize(static_cast<size_t>(in.width) * static_cast<size_t>(out_height) * 3);
  const size_t k = static_cast<size_t>(taps.taps_per_output);
  const size_t row_bytes = static_cast<size_t>(in.width) * 3;
  for (int yy = 0; yy < out_height; ++yy) {
    const int ymin = taps.first[static_cast<size_t>(yy)] - first_shift;
    const int n = taps.count[static_cast<size_t>(yy)];
    const int32_t* w = &taps.weights[static_cast<size_t>(yy) * k];
    uint8_t* dst_row = &out.pixels[static_cast<size_t>(yy) * row_bytes];
    for (size_t i = 0; i < row_bytes; ++i) {
      int32_t s = 1 << (kPrecisionBits - 1);
      for (int y = 0; y < n; ++y) s += in.pixels[static_cast<size_t>(y + ymin) * row_bytes + i] * w[y];
      dst_row[i] = Clip8(s);
    }
  }
  return out;
}

Status CheckInput(const RgbImage& image, const char* what) {
  if (image.width <= 0 || image.height <= 0 || image.width > kMaxResizeSide || image.height > kMaxResizeSide) {
    return InvalidArgumentError(std::string(what) + ": input is " + std::to_string(image.width) + "x" +
                                std::to_string(image.height) + "; expected sides in 1.." +
                                std::to_string(kMaxResizeSide));
  }
  if (image.pixels.size() != static_cast<size_t>(image.width * image.height * 3)) {
    return InvalidArgumentError(std::string(what) + ": input buffer holds " + std::to_string(image.pixels.size()) +
                                " bytes; a " + std::to_string(image.width) + "x" + std::to_string(image.height) +
                                " RGB image needs " + std::to_string(image.width * image.height * 3));
  }
  return OkStatus();
}

}  // namespace

StatusOr<RgbImage> ResizeLikePil(const RgbImage& image, int64_t out_width, int64_t out_height,
                                 ResampleFilter filter) {
  XCPIPE_RETURN_IF_ERROR(CheckInput(image, "resize"));
  if (out_width <= 0 || out_height <= 0 || out_width > kMaxResizeSide || out_height > kMaxResizeSide) {
    return InvalidArgumentError("resize: output size " + std::to_string(out_width) + "x" + std::to_string(out_height) +
                                " is out of range; expected sides in 1.." + std::to_string(kMaxResizeSide));
  }
  const Filter f = FilterFor(filter);
  const int in_w = static_cast<int>(image.width);
  const int in_h = static_cast<int>(image.height);
  const int out_w = static_cast<int>(out_width);
  const int out_h = static_cast<int>(out_height);
  const bool need_horizontal = out_w != in_w;
  const bool need_vertical = out_h != in_h;
  if (!need_horizontal && !need_vertical) return image;  // Pillow returns a copy

  const AxisTaps vertical = ComputeAxisTaps(in_h, out_h, f);
  // The horizontal pass only needs the source rows the vertical pass will read.
  const int first_row = vertical.first.front();
  const int last_row = vertical.first.back() + vertical.count.back();

  if (!need_horizontal) return ResampleColumns(image, out_h, vertical, 0);
  const AxisTaps horizontal = ComputeAxisTaps(in_w, out_w, f);
  if (!need_vertical) return ResampleRows(image, 0, in_h, out_w, horizontal);
  const RgbImage rows = ResampleRows(image, first_row, last_row - first_row, out_w, horizontal);
  return ResampleColumns(rows, out_h, vertical, first_row);
}

RgbImage TransposeLikePil(const RgbImage& image) {
  RgbImage out;
  out.width = image.height;
  out.height = image.width;
  out.pixels.resize(image.pixels.size());
  for (int64_t y = 0; y < out.height; ++y) {
    for (int64_t x = 0; x < out.width; ++x) {
      for (int c = 0; c < 3; ++c) out.at(x, y, c) = image.at(y, x, c);
    }
  }
  return out;
}

}  // namespace xcpipe::image
