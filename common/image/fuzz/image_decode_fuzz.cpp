// libFuzzer target: arbitrary bytes through the decoder, and whatever decodes through the
// resampler and the HD planner. Any crash, sanitizer report, or a refusal without a message is
// a bug. The seed corpus in corpus/ is replayed by the unit test fuzz_corpus_test.cpp.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "xcpipe/image/decode.h"
#include "xcpipe/image/preprocess.h"
#include "xcpipe/image/resample.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace xcpipe::image;
  // Small limits keep each run fast; the limit checks themselves are exercised all the same.
  ImageLimits limits;
  limits.max_side = 4096;
  limits.max_pixels = 1 << 20;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  xcpipe::StatusOr<RgbImage> image = DecodeImage(bytes, limits);
  if (!image.ok()) {
    if (image.status().message().empty()) std::abort();
    return 0;
  }
  if (image->pixels.size() != static_cast<size_t>(image->width * image->height * 3)) std::abort();
  const int64_t out_w = 1 + (size > 0 ? data[0] % 48 : 0);
  const int64_t out_h = 1 + (size > 1 ? data[1] % 48 : 0);
  const ResampleFilter filter = (size > 2 && (data[2] & 1) != 0) ? ResampleFilter::kBicubic : ResampleFilter::kBilinear;
  xcpipe::StatusOr<RgbImage> resized = ResizeLikePil(*image, out_w, out_h, filter);
  if (!resized.ok() || resized->width != out_w || resized->height != out_h) std::abort();
  HdOptions options;
  options.tile_size = 14;
  options.hd_num = 1 + (size > 3 ? data[3] % 9 : 0);
  (void)PlanHdTransform(image->width, image->height, options);
  return 0;
}
