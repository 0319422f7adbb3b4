// Decoding of untrusted image bytes (PNG, JPEG) into 8-bit RGB, the way the official XComposer
// code sees them after `PIL.Image.open(...).convert('RGB')`.
//
// Order of work, so that hostile input costs little:
//   1. the encoded size is checked against ImageLimits::max_encoded_bytes;
//   2. the format is found from the magic bytes (never from a file name);
//   3. only the header is parsed, and the declared width/height are checked against the limits;
//   4. only then are pixels decoded; truncated or corrupt data is refused, never padded.
//
// Colour conversion follows PIL's `.convert('RGB')`, not a compositor:
//   - grey (1/2/4/8-bit) is replicated to R=G=B, low bit depths scaled to 0..255 (1-bit: 0/255);
//   - palette images take their palette colours (indices past the palette give black);
//   - alpha (RGBA, grey+alpha, palette tRNS) is DROPPED, not composited over a background;
//   - 16-bit RGB/RGBA/grey+alpha keep the high byte of each sample (PIL's "RGB;16B" unpacking);
//   - 16-bit grey saturates at 255 (PIL opens it as mode "I;16" and clips when converting);
//   - gAMA/cHRM/iCCP/sRGB chunks are ignored (PIL applies no colour management either);
//   - JPEG uses libjpeg-turbo's defaults (ISLOW DCT, fancy upsampling), as Pillow does; EXIF
//     orientation is ignored (the official code does not call exif_transpose). CMYK/YCCK JPEGs
//     are refused.
//
// Thread-safe: every function is pure and keeps its decoder state on the call's own stack.
// Failures are values, never exceptions or crashes:
//   InvalidArgument    wrong magic, unsupported format, corrupt or truncated data, zero size;
//   ResourceExhausted  over a limit in ImageLimits (the message names the limit and its value);
//   NotFound           ReadImageFile on a missing file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string_view>

#include "xcpipe/base/status.h"
#include "xcpipe/image/image_types.h"

namespace xcpipe::image {

// What the serving edge accepts. The defaults admit every photo a user is likely to send
// (a 50-megapixel camera JPEG fits) while bounding the decoded buffer to 192 MiB of RGB.
struct ImageLimits {
  // Largest encoded input accepted, in bytes. Default 64 MiB.
  uint64_t max_encoded_bytes = uint64_t{64} << 20;
  // Largest width or height, in pixels. Default 16384.
  int64_t max_side = 16384;
  // Largest width * height. Default 64 Mi pixels (8192 x 8192). PIL warns about "decompression
  // bombs" at 89.5 M pixels; we refuse earlier because the coordinator decodes many at once.
  int64_t max_pixels = int64_t{64} << 20;
};

enum class ImageFormat : uint8_t { kPng, kJpeg };
std::string_view ImageFormatName(ImageFormat format);  // "PNG", "JPEG"

struct ImageHeader {
  ImageFormat format = ImageFormat::kPng;
  int64_t width = 0;
  int64_t height = 0;
};

// Recognises PNG (89 50 4E 47 0D 0A 1A 0A) and JPEG (FF D8 FF). Anything else is an
// InvalidArgument that shows the first bytes and names the formats that are accepted.
StatusOr<ImageFormat> DetectImageFormat(std::string_view bytes);

// Steps 1-3 above: format, declared size, limits. Decodes no pixels.
StatusOr<ImageHeader> ReadImageHeader(std::string_view bytes, const ImageLimits& limits = {});

// Steps 1-4: the decoded image as 8-bit RGB.
StatusOr<RgbImage> DecodeImage(std::string_view bytes, const ImageLimits& limits = {});

// Reads at most limits.max_encoded_bytes from `path` and decodes it; errors name the file.
StatusOr<RgbImage> ReadImageFile(const std::filesystem::path& path, const ImageLimits& limits = {});

}  // namespace xcpipe::image
