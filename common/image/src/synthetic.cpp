#include "xcpipe/image/synthetic.h"

#include <algorithm>
#include <cstdint>
#include <string>

namespace xcpipe::image {
namespace {

uint32_t Crc32(const std::string& bytes) {
  uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char c : bytes) {
    crc ^= c;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return crc ^ 0xFFFFFFFFu;
}

void PutBigEndian32(std::string& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xFF));
}

void PutChunk(std::string& png, const char* type, const std::string& data) {
  PutBigEndian32(png, static_cast<uint32_t>(data.size()));
  std::string typed = std::string(type, 4) + data;
  png += typed;
  PutBigEndian32(png, Crc32(typed));
}

}  // namespace

// An 8-bit RGB PNG of a colour gradient. The zlib stream uses stored (uncompressed) deflate
// blocks: any PNG decoder reads them, and no compressor is needed.
std::string SyntheticPng(int width, int height) {
  std::string raw;
  for (int y = 0; y < height; ++y) {
    raw.push_back(0);  // filter: none
    for (int x = 0; x < width; ++x) {
      raw.push_back(static_cast<char>(255 * x / std::max(1, width - 1)));
      raw.push_back(static_cast<char>(255 * y / std::max(1, height - 1)));
      raw.push_back(static_cast<char>(((x / 8 + y / 8) % 2) ? 200 : 40));
    }
  }
  std::string z = {0x78, 0x01};
  constexpr size_t kMaxStored = 65535;
  for (size_t at = 0; at < raw.size() || at == 0; at += kMaxStored) {
    const size_t n = std::min(kMaxStored, raw.size() - at);
    const bool last = at + n >= raw.size();
    z.push_back(last ? 1 : 0);
    z.push_back(static_cast<char>(n & 0xFF));
    z.push_back(static_cast<char>(n >> 8));
    z.push_back(static_cast<char>(~n & 0xFF));
    z.push_back(static_cast<char>((~n >> 8) & 0xFF));
    z.append(raw, at, n);
    if (last) break;
  }
  uint32_t a = 1, b = 0;  // Adler-32 of the uncompressed data
  for (unsigned char c : raw) {
    a = (a + c) % 65521;
    b = (b + a) % 65521;
  }
  PutBigEndian32(z, (b << 16) | a);
  std::string png = "\x89PNG\r\n\x1a\n";
  std::string header;
  PutBigEndian32(header, static_cast<uint32_t>(width));
  PutBigEndian32(header, static_cast<uint32_t>(height));
  header += std::string("\x08\x02\x00\x00\x00", 5);  // 8-bit, RGB, deflate, filter 0, no interlace
  PutChunk(png, "IHDR", header);
  PutChunk(png, "IDAT", z);
  PutChunk(png, "IEND", "");
  return png;
}


}  // namespace xcpipe::image
