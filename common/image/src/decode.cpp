#include "xcpipe/image/decode.h"

#include <cstdio>
#include <string>
#include <system_error>

#include "decoders.h"
#include "xcpipe/base/files.h"

namespace xcpipe::image {
namespace {

constexpr std::string_view kPngMagic("\x89PNG\r\n\x1a\n", 8);
constexpr std::string_view kJpegMagic("\xFF\xD8\xFF", 3);

std::string HexPrefix(std::string_view bytes) {
  std::string out;
  const size_t n = bytes.size() < 8 ? bytes.size() : 8;
  for (size_t i = 0; i < n; ++i) {
    char buf[4];
    std::snprintf(buf, sizeof buf, "%s%02X", i == 0 ? "" : " ", static_cast<unsigned char>(bytes[i]));
    out += buf;
  }
  return out.empty() ? "(no bytes)" : out;
}

Status CheckEncodedSize(std::string_view bytes, const ImageLimits& limits) {
  if (bytes.size() > limits.max_encoded_bytes) {
    return ResourceExhaustedError("encoded image is " + std::to_string(bytes.size()) +
                                  " bytes; the limit (ImageLimits::max_encoded_bytes) is " +
                                  std::to_string(limits.max_encoded_bytes));
  }
  return OkStatus();
}

Status CheckDeclaredSize(const ImageHeader& header, const ImageLimits& limits) {
  const std::string what = std::string(ImageFormatName(header.format)) + " header declares " +
                           std::to_string(header.width) + "x" + std::to_string(header.height);
  if (header.width <= 0 || header.height <= 0) {
    return InvalidArgumentError(what + "; width and height must be at least 1");
  }
  if (header.width > limits.max_side || header.height > limits.max_side) {
    return ResourceExhaustedError(what + "; the largest side accepted (ImageLimits::max_side) is " +
                                  std::to_string(limits.max_side) + " pixels");
  }
  // Both sides are <= max_side here; divide instead of multiplying so nothing overflows.
  if (header.width > limits.max_pixels / header.height) {
    return ResourceExhaustedError(what + " = " + std::to_string(header.width * header.height) +
                                  " pixels; the limit (ImageLimits::max_pixels) is " +
                                  std::to_string(limits.max_pixels));
  }
  return OkStatus();
}

}  // namespace

std::string_view ImageFormatName(ImageFormat format) {
  switch (format) {
    case ImageFormat::kPng:
      return "PNG";
    case ImageFormat::kJpeg:
      return "JPEG";
  }
  return "unknown";
}

StatusOr<ImageFormat> DetectImageFormat(std::string_view bytes) {
  if (bytes.substr(0, kPngMagic.size()) == kPngMagic) return ImageFormat::kPng;
  if (bytes.substr(0, kJpegMagic.size()) == kJpegMagic) return ImageFormat::kJpeg;
  return InvalidArgumentError("not a PNG or JPEG image: the data starts with " + HexPrefix(bytes) +
                              "; expected the PNG signature 89 50 4E 47 0D 0A 1A 0A or the JPEG marker FF D8 FF");
}

StatusOr<ImageHeader> ReadImageHeader(std::string_view bytes, const ImageLimits& limits) {
  XCPIPE_RETURN_IF_ERROR(CheckEncodedSize(bytes, limits));
  XCPIPE_ASSIGN_OR_RETURN(ImageFormat format, DetectImageFormat(bytes));
  StatusOr<ImageHeader> header =
      format == ImageFormat::kPng ? internal::ReadPngHeader(bytes) : internal::ReadJpegHeader(bytes);
  if (!header.ok()) return header.status();
  XCPIPE_RETURN_IF_ERROR(CheckDeclaredSize(*header, limits));
  return header;
}

StatusOr<RgbImage> DecodeImage(std::string_view bytes, const ImageLimits& limits) {
  XCPIPE_ASSIGN_OR_RETURN(ImageHeader header, ReadImageHeader(bytes, limits));
  if (header.format == ImageFormat::kPng) return internal::DecodePng(bytes, header, limits);
  return internal::DecodeJpeg(bytes, header);
}

StatusOr<RgbImage> ReadImageFile(const std::filesystem::path& path, const ImageLimits& limits) {
  // Size first, so an oversized file is a limit (ResourceExhausted) and is never read.
  std::error_code ec;
  const uintmax_t size = std::filesystem::file_size(path, ec);
  if (!ec && size > limits.max_encoded_bytes) {
    return ResourceExhaustedError(path.string() + ": " + std::to_string(size) +
                                  " bytes; the limit (ImageLimits::max_encoded_bytes) is " +
                                  std::to_string(limits.max_encoded_bytes));
  }
  XCPIPE_ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(path, limits.max_encoded_bytes));
  StatusOr<RgbImage> image = DecodeImage(bytes, limits);
  if (!image.ok()) return image.status().WithContext(path.string());
  return image;
}

}  // namespace xcpipe::image
