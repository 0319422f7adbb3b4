// Test helper: writes PNG files byte by byte (stored deflate blocks, filter 0), so tests can
// make every colour type, bit depth and interlace mode, and damage any chunk on purpose.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace xcpipe::image::testing {

inline uint32_t Crc32(const std::string& bytes, size_t begin, size_t end) {
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
  for (size_t i = begin; i < end; ++i) crc = table[(crc ^ static_cast<uint8_t>(bytes[i])) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

inline void PutBigEndian32(std::string* out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out->push_back(static_cast<char>((v >> shift) & 0xFF));
}

inline void AppendChunk(std::string* png, const std::string& type, const std::string& data) {
  PutBigEndian32(png, static_cast<uint32_t>(data.size()));
  const size_t start = png->size();
  *png += type;
  *png += data;
  PutBigEndian32(png, Crc32(*png, start, png->size()));
}

// A zlib stream of stored (uncompressed) deflate blocks.
inline std::string ZlibStored(const std::string& raw) {
  std::string z = "\x78\x01";
  size_t pos = 0;
  do {
    const size_t n = std::min<size_t>(65535, raw.size() - pos);
    const bool last = pos + n == raw.size();
    z.push_back(static_cast<char>(last ? 1 : 0));
    z.push_back(static_cast<char>(n & 0xFF));
    z.push_back(static_cast<char>(n >> 8));
    z.push_back(static_cast<char>(~n & 0xFF));
    z.push_back(static_cast<char>((~n >> 8) & 0xFF));
    z += raw.substr(pos, n);
    pos += n;
  } while (pos < raw.size());
  uint32_t a = 1, b = 0;
  for (unsigned char c : raw) {
    a = (a + c) % 65521;
    b = (b + a) % 65521;
  }
  PutBigEndian32(&z, (b << 16) | a);
  return z;
}

struct PngSpec {
  uint32_t width = 1;
  uint32_t height = 1;
  int bit_depth = 8;
  int color_type = 2;  // 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA
  bool interlaced = false;
  std::string palette;  // PLTE payload (3 bytes per entry)
  std::string trns;     // tRNS payload, if any
  // Sample values of pixel (x, y): one per channel, in the file's bit depth.
  std::function<std::vector<uint32_t>(uint32_t x, uint32_t y)> samples;
};

inline int Channels(int color_type) {
  switch (color_type) {
    case 0: return 1;
    case 2: return 3;
    case 3: return 1;
    case 4: return 2;
    default: return 4;
  }
}

inline std::string IhdrPayload(uint32_t width, uint32_t height, int bit_depth, int color_type, int interlace) {
  std::string ihdr;
  PutBigEndian32(&ihdr, width);
  PutBigEndian32(&ihdr, height);
  ihdr.push_back(static_cast<char>(bit_depth));
  ihdr.push_back(static_cast<char>(color_type));
  ihdr.push_back(0);
  ihdr.push_back(0);
  ihdr.push_back(static_cast<char>(interlace));
  return ihdr;
}

// Filter-0 scanlines of the pixels (x0 + i*dx, y0 + j*dy).
inline void AppendScanlines(const PngSpec& spec, uint32_t x0, uint32_t y0, uint32_t dx, uint32_t dy,
                            std::string* raw) {
  const int channels = Channels(spec.color_type);
  for (uint32_t y = y0; y < spec.height; y += dy) {
    raw->push_back(0);  // filter type None
    uint32_t bit_buffer = 0;
    int bits = 0;
    for (uint32_t x = x0; x < spec.width; x += dx) {
      const std::vector<uint32_t> s = spec.samples(x, y);
      for (int c = 0; c < channels; ++c) {
        if (spec.bit_depth == 16) {
          raw->push_back(static_cast<char>(s[c] >> 8));
          raw->push_back(static_cast<char>(s[c] & 0xFF));
        } else if (spec.bit_depth == 8) {
          raw->push_back(static_cast<char>(s[c]));
        } else {
          bit_buffer = (bit_buffer << spec.bit_depth) | s[c];
          bits += spec.bit_depth;
          if (bits == 8) {
            raw->push_back(static_cast<char>(bit_buffer));
            bit_buffer = 0;
            bits = 0;
          }
        }
      }
    }
    if (bits > 0) raw->push_back(static_cast<char>(bit_buffer << (8 - bits)));
  }
}

inline std::string BuildPng(const PngSpec& spec) {
  std::string png("\x89PNG\r\n\x1a\n", 8);
  AppendChunk(&png, "IHDR", IhdrPayload(spec.width, spec.height, spec.bit_depth, spec.color_type, spec.interlaced));
  if (!spec.palette.empty()) AppendChunk(&png, "PLTE", spec.palette);
  if (!spec.trns.empty()) AppendChunk(&png, "tRNS", spec.trns);
  std::string raw;
  if (!spec.interlaced) {
    AppendScanlines(spec, 0, 0, 1, 1, &raw);
  } else {
    static constexpr uint32_t kPasses[7][4] = {{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4},
                                               {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}};
    for (const auto& p : kPasses) {
      if (p[0] >= spec.width || p[1] >= spec.height) continue;  // an empty pass has no rows at all
      AppendScanlines(spec, p[0], p[1], p[2], p[3], &raw);
    }
  }
  AppendChunk(&png, "IDAT", ZlibStored(raw));
  AppendChunk(&png, "IEND", "");
  return png;
}

// An 8-bit RGB test pattern with distinct values per pixel and channel.
inline PngSpec RgbPattern(uint32_t width, uint32_t height) {
  PngSpec spec;
  spec.width = width;
  spec.height = height;
  spec.samples = [](uint32_t x, uint32_t y) {
    return std::vector<uint32_t>{(x * 37 + y * 11) % 256, (x * 5 + y * 71) % 256, (x * y + 13) % 256};
  };
  return spec;
}

}  // namespace xcpipe::image::testing
