// StageMessage: one stage hand-off (the activations of one micro-batch step leaving a stage),
// and the codec of its header (schemas/dataplane.capnp StageHeader).
//
// A StageMessage is a value: the step's identity (epoch, micro-batch, step), the sequences its
// rows belong to (segments) and N tensor frames. On the wire it becomes a fixed preamble, a
// Cap'n Proto header describing each tensor (name, dtype, shape, byte length, checksum) and
// then the raw tensor bytes (see frame.h). Tensor bytes are never inside the Cap'n Proto
// message.
//
// Decoding is where outside bytes enter, so DecodeStageHeader
//   * refuses headers over MessageLimits::max_header_bytes or not a whole number of words,
//   * copies into word-aligned storage when the input is not 8-byte aligned,
//   * reads with explicit capnp::ReaderOptions (traversal limit from the header size, nesting 16),
//   * bounds the number of segments, tensors, dimensions and name bytes,
//   * checks each byteLength equals product(shape) * dtype size (overflow-checked), the sum
//     against max_payload_bytes, enum values, names (non-empty, unique), non-negative rows,
// and returns InvalidArgument naming what was wrong and what was expected. Nothing throws out
// of these functions (kj::Exception is caught and turned into a Status).
//
// Free functions and value types; thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <memory>
#include <string>
#include <vector>

#include "xcpipe/base/status.h"
#include "xcpipe/transport/tensor_frame.h"

namespace xcpipe::transport {

// One sequence's rows within the step (schemas/dataplane.capnp Segment).
struct Segment {
  uint64_t sequence_id = 0;
  int64_t rows = 0;       // rows this step adds for the sequence
  int64_t start_pos = 0;  // tokens already in the sequence's KV cache
  friend bool operator==(const Segment&, const Segment&) = default;
};

struct StageMessage {
  uint64_t epoch = 0;
  uint64_t micro_batch_id = 0;
  uint64_t step = 0;
  std::vector<Segment> segments;
  std::vector<TensorFrame> tensors;
  // Sender side, CUDA builds: an event (cudaEvent_t) recorded after the compute that wrote the
  // device tensors; an NCCL send makes its stream wait on it before reading them. Null for host
  // tensors. Never travels.
  std::shared_ptr<void> ready_event;

  // Sum of the tensors' byte lengths.
  uint64_t payload_bytes() const;
  // The tensor called `name`, or nullptr.
  const TensorFrame* Find(std::string_view name) const;
};

// Bounds applied to every header a receiver reads (and that a sender checks before sending,
// so an oversize message is refused at its source with the same words). Named here, read in
// one place: a worker sizes max_payload_bytes from its plan (rows * hidden * dtype + masks).
struct MessageLimits {
  size_t max_header_bytes = size_t{1} << 20;       // the Cap'n Proto header alone
  size_t max_tensors = 64;                         // descriptors per message
  size_t max_segments = 1 << 16;                   // sequences per micro-batch
  size_t max_rank = 8;                             // dimensions per tensor
  size_t max_name_bytes = 256;                     // bytes of a tensor's name
  uint64_t max_payload_bytes = uint64_t{4} << 30;  // all tensor bytes of one message
};

enum class ChecksumKind : uint8_t { kNone = 0, kCrc32c = 1 };  // = dataplane.capnp ChecksumKind

// One tensor's description in a header.
struct TensorDescriptor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t byte_length = 0;
  uint32_t checksum = 0;  // CRC-32C of the bytes when the header's checksum_kind is kCrc32c
};

// A decoded, validated header.
struct StageHeader {
  uint64_t epoch = 0;
  uint64_t micro_batch_id = 0;
  uint64_t step = 0;
  std::vector<Segment> segments;
  std::vector<TensorDescriptor> tensors;
  ChecksumKind checksum_kind = ChecksumKind::kNone;
  uint64_t payload_bytes = 0;  // sum of byte_length, computed while validating
};

// Checks a message against `limits` before it is sent: counts, ranks, names, byte lengths.
Status ValidateOutgoing(const StageMessage& message, const MessageLimits& limits);

// Serialises the header of `message` as one flat Cap'n Proto message (a whole number of
// 8-byte words). `checksums` holds one CRC-32C per tensor when kind is kCrc32c, else is empty.
StatusOr<std::vector<std::byte>> EncodeStageHeader(const StageMessage& message, ChecksumKind kind,
                                                   std::span<const uint32_t> checksums);

// Parses and validates a header received from a peer (see the list at the top).
StatusOr<StageHeader> DecodeStageHeader(std::span<const std::byte> bytes, const MessageLimits& limits);

}  // namespace xcpipe::transport
