#include "xcpipe/transport/frame.h"

#include <cstring>

namespace xcpipe::transport {
namespace {

template <typename T>
void PutLe(std::byte* out, T value) {
  for (size_t i = 0; i < sizeof(T); ++i) out[i] = static_cast<std::byte>((value >> (8 * i)) & 0xFF);
}

template <typename T>
T GetLe(const std::byte* in) {
  T value = 0;
  for (size_t i = 0; i < sizeof(T); ++i) value |= static_cast<T>(std::to_integer<uint8_t>(in[i])) << (8 * i);
  return value;
}

std::string Hex(std::span<const std::byte> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (std::byte b : bytes) {
    auto v = std::to_integer<uint8_t>(b);
    out += kDigits[v >> 4];
    out += kDigits[v & 15];
  }
  return out;
}

}  // namespace

std::array<std::byte, kPreambleBytes> EncodePreamble(const FramePreamble& preamble) {
  std::array<std::byte, kPreambleBytes> out{};
  std::memcpy(out.data(), kFrameMagic.data(), kFrameMagic.size());
  PutLe<uint16_t>(out.data() + 4, preamble.version);
  PutLe<uint16_t>(out.data() + 6, preamble.flags);
  PutLe<uint32_t>(out.data() + 8, preamble.header_bytes);
  PutLe<uint32_t>(out.data() + 12, preamble.header_crc32c);
  PutLe<uint64_t>(out.data() + 16, preamble.payload_bytes);
  return out;
}

StatusOr<FramePreamble> DecodePreamble(std::span<const std::byte, kPreambleBytes> bytes, const MessageLimits& limits) {
  if (std::memcmp(bytes.data(), kFrameMagic.data(), kFrameMagic.size()) != 0) {
    return InvalidArgumentError("frame starts with bytes 0x" + Hex(bytes.first(4)) +
                                "; expected the data-plane magic 0x58434450 (\"XCDP\")");
  }
  FramePreamble p;
  p.version = GetLe<uint16_t>(bytes.data() + 4);
  p.flags = GetLe<uint16_t>(bytes.data() + 6);
  p.header_bytes = GetLe<uint32_t>(bytes.data() + 8);
  p.header_crc32c = GetLe<uint32_t>(bytes.data() + 12);
  p.payload_bytes = GetLe<uint64_t>(bytes.data() + 16);
  if (p.version != kFrameVersion) {
    return InvalidArgumentError("frame version " + std::to_string(p.version) + "; this build speaks version " +
                                std::to_string(kFrameVersion));
  }
  if ((p.flags & ~kKnownFlags) != 0) {
    return InvalidArgumentError("frame flags 0x" + Hex(bytes.subspan(6, 2)) +
                                " (little-endian) set unknown bits; "
                                "expected only bit 0 (payload out of band)");
  }
  if (p.header_bytes == 0 || p.header_bytes % 8 != 0) {
    return InvalidArgumentError("frame header length " + std::to_string(p.header_bytes) +
                                "; expected a positive multiple of 8 bytes");
  }
  if (p.header_bytes > limits.max_header_bytes) {
    return InvalidArgumentError("frame header length " + std::to_string(p.header_bytes) +
                                " bytes exceeds the limit of " + std::to_string(limits.max_header_bytes));
  }
  if (p.payload_out_of_band() && p.payload_bytes != 0) {
    return InvalidArgumentError("frame says its payload travels out of band but announces " +
                                std::to_string(p.payload_bytes) + " payload bytes; expected 0");
  }
  if (p.payload_bytes > limits.max_payload_bytes) {
    return InvalidArgumentError("frame payload length " + std::to_string(p.payload_bytes) +
                                " bytes exceeds the limit of " + std::to_string(limits.max_payload_bytes));
  }
  return p;
}

}  // namespace xcpipe::transport
