// Framing of control messages: one Envelope = one flat Cap'n Proto message = one byte string.
//
// Encoding is trivial; decoding is where outside bytes enter, so it
//   * copies into word-aligned storage it owns (ZeroMQ frames received over TCP are sometimes
//     only 4-byte aligned, and Cap'n Proto 0.9 throws on that; and the frame dies before the
//     envelope is handled),
//   * applies explicit ReaderOptions (traversal and nesting limits),
//   * checks the size is a whole number of words, within kMaxControlMessageBytes and within
//     its type's own limit (MaxBytesFor),
//   * turns every kj::Exception into an InvalidArgument Status. Nothing throws out of here.
//
// DecodedEnvelope owns its storage; the Reader it hands out is valid while it lives.
#pragma once

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cstddef>
#include <memory>
#include <span>
#include <string>

#include "xcpipe/base/status.h"
#include "xcpipe/schemas/xcpipe.capnp.h"

namespace xcpipe::wire {

// Control messages carry preprocessed images (an HD image of 25 tiles is ~34 MB of float32);
// anything larger than this is refused before parsing.
inline constexpr size_t kMaxControlMessageBytes = size_t{256} << 20;

// The largest message of each type that is read at all: a heartbeat or a hello of megabytes is
// refused before its fields are touched. Only the types that carry images, activations' token
// ids or logits may approach kMaxControlMessageBytes.
size_t MaxBytesFor(proto::Envelope::Which type);

// Limits for an untrusted message of `message_bytes`: at most 4 times its own words may be
// traversed (bounds the amplification a crafted message can cause), nesting 32.
capnp::ReaderOptions UntrustedReaderOptions(size_t message_bytes);

// Serialises a builder to bytes.
std::string Encode(capnp::MessageBuilder& message);

class DecodedEnvelope {
 public:
  DecodedEnvelope(const DecodedEnvelope&) = delete;
  DecodedEnvelope& operator=(const DecodedEnvelope&) = delete;

  proto::Envelope::Reader envelope() const { return envelope_; }

 private:
  friend StatusOr<std::unique_ptr<DecodedEnvelope>> Decode(std::span<const std::byte> bytes);
  DecodedEnvelope() = default;
  kj::Array<capnp::word> aligned_;  // the message bytes, owned and word-aligned
  std::unique_ptr<capnp::FlatArrayMessageReader> reader_;
  proto::Envelope::Reader envelope_;
};

// Parses and validates the envelope's framing (not the meaning of its fields).
StatusOr<std::unique_ptr<DecodedEnvelope>> Decode(std::span<const std::byte> bytes);

// Mapping between Status codes and the wire ErrorCode.
proto::ErrorCode ToWire(StatusCode code);
StatusCode FromWire(proto::ErrorCode code);

// Fills an error envelope from a Status; the caller sets the id field of what it concerns
// (requestId, sequenceId or microBatchId) on the returned builder.
proto::Error::Builder SetError(proto::Envelope::Builder envelope, const Status& status);

}  // namespace xcpipe::wire
