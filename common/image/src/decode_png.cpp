// PNG decoding with libpng's progressive-free "low-level" reader. The simplified png_image API
// is avoided on purpose: it composites alpha over a background and applies gamma to 16-bit
// data, and PIL does neither.
//
// libpng reports errors by longjmp. A longjmp that skips a C++ destructor is undefined
// behaviour, so every function that calls setjmp below holds only trivially destructible
// locals, and all owning objects (libpng structs, pixel buffers) live in DecodePng's frame,
// which never calls setjmp.
#include <png.h>

#include <array>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "decoders.h"

namespace xcpipe::image::internal {
namespace {

constexpr size_t kSignatureBytes = 8;
constexpr size_t kIhdrEnd = kSignatureBytes + 8 + 13 + 4;  // length, type, 13 data bytes, CRC

uint32_t ReadBigEndian32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// CRC-32 (ISO 3309 / ITU-T V.42), as PNG chunk CRCs use it.
uint32_t PngCrc32(const unsigned char* data, size_t n) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

bool ValidBitDepth(int color_type, int bit_depth) {
  switch (color_type) {
    case 0:  // grey
      return bit_depth == 1 || bit_depth == 2 || bit_depth == 4 || bit_depth == 8 || bit_depth == 16;
    case 3:  // palette
      return bit_depth == 1 || bit_depth == 2 || bit_depth == 4 || bit_depth == 8;
    case 2:  // RGB
    case 4:  // grey + alpha
    case 6:  // RGBA
      return bit_depth == 8 || bit_depth == 16;
    default:
      return false;
  }
}

// Shared with libpng's callbacks. Trivially destructible (see the file comment).
struct PngSource {
  const unsigned char* data = nullptr;
  size_t size = 0;
  size_t offset = 0;
  char error[256] = {};
};

void ReadFromMemory(png_structp png, png_bytep out, size_t n) {
  auto* source = static_cast<PngSource*>(png_get_io_ptr(png));
  if (n > source->size - source->offset) {
    png_error(png, "the data ends before the image does (truncated file)");
  }
  std::memcpy(out, source->data + source->offset, n);
  source->offset += n;
}

[[noreturn]] void OnPngError(png_structp png, png_const_charp message) {
  auto* source = static_cast<PngSource*>(png_get_error_ptr(png));
  std::snprintf(source->error, sizeof source->error, "%s", message);
  png_longjmp(png, 1);
}

// Warnings are about ancillary chunks (bad CRC, unknown profile); PIL ignores those too.
void OnPngWarning(png_structp, png_const_charp) {}

struct PngOutputLayout {
  size_t row_bytes = 0;
  int channels = 0;
  int bit_depth = 0;
  bool grey16 = false;  // kept at 16 bits, one channel: PIL saturates these, see decode.h
};

// png_read_info, then the transforms that turn any PNG into 8-bit RGB the way PIL's
// convert('RGB') does. Returns false after a libpng error (message in the PngSource).
bool ReadInfoAndSetTransforms(png_structp png, png_infop info, PngOutputLayout* layout) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_info(png, info);
  const int color_type = png_get_color_type(png, info);
  const int bit_depth = png_get_bit_depth(png, info);
  const bool grey = (color_type & PNG_COLOR_MASK_COLOR) == 0;
  layout->grey16 = color_type == PNG_COLOR_TYPE_GRAY && bit_depth == 16;

  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  // strip_16 keeps the high byte (png_set_scale_16 would round): PIL's "RGB;16B" unpacking.
  if (bit_depth == 16 && !layout->grey16) png_set_strip_16(png);
  // Alpha is dropped, never composited; a palette's tRNS would otherwise become alpha.
  if ((color_type & PNG_COLOR_MASK_ALPHA) != 0 ||
      (color_type == PNG_COLOR_TYPE_PALETTE && png_get_valid(png, info, PNG_INFO_tRNS) != 0)) {
    png_set_strip_alpha(png);
  }
  if (grey && !layout->grey16) png_set_gray_to_rgb(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);

  layout->row_bytes = png_get_rowbytes(png, info);
  layout->channels = png_get_channels(png, info);
  layout->bit_depth = png_get_bit_depth(png, info);
  return true;
}

// Decodes every row (all passes when interlaced) and reads on to IEND, so a file cut short
// anywhere is refused. Returns false after a libpng error.
bool ReadRowsToEnd(png_structp png, png_bytepp rows) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_image(png, rows);
  png_read_end(png, nullptr);
  return true;
}

struct PngReadStructs {
  png_structp png = nullptr;
  png_infop info = nullptr;
  ~PngReadStructs() {
    if (png != nullptr) png_destroy_read_struct(&png, info != nullptr ? &info : nullptr, nullptr);
  }
};

Status PngFailure(const PngSource& source) {
  const std::string message = source.error[0] != '\0' ? source.error : "unknown libpng error";
  if (message.find("truncated") != std::string::npos) {
    return InvalidArgumentError("PNG is truncated: " + message + "; expected the whole file, up to its IEND chunk");
  }
  return InvalidArgumentError("corrupt PNG: " + message + "; expected a well-formed PNG file");
}

}  // namespace

