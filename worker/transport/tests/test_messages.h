// Helpers shared by the transport tests: stage messages with recognisable contents, and whole
// frames encoded by hand (so malformed-input tests can break any field of them).
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "xcpipe/transport/checksum.h"
#include "xcpipe/transport/frame.h"
#include "xcpipe/transport/stage_message.h"
#include "xcpipe/transport/tcp_data_plane.h"

namespace xcpipe::transport::testing {

// Byte i of a tensor of step `step` and tensor index `t`.
inline std::byte PatternByte(uint64_t step, size_t t, size_t i) {
  return std::byte(static_cast<uint8_t>((step * 131 + t * 17 + i * 7 + (i >> 12)) & 0xFF));
}

inline std::vector<std::byte> PatternBytes(uint64_t step, size_t t, size_t n) {
  std::vector<std::byte> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = PatternByte(step, t, i);
  return out;
}

// A stage hand-off like the real one: hidden [rows, hidden] bf16, im_mask [rows] bool,
// positions [rows] i64, with two segments. The tensors own their bytes.
inline StageMessage MakeStageMessage(uint64_t step, int64_t rows, int64_t hidden = 64) {
  StageMessage m;
  m.epoch = 3;
  m.micro_batch_id = 11;
  m.step = step;
  m.segments = {{101, rows / 2, 0}, {202, rows - rows / 2, 17}};
  auto add = [&](const std::string& name, DType dtype, std::vector<int64_t> shape) {
    auto bytes = TensorByteLength(dtype, shape);
    EXPECT_TRUE(bytes.ok());
    auto frame = TensorFrame::Own(name, dtype, shape, PatternBytes(step, m.tensors.size(), *bytes));
    EXPECT_TRUE(frame.ok()) << frame.status().ToString();
    m.tensors.push_back(std::move(*frame));
  };
  add("hidden", DType::kBF16, {rows, hidden});
  add("im_mask", DType::kBool, {rows});
  add("positions", DType::kI64, {rows});
  return m;
}

inline TcpDataPlaneOptions ListenOn(TcpEndpoint at, TcpLinkOptions link = {}) {
  TcpDataPlaneOptions o;
  o.listen = std::move(at);
  o.link = std::move(link);
  return o;
}

inline TcpDataPlaneOptions SendTo(TcpEndpoint to, TcpLinkOptions link = {}) {
  TcpDataPlaneOptions o;
  o.next = std::move(to);
  o.link = std::move(link);
  return o;
}

// Compares metadata and every byte.
inline void ExpectSameMessage(const StageMessage& want, const StageMessage& got) {
  EXPECT_EQ(got.epoch, want.epoch);
  EXPECT_EQ(got.micro_batch_id, want.micro_batch_id);
  EXPECT_EQ(got.step, want.step);
  EXPECT_EQ(got.segments, want.segments);
  ASSERT_EQ(got.tensors.size(), want.tensors.size());
  for (size_t i = 0; i < want.tensors.size(); ++i) {
    const auto& a = want.tensors[i];
    const auto& b = got.tensors[i];
    EXPECT_EQ(b.name(), a.name());
    EXPECT_EQ(b.dtype(), a.dtype());
    EXPECT_EQ(b.shape(), a.shape());
    ASSERT_EQ(b.byte_length(), a.byte_length()) << a.name();
    EXPECT_TRUE(a.byte_length() == 0 || std::memcmp(a.bytes().data(), b.bytes().data(), a.byte_length()) == 0)
        << "bytes of tensor '" << a.name() << "' differ";
  }
}

// The pieces of a frame, each of which a test may corrupt before Join().
struct RawFrame {
  FramePreamble preamble;
  std::vector<std::byte> header;
  std::vector<std::byte> payload;

  // Recomputes the preamble's header length and CRC from `header`.
  void SealHeader() {
    preamble.header_bytes = static_cast<uint32_t>(header.size());
    preamble.header_crc32c = Crc32c(header);
  }
  std::vector<std::byte> Join() const {
    auto p = EncodePreamble(preamble);
    std::vector<std::byte> out(p.begin(), p.end());
    out.insert(out.end(), header.begin(), header.end());
    out.insert(out.end(), payload.begin(), payload.end());
    return out;
  }
};

inline RawFrame EncodeRawFrame(const StageMessage& m, bool checksum = true) {
  RawFrame f;
  std::vector<uint32_t> crcs;
  if (checksum) {
    for (const auto& t : m.tensors) crcs.push_back(Crc32c(t.bytes()));
  }
  auto header = EncodeStageHeader(m, checksum ? ChecksumKind::kCrc32c : ChecksumKind::kNone, crcs);
  EXPECT_TRUE(header.ok()) << header.status().ToString();
  f.header = std::move(*header);
  for (const auto& t : m.tensors) f.payload.insert(f.payload.end(), t.bytes().begin(), t.bytes().end());
  f.preamble.payload_bytes = f.payload.size();
  f.SealHeader();
  return f;
}

}  // namespace xcpipe::transport::testing
