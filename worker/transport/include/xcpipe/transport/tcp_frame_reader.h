// TcpFrameReader: the data plane's frame parser for a byte stream, without a socket. Bytes go in
// as they arrive, in pieces of any size (one byte at a time, half a preamble, two frames at
// once); complete, checked frames come out, or an error naming what was wrong with the bytes.
// TcpReceiverLink reads its connection through one; tests and the fuzz target feed one directly.
// Frame layout and the order of the checks: frame.h.
//
//   [preamble] --24 bytes, checked--> [header] --header bytes, CRC and descriptors checked-->
//   [payload] --every tensor's bytes, each CRC checked--> [complete] --TakeFrame()--> [preamble]
//   Out-of-band frames (NCCL) and frames without tensors are complete after their header.
//   Any check that fails --> [failed]: every call but Reset() returns FailedPrecondition.
//
// Two ways in:
//   * Feed(bytes) copies bytes into place and says how many it took: it stops at the end of a
//     frame, so bytes of the next frame stay with the caller until TakeFrame().
//   * Targets() + Commit(n), for reads straight into place without a copy (the link's scatter
//     reads): Targets() names where the next bytes of the frame belong (the rest of the
//     preamble, of the header, or of the current tensor and those after it); the caller writes
//     n bytes there, in order, and calls Commit(n).
//
// Errors: InvalidArgument naming the check (bad magic, unknown version or flags, a length over
// the limits, a header checksum or a tensor checksum that does not match, a payload length the
// descriptors disagree with, a frame without the checksums that are required, a payload mode the
// reader does not serve); ResourceExhausted when no receive buffer can be had for the payload.
// EndOfStream() says whether the stream may end here, or names the part of the frame cut short.
//
// Memory: the payload of a frame goes into one block of the given HostBufferPool, tensors at
// 64-byte boundaries; the frame's tensors share that block. Sizes are checked against the limits
// before any buffer is sized from them.
//
// Not thread-safe: one reader per stream, used by one thread at a time. Never blocks, never
// reads a clock, never touches a socket.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "xcpipe/base/status.h"
#include "xcpipe/transport/buffer_pool.h"
#include "xcpipe/transport/frame.h"
#include "xcpipe/transport/stage_message.h"

namespace xcpipe::transport {

// How a frame's tensor bytes travel.
enum class PayloadMode : uint8_t {
  kInBand = 0,     // after the header on this connection (TCP data plane)
  kOutOfBand = 1,  // elsewhere (NCCL); the frame carries the header only
};

// A frame as read: the validated header, and for in-band frames the message with its tensors in
// pooled host memory. Out-of-band frames leave message.tensors empty: the caller fetches the
// bytes the descriptors describe (NCCL).
struct ReceivedFrame {
  StageHeader header;
  bool payload_out_of_band = false;
  StageMessage message;
};

struct FrameReaderOptions {
  MessageLimits limits;
  PayloadMode expect = PayloadMode::kInBand;  // a frame of the other mode is refused
  bool require_checksum = true;               // refuse in-band frames with tensors but no CRC-32C
};

class TcpFrameReader {
 public:
  enum class Phase : uint8_t { kPreamble, kHeader, kPayload, kComplete, kFailed };
  // Each tensor of a frame starts at a multiple of this in the frame's block.
  static constexpr size_t kPayloadAlignment = 64;

  // `pool` provides the payload blocks and must outlive the reader (frames may outlive both).
  TcpFrameReader(FrameReaderOptions options, HostBufferPool& pool);
  TcpFrameReader(const TcpFrameReader&) = delete;
  TcpFrameReader& operator=(const TcpFrameReader&) = delete;

  // The payload mode served from the next preamble on (a link serves one mode per Receive).
  void set_expect(PayloadMode expect) { expect_ = expect; }

  // Takes bytes of the stream, up to the end of the current frame; returns how many it took
  // (fewer than given only when a frame is complete, and 0 while one waits for TakeFrame()).
  StatusOr<size_t> Feed(std::span<const std::byte> bytes);

  // Where the next bytes of the frame belong: at most `max_bytes` in at most `max_spans`
  // spans (the payload may span several tensors; the other phases give one span). Empty when a
  // frame is complete or the reader failed. Valid until the next call on the reader.
  std::span<const std::span<std::byte>> Targets(size_t max_bytes = SIZE_MAX, size_t max_spans = SIZE_MAX);
  // `n` bytes were written into the spans Targets() gave, in order (n <= their total).
  Status Commit(size_t n);

  bool frame_ready() const { return phase_ == Phase::kComplete; }
  // The complete frame; the reader starts on the next one. FailedPrecondition when none is
  // complete.
  StatusOr<ReceivedFrame> TakeFrame();

  // OK between frames (nothing of a frame read yet); otherwise InvalidArgument naming where the
  // stream stopped ("truncated frame: ... 10 of the 24 preamble bytes").
  Status EndOfStream() const;

  // Forgets the frame in progress (and a failure): the next byte starts a frame.
  void Reset();

  Phase phase() const { return phase_; }
  // Bytes of the current frame taken so far; > 0 means a frame is under way.
  uint64_t frame_got() const { return frame_got_; }
  // Bytes of the whole current frame: known once its preamble is read and checked (0 before).
  uint64_t frame_total() const;
  // Payload bytes of the current frame still to come (0 outside the payload phase).
  uint64_t payload_remaining() const;
  // Header bytes of the current frame still to come (0 outside the header phase).
  size_t header_remaining() const;

 private:
  Status Fail(Status status);
  Status PreambleDone();
  Status HeaderDone();
  // Verifies every tensor whose bytes are all here; completes the frame after the last one.
  Status FinishTensors();

  const FrameReaderOptions options_;
  HostBufferPool& pool_;
  PayloadMode expect_;
  Phase phase_ = Phase::kPreamble;
  std::vector<std::span<std::byte>> targets_;

  std::array<std::byte, kPreambleBytes> preamble_bytes_{};
  size_t preamble_got_ = 0;
  FramePreamble preamble_;
  std::vector<uint64_t> header_words_;  // word-aligned for Cap'n Proto
  size_t header_got_ = 0;
  StageHeader header_;
  std::shared_ptr<HostBuffer> block_;
  std::vector<size_t> offsets_;
  size_t tensor_ = 0;        // the tensor whose bytes come next
  uint64_t tensor_got_ = 0;  // of its bytes, received
  uint32_t crc_ = 0;         // of those bytes
  uint64_t frame_got_ = 0;
};

}  // namespace xcpipe::transport

namespace xcpipe::transport {

// Whole frames for message-oriented transports (the image link: one ZeroMQ message is one
// frame). EncodeFrameBytes lays out one in-band frame (preamble, header, every tensor's bytes,
// each tensor CRC-32C checked) in one buffer, after the checks a sender makes (ValidateOutgoing
// against `limits`); tensors must be in host memory. DecodeFrameBytes runs the bytes through a
// TcpFrameReader with every check a stream receiver makes, and also refuses bytes that hold
// less or more than exactly one frame.
StatusOr<std::vector<std::byte>> EncodeFrameBytes(const StageMessage& message, const MessageLimits& limits);
StatusOr<ReceivedFrame> DecodeFrameBytes(std::span<const std::byte> bytes, const FrameReaderOptions& options,
                                         HostBufferPool& pool);

}  // namespace xcpipe::transport
