// Per-format decoders behind decode.h. Each takes bytes whose magic has been checked and a
// header whose size has already passed the limits.
#pragma once

#include <string_view>

#include "xcpipe/base/status.h"
#include "xcpipe/image/decode.h"

namespace xcpipe::image::internal {

StatusOr<ImageHeader> ReadPngHeader(std::string_view bytes);
StatusOr<RgbImage> DecodePng(std::string_view bytes, const ImageHeader& header, const ImageLimits& limits);

StatusOr<ImageHeader> ReadJpegHeader(std::string_view bytes);
StatusOr<RgbImage> DecodeJpeg(std::string_view bytes, const ImageHeader& header);

}  // namespace xcpipe::image::internal