StatusOr<ImageHeader> ReadPngHeader(std::string_view bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  if (bytes.size() < kIhdrEnd) {
    return InvalidArgumentError("PNG is truncated: " + std::to_string(bytes.size()) +
                                " bytes, fewer than the " + std::to_string(kIhdrEnd) +
                                " that the signature and the IHDR chunk take");
  }
  const uint32_t length = ReadBigEndian32(p + 8);
  const std::string type(reinterpret_cast<const char*>(p + 12), 4);
  if (length != 13 || type != "IHDR") {
    std::string printable;
    for (char c : type) printable += (c >= 0x20 && c < 0x7f) ? c : '?';
    return InvalidArgumentError("corrupt PNG: the first chunk is '" + printable + "' of " + std::to_string(length) +
                                " bytes; expected 'IHDR' of 13 bytes");
  }
  const uint32_t stored_crc = ReadBigEndian32(p + 29);
  const uint32_t computed_crc = PngCrc32(p + 12, 4 + 13);
  if (stored_crc != computed_crc) {
    return InvalidArgumentError("corrupt PNG: the IHDR chunk's CRC does not match its contents");
  }
  const uint32_t width = ReadBigEndian32(p + 16);
  const uint32_t height = ReadBigEndian32(p + 20);
  const int bit_depth = p[24];
  const int color_type = p[25];
  if (width > 0x7FFFFFFFu || height > 0x7FFFFFFFu) {
    return InvalidArgumentError("corrupt PNG: IHDR declares " + std::to_string(width) + "x" + std::to_string(height) +
                                "; PNG sizes are at most 2^31-1");
  }
  if (!ValidBitDepth(color_type, bit_depth)) {
    return InvalidArgumentError("corrupt PNG: colour type " + std::to_string(color_type) + " with bit depth " +
                                std::to_string(bit_depth) +
                                " is not a valid PNG combination (expected grey 1-16, RGB 8/16, palette 1-8, "
                                "grey+alpha 8/16, RGBA 8/16)");
  }
  if (p[26] != 0 || p[27] != 0 || p[28] > 1) {
    return InvalidArgumentError("corrupt PNG: IHDR compression/filter/interlace methods " + std::to_string(p[26]) +
                                "/" + std::to_string(p[27]) + "/" + std::to_string(p[28]) +
                                "; expected 0/0/0 or 0/0/1");
  }
  return ImageHeader{ImageFormat::kPng, static_cast<int64_t>(width), static_cast<int64_t>(height)};
}

StatusOr<RgbImage> DecodePng(std::string_view bytes, const ImageHeader& header, const ImageLimits& limits) {
  PngSource source;
  source.data = reinterpret_cast<const unsigned char*>(bytes.data());
  source.size = bytes.size();

  PngReadStructs structs;
  structs.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &source, OnPngError, OnPngWarning);
  if (structs.png == nullptr) return InternalError("png_create_read_struct failed");
  structs.info = png_create_info_struct(structs.png);
  if (structs.info == nullptr) return InternalError("png_create_info_struct failed");
  png_set_read_fn(structs.png, &source, ReadFromMemory);
  // A second line of defence behind ReadPngHeader's check: libpng refuses larger IHDRs itself.
  const int64_t side_limit = limits.max_side < 0x7FFFFFFF ? limits.max_side : 0x7FFFFFFF;
  png_set_user_limits(structs.png, static_cast<png_uint_32>(side_limit), static_cast<png_uint_32>(side_limit));

  PngOutputLayout layout;
  if (!ReadInfoAndSetTransforms(structs.png, structs.info, &layout)) return PngFailure(source);
  const int64_t width = header.width;
  const int64_t height = header.height;
  const size_t expected_row_bytes = static_cast<size_t>(width) * (layout.grey16 ? 2 : 3);
  if (png_get_image_width(structs.png, structs.info) != static_cast<png_uint_32>(width) ||
      png_get_image_height(structs.png, structs.info) != static_cast<png_uint_32>(height) ||
      layout.row_bytes != expected_row_bytes || layout.channels != (layout.grey16 ? 1 : 3) ||
      layout.bit_depth != (layout.grey16 ? 16 : 8)) {
    return InternalError("libpng produced an unexpected layout: " + std::to_string(layout.channels) +
                         " channels of " + std::to_string(layout.bit_depth) + " bits, " +
                         std::to_string(layout.row_bytes) + " bytes per row for width " + std::to_string(width));
  }

  RgbImage image;
  image.width = width;
  image.height = height;
  image.pixels.resize(static_cast<size_t>(width * height * 3));
  std::vector<unsigned char> grey16_rows;
  unsigned char* target = image.pixels.data();
  if (layout.grey16) {
    grey16_rows.resize(expected_row_bytes * static_cast<size_t>(height));
    target = grey16_rows.data();
  }
  std::vector<png_bytep> rows(static_cast<size_t>(height));
  for (int64_t y = 0; y < height; ++y) rows[static_cast<size_t>(y)] = target + static_cast<size_t>(y) * expected_row_bytes;
  if (!ReadRowsToEnd(structs.png, rows.data())) return PngFailure(source);

  if (layout.grey16) {
    // PIL: mode "I;16" -> "RGB" keeps values below 256 and saturates the rest (I16_RGB).
    for (size_t i = 0; i < static_cast<size_t>(width * height); ++i) {
      const unsigned hi = grey16_rows[2 * i];
      const unsigned lo = grey16_rows[2 * i + 1];
      const auto v = static_cast<uint8_t>(hi == 0 ? lo : 255);
      image.pixels[3 * i] = image.pixels[3 * i + 1] = image.pixels[3 * i + 2] = v;
    }
  }
  return image;
}

}  // namespace xcpipe::image::internal
