// The data plane's framing: what one StageMessage looks like on a byte stream.
//
//   offset  size  field
//   0       4     magic "XCDP" (bytes 0x58 0x43 0x44 0x50)
//   4       2     version, little-endian (kFrameVersion = dataplane.capnp kDataPlaneVersion)
//   6       2     flags, little-endian: bit 0 = tensor bytes travel out of band (NCCL);
//                 every other bit must be 0
//   8       4     header length in bytes, little-endian (> 0, a multiple of 8)
//   12      4     CRC-32C of the header bytes, little-endian (always present: headers are small)
//   16      8     payload length in bytes, little-endian (= sum of the descriptors' byteLength;
//                 0 when out of band)
//   24      ...   header: one flat Cap'n Proto StageHeader
//   ...     ...   payload: each tensor's bytes, back to back, in descriptor order
//
// A receiver checks the preamble (magic, version, flags, both lengths against its limits)
// before it reads another byte, checks the header's CRC before parsing it, and checks the
// payload length against the descriptors before reading the payload: a peer that lies about a
// length is refused before any buffer is sized from its numbers.
//
// Free functions on values; thread-safe.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

#include "xcpipe/base/status.h"
#include "xcpipe/transport/stage_message.h"

namespace xcpipe::transport {

inline constexpr std::array<std::byte, 4> kFrameMagic = {std::byte{'X'}, std::byte{'C'}, std::byte{'D'},
                                                         std::byte{'P'}};
inline constexpr uint16_t kFrameVersion = 1;
inline constexpr size_t kPreambleBytes = 24;
inline constexpr uint16_t kFlagPayloadOutOfBand = 1u << 0;
inline constexpr uint16_t kKnownFlags = kFlagPayloadOutOfBand;

struct FramePreamble {
  uint16_t version = kFrameVersion;
  uint16_t flags = 0;
  uint32_t header_bytes = 0;
  uint32_t header_crc32c = 0;
  uint64_t payload_bytes = 0;

  bool payload_out_of_band() const { return (flags & kFlagPayloadOutOfBand) != 0; }
};

std::array<std::byte, kPreambleBytes> EncodePreamble(const FramePreamble& preamble);

// Parses and checks a preamble against `limits`: magic, version, unknown flags, header length
// (non-zero, whole words, <= max_header_bytes), payload length (<= max_payload_bytes; 0 when
// out of band). InvalidArgument naming the field, the value seen and what was expected.
StatusOr<FramePreamble> DecodePreamble(std::span<const std::byte, kPreambleBytes> bytes, const MessageLimits& limits);

}  // namespace xcpipe::transport
