#include "xcpipe/schemas/wire.h"

#include <kj/exception.h>

#include <algorithm>
#include <cstring>

namespace xcpipe::wire {

capnp::ReaderOptions UntrustedReaderOptions(size_t message_bytes) {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = std::max<size_t>(1024, 4 * (message_bytes / sizeof(capnp::word)));
  options.nestingLimit = 32;
  return options;
}

std::string Encode(capnp::MessageBuilder& message) {
  kj::Array<capnp::word> words = capnp::messageToFlatArray(message);
  auto bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

size_t MaxBytesFor(proto::Envelope::Which type) {
  constexpr size_t kSmall = size_t{64} << 10;  // fixed fields and a few short texts
  constexpr size_t kMedium = size_t{4} << 20;  // lists bounded by the context or the cluster size
  using W = proto::Envelope::Which;
  switch (type) {
    case W::HELLO:
    case W::WELCOME:
    case W::HEARTBEAT:
    case W::ERROR:
    case W::ASSIGN_STAGE:
    case W::LOAD_PROGRESS:
    case W::STAGE_READY:
    case W::DRAIN:
    case W::SHUTDOWN:
    case W::STATUS_REQUEST:
    case W::IMAGE_ENCODED:
      return kSmall;
    case W::ADMIT_SEQUENCE:  // penalty context: up to a whole context of token ids
    case W::RELEASE_SEQUENCES:
    case W::TOKEN_EVENT:  // one logits row, or every token of a finished prompt
    case W::STATUS_REPLY:
      return kMedium;
    case W::FORWARD:       // token ids of a micro-batch plus preprocessed images
    case W::STEP_RESULT:   // logits rows when asked for
    case W::SUBMIT:        // encoded or preprocessed images
    case W::ENCODE_IMAGE:  // one preprocessed image (all its HD tiles)
      return kMaxControlMessageBytes;
  }
  return kSmall;  // a type newer than this build: read only if small
}

StatusOr<std::unique_ptr<DecodedEnvelope>> Decode(std::span<const std::byte> bytes) {
  if (bytes.empty()) return InvalidArgumentError("control message is empty; expected a Cap'n Proto Envelope");
  if (bytes.size() % sizeof(capnp::word) != 0) {
    return InvalidArgumentError("control message of " + std::to_string(bytes.size()) +
                                " bytes is not a whole number of 8-byte words; expected a flat Cap'n Proto message");
  }
  if (bytes.size() > kMaxControlMessageBytes) {
    return InvalidArgumentError("control message of " + std::to_string(bytes.size()) + " bytes exceeds the limit of " +
                                std::to_string(kMaxControlMessageBytes));
  }
  std::unique_ptr<DecodedEnvelope> out(new DecodedEnvelope());
  // Always copy: the envelope must own its bytes (the caller's buffer, e.g. a ZeroMQ frame,
  // dies before the envelope is handled), and the copy is word-aligned, which Cap'n Proto
  // needs and ZeroMQ frames received over TCP do not guarantee.
  out->aligned_ = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
  std::memcpy(out->aligned_.begin(), bytes.data(), bytes.size());
  kj::ArrayPtr<const capnp::word> words(out->aligned_.begin(), out->aligned_.size());
  try {
    out->reader_ = std::make_unique<capnp::FlatArrayMessageReader>(words, UntrustedReaderOptions(bytes.size()));
    out->envelope_ = out->reader_->getRoot<proto::Envelope>();
    // Touch the union tag so framing errors surface here, not in a handler.
    const auto type = out->envelope_.which();
    if (bytes.size() > MaxBytesFor(type)) {
      return InvalidArgumentError("control message of type " + std::to_string(static_cast<int>(type)) + " has " +
                                  std::to_string(bytes.size()) + " bytes; at most " +
                                  std::to_string(MaxBytesFor(type)) + " are accepted for that type");
    }
  } catch (const kj::Exception& e) {
    return InvalidArgumentError(std::string("malformed control message: ") + e.getDescription().cStr());
  }
  return out;
}

proto::ErrorCode ToWire(StatusCode code) { return static_cast<proto::ErrorCode>(static_cast<uint16_t>(code)); }

StatusCode FromWire(proto::ErrorCode code) {
  auto value = static_cast<uint16_t>(code);
  if (value > static_cast<uint16_t>(StatusCode::kAlreadyExists)) return StatusCode::kInternal;
  return static_cast<StatusCode>(value);
}

proto::Error::Builder SetError(proto::Envelope::Builder envelope, const Status& status) {
  auto error = envelope.initError();
  error.setCode(ToWire(status.code()));
  error.setMessage(status.message());
  return error;
}

}  // namespace xcpipe::wire
