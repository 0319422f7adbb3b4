// CRC-32C (Castagnoli): the checksum of every tensor frame on the TCP data plane.
//
// Why CRC-32C and not zlib's CRC-32: both ends of a 3-4 GB/s loopback link checksum every
// byte, so the checksum must cost a small fraction of the copy. zlib's crc32 runs ~6.5 GB/s
// here and boost::crc ~0.5 GB/s; CRC-32C has hardware help on x86-64. The fastest available
// implementation is picked once at start-up (all give identical values):
//   * AVX-512 VPCLMULQDQ folding: ~67 GB/s on cached data, ~25 GB/s from DRAM (this CPU);
//   * SSE4.2 `crc32` instruction, three interleaved streams: ~32 / ~20 GB/s;
//   * portable slicing-by-8 tables: ~1.5 GB/s (no SSE4.2).
//
// Conventions: reflected polynomial 0x82F63B78, initial value and final xor 0xFFFFFFFF
// (iSCSI / RFC 3720); Crc32c("123456789") == 0xE3069283.
//
// Stateless free functions; thread-safe. Never fail.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace xcpipe::transport {

// Continues a checksum: Crc32cExtend(Crc32c(a), b) == Crc32c(a ++ b). Start with crc = 0.
uint32_t Crc32cExtend(uint32_t crc, std::span<const std::byte> bytes);

inline uint32_t Crc32c(std::span<const std::byte> bytes) { return Crc32cExtend(0, bytes); }

enum class Crc32cImpl : uint8_t { kPortable, kSse42, kAvx512Fold };

// The table-driven implementation (the reference the others are tested against).
uint32_t Crc32cExtendPortable(uint32_t crc, std::span<const std::byte> bytes);
// A named implementation; falls back to the portable one where `impl` is not supported.
uint32_t Crc32cExtendWith(Crc32cImpl impl, uint32_t crc, std::span<const std::byte> bytes);
bool Crc32cSupported(Crc32cImpl impl);
// What Crc32cExtend uses on this CPU, and a name for reports.
Crc32cImpl Crc32cBestImpl();
std::string_view Crc32cImplName(Crc32cImpl impl);
bool Crc32cIsHardwareAccelerated();

}  // namespace xcpipe::transport
