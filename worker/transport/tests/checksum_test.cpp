#include "xcpipe/transport/checksum.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <random>
#include <string_view>
#include <vector>

namespace xcpipe::transport {
namespace {

std::span<const std::byte> Bytes(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

TEST(Crc32cTest, KnownVectors) {
  EXPECT_EQ(Crc32c(Bytes("123456789")), 0xE3069283u);
  EXPECT_EQ(Crc32c({}), 0u);
  // RFC 3720 B.4: 32 bytes of zeros, of 0xFF, and 0..31.
  std::vector<std::byte> zeros(32, std::byte{0}), ones(32, std::byte{0xFF}), ramp(32);
  for (int i = 0; i < 32; ++i) ramp[i] = std::byte(i);
  EXPECT_EQ(Crc32c(zeros), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(ones), 0x62A8AB43u);
  EXPECT_EQ(Crc32c(ramp), 0x46DD794Eu);
  EXPECT_EQ(Crc32cExtendPortable(0, Bytes("123456789")), 0xE3069283u);
}

// Every implementation this CPU supports gives the portable one's value, at lengths around
// each one's block sizes (3*256 and 3*8192 for sse4.2, 256-byte folds for avx512) and at
// every alignment, from a zero and a non-zero starting value.
TEST(Crc32cTest, EveryImplementationMatchesPortable) {
  std::mt19937 rng(12345);
  std::vector<std::byte> buffer((size_t{1} << 20) + 64);
  for (auto& b : buffer) b = std::byte(rng());
  std::vector<size_t> lengths = {0,    1,     7,     8,     9,     15,    16,    17,    63,      64,     255,
                                 256,  257,   271,   511,   512,   767,   768,   769,   1000,    4095,   8191,
                                 8192, 24575, 24576, 24577, 49152, 50000, 65536, 99999, 1 << 19, 1 << 20};
  int checked = 0;
  for (auto impl : {Crc32cImpl::kSse42, Crc32cImpl::kAvx512Fold}) {
    if (!Crc32cSupported(impl)) continue;
    ++checked;
    for (size_t offset = 0; offset < 9; ++offset) {
      for (size_t len : lengths) {
        auto span = std::span<const std::byte>(buffer).subspan(offset, len);
        for (uint32_t start : {0u, 0xDEADBEEFu}) {
          ASSERT_EQ(Crc32cExtendWith(impl, start, span), Crc32cExtendPortable(start, span))
              << Crc32cImplName(impl) << ": offset " << offset << " length " << len << " start " << start;
        }
      }
    }
  }
  RecordProperty("implementations_checked", checked);
  RecordProperty("best", std::string(Crc32cImplName(Crc32cBestImpl())));
  EXPECT_EQ(Crc32cExtendWith(Crc32cImpl::kPortable, 0, std::span<const std::byte>(buffer)), Crc32c(buffer));
}

TEST(Crc32cTest, ExtendEqualsWhole) {
  std::mt19937 rng(7);
  std::vector<std::byte> buffer(100000);
  for (auto& b : buffer) b = std::byte(rng());
  const uint32_t whole = Crc32c(buffer);
  for (size_t cut : {size_t{0}, size_t{1}, size_t{4096}, size_t{77777}, buffer.size()}) {
    auto first = std::span<const std::byte>(buffer).first(cut);
    auto rest = std::span<const std::byte>(buffer).subspan(cut);
    EXPECT_EQ(Crc32cExtend(Crc32c(first), rest), whole) << "cut at " << cut;
  }
}

TEST(Crc32cTest, DetectsASingleFlippedBit) {
  std::vector<std::byte> buffer(1 << 20, std::byte{0x5A});
  const uint32_t before = Crc32c(buffer);
  buffer[123457] ^= std::byte{0x10};
  EXPECT_NE(Crc32c(buffer), before);
}

// The data plane checksums every byte on both ends; it must not be the bottleneck.
TEST(Crc32cTest, RunsAtLeastOneGigabytePerSecond) {
  std::vector<std::byte> buffer(size_t{64} << 20, std::byte{1});
  double best = 0;
  for (int run = 0; run < 3; ++run) {
    auto start = std::chrono::steady_clock::now();
    volatile uint32_t crc = Crc32c(buffer);
    (void)crc;
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::max(best, buffer.size() / seconds / 1e9);
  }
  RecordProperty("crc32c_gb_per_s", std::to_string(best));
  EXPECT_GE(best, 1.0) << "CRC-32C ran at " << best << " GB/s (" << Crc32cImplName(Crc32cBestImpl()) << ")";
}

}  // namespace
}  // namespace xcpipe::transport
