#include "xcpipe/transport/stage_message.h"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <cstring>
#include <new>
#include <unordered_set>

#include "xcpipe/schemas/dataplane.capnp.h"

namespace xcpipe::transport {
namespace {

namespace wire = ::xcpipe::proto::dataplane;

// Nesting: StageHeader -> List(TensorDescriptor) -> TensorDescriptor -> List(Int64) is 4 deep.
constexpr int kNestingLimit = 16;

Status CheckCounts(size_t segments, size_t tensors, const MessageLimits& limits) {
  if (segments > limits.max_segments) {
    return InvalidArgumentError(std::to_string(segments) + " segments; expected at most " +
                                std::to_string(limits.max_segments));
  }
  if (tensors > limits.max_tensors) {
    return InvalidArgumentError(std::to_string(tensors) + " tensors; expected at most " +
                                std::to_string(limits.max_tensors));
  }
  return OkStatus();
}

Status CheckSegment(size_t index, int64_t rows, int64_t start_pos) {
  if (rows < 0 || start_pos < 0) {
    return InvalidArgumentError("segment " + std::to_string(index) + " has rows " + std::to_string(rows) +
                                " and startPos " + std::to_string(start_pos) + "; expected both >= 0");
  }
  return OkStatus();
}

// Checks one tensor's description and adds its length to `total`.
Status CheckTensor(size_t index, std::string_view name, DType dtype, std::span<const int64_t> shape,
                   uint64_t byte_length, const MessageLimits& limits, std::unordered_set<std::string_view>& names,
                   uint64_t& total) {
  std::string where = "tensor " + std::to_string(index) + " '" + std::string(name.substr(0, 64)) + "'";
  if (name.empty())
    return InvalidArgumentError("tensor " + std::to_string(index) + " has an empty name; expected a name");
  if (name.size() > limits.max_name_bytes) {
    return InvalidArgumentError(where + ": name of " + std::to_string(name.size()) + " bytes; expected at most " +
                                std::to_string(limits.max_name_bytes));
  }
  if (!names.insert(name).second) return InvalidArgumentError(where + ": name appears twice; expected unique names");
  if (shape.size() > limits.max_rank) {
    return InvalidArgumentError(where + ": rank " + std::to_string(shape.size()) + "; expected at most " +
                                std::to_string(limits.max_rank));
  }
  auto expected = TensorByteLength(dtype, shape);
  if (!expected.ok()) return expected.status().WithContext(where);
  if (*expected != byte_length) {
    return InvalidArgumentError(where + ": byteLength " + std::to_string(byte_length) + " does not match " +
                                std::string(DTypeName(dtype)) + " shape " + ShapeToString(shape) + "; expected " +
                                std::to_string(*expected));
  }
  if (byte_length > limits.max_payload_bytes || total > limits.max_payload_bytes - byte_length) {
    return InvalidArgumentError(where + ": tensor bytes add up to more than the limit of " +
                                std::to_string(limits.max_payload_bytes) + " bytes per message");
  }
  total += byte_length;
  return OkStatus();
}

}  // namespace

uint64_t StageMessage::payload_bytes() const {
  uint64_t total = 0;
  for (const auto& t : tensors) total += t.byte_length();
  return total;
}

const TensorFrame* StageMessage::Find(std::string_view name) const {
  for (const auto& t : tensors) {
    if (t.name() == name) return &t;
  }
  return nullptr;
}

Status ValidateOutgoing(const StageMessage& message, const MessageLimits& limits) {
  XCPIPE_RETURN_IF_ERROR(CheckCounts(message.segments.size(), message.tensors.size(), limits));
  for (size_t i = 0; i < message.segments.size(); ++i) {
    XCPIPE_RETURN_IF_ERROR(CheckSegment(i, message.segments[i].rows, message.segments[i].start_pos));
  }
  std::unordered_set<std::string_view> names;
  uint64_t total = 0;
  for (size_t i = 0; i < message.tensors.size(); ++i) {
    const TensorFrame& t = message.tensors[i];
    XCPIPE_RETURN_IF_ERROR(CheckTensor(i, t.name(), t.dtype(), t.shape(), t.byte_length(), limits, names, total));
  }
  return OkStatus();
}

StatusOr<std::vector<std::byte>> EncodeStageHeader(const StageMessage& message, ChecksumKind kind,
                                                   std::span<const uint32_t> checksums) {
  if (kind == ChecksumKind::kCrc32c && checksums.size() != message.tensors.size()) {
    return InternalError("EncodeStageHeader: " + std::to_string(checksums.size()) + " checksums for " +
                         std::to_string(message.tensors.size()) + " tensors");
  }
  try {
    capnp::MallocMessageBuilder builder(1024);
    auto header = builder.initRoot<wire::StageHeader>();
    header.setEpoch(message.epoch);
    header.setMicroBatchId(message.micro_batch_id);
    header.setStep(message.step);
    header.setChecksumKind(kind == ChecksumKind::kCrc32c ? wire::ChecksumKind::CRC32C : wire::ChecksumKind::NONE);
    auto segments = header.initSegments(static_cast<unsigned>(message.segments.size()));
    for (size_t i = 0; i < message.segments.size(); ++i) {
      segments[i].setSequenceId(message.segments[i].sequence_id);
      segments[i].setRows(message.segments[i].rows);
      segments[i].setStartPos(message.segments[i].start_pos);
    }
    auto tensors = header.initTensors(static_cast<unsigned>(message.tensors.size()));
    for (size_t i = 0; i < message.tensors.size(); ++i) {
      const TensorFrame& t = message.tensors[i];
      auto d = tensors[i];
      d.setName(t.name());
      d.setDtype(static_cast<wire::DType>(static_cast<uint16_t>(t.dtype())));
      auto shape = d.initShape(static_cast<unsigned>(t.shape().size()));
      for (size_t k = 0; k < t.shape().size(); ++k) shape.set(k, t.shape()[k]);
      d.setByteLength(t.byte_length());
      d.setChecksum(kind == ChecksumKind::kCrc32c ? checksums[i] : 0);
    }
    kj::Array<capnp::word> words = capnp::messageToFlatArray(builder);
    auto bytes = words.asBytes();
    std::vector<std::byte> out(bytes.size());
    std::memcpy(out.data(), bytes.begin(), bytes.size());
    return out;
  } catch (const kj::Exception& e) {
    return InternalError(std::string("encoding the stage header: ") + e.getDescription().cStr());
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError("encoding the stage header: out of memory");
  }
}

StatusOr<StageHeader> DecodeStageHeader(std::span<const std::byte> bytes, const MessageLimits& limits) {
  if (bytes.empty()) return InvalidArgumentError("stage header is empty; expected a Cap'n Proto StageHeader");
  if (bytes.size() > limits.max_header_bytes) {
    return InvalidArgumentError("stage header of " + std::to_string(bytes.size()) + " bytes exceeds the limit of " +
                                std::to_string(limits.max_header_bytes));
  }
  if (bytes.size() % sizeof(capnp::word) != 0) {
    return InvalidArgumentError("stage header of " + std::to_string(bytes.size()) +
                                " bytes is not a whole number of 8-byte words");
  }
  const size_t word_count = bytes.size() / sizeof(capnp::word);
  kj::Array<capnp::word> aligned;
  kj::ArrayPtr<const capnp::word> words;
  try {
    if (reinterpret_cast<uintptr_t>(bytes.data()) % alignof(capnp::word) != 0) {
      // Cap'n Proto 0.9 throws on unaligned input.
      aligned = kj::heapArray<capnp::word>(word_count);
      std::memcpy(aligned.begin(), bytes.data(), bytes.size());
      words = kj::ArrayPtr<const capnp::word>(aligned.begin(), word_count);
    } else {
      words = kj::ArrayPtr<const capnp::word>(reinterpret_cast<const capnp::word*>(bytes.data()), word_count);
    }

    capnp::ReaderOptions options;
    // We read every list once; a header that makes us read more than twice its size points
    // several times at the same data (an amplification attempt).
    options.traversalLimitInWords = 2 * word_count + 64;
    options.nestingLimit = kNestingLimit;
    capnp::FlatArrayMessageReader reader(words, options);
    auto root = reader.getRoot<wire::StageHeader>();

    StageHeader out;
    out.epoch = root.getEpoch();
    out.micro_batch_id = root.getMicroBatchId();
    out.step = root.getStep();
    auto kind = static_cast<uint16_t>(root.getChecksumKind());
    if (kind > static_cast<uint16_t>(ChecksumKind::kCrc32c)) {
      return InvalidArgumentError("stage header has checksumKind " + std::to_string(kind) +
                                  "; expected 0 (none) or 1 (crc32c)");
    }
    out.checksum_kind = static_cast<ChecksumKind>(kind);

    auto segments = root.getSegments();
    auto tensors = root.getTensors();
    XCPIPE_RETURN_IF_ERROR(CheckCounts(segments.size(), tensors.size(), limits).WithContext("stage header"));
    out.segments.reserve(segments.size());
    for (unsigned i = 0; i < segments.size(); ++i) {
      auto s = segments[i];
      XCPIPE_RETURN_IF_ERROR(CheckSegment(i, s.getRows(), s.getStartPos()).WithContext("stage header"));
      out.segments.push_back(Segment{s.getSequenceId(), s.getRows(), s.getStartPos()});
    }

    out.tensors.reserve(tensors.size());
    for (unsigned i = 0; i < tensors.size(); ++i) {
      auto d = tensors[i];
      TensorDescriptor desc;
      auto name = d.getName();
      desc.name.assign(name.begin(), name.size());
      auto raw_dtype = static_cast<uint16_t>(d.getDtype());
      if (raw_dtype >= kDTypeCount) {
        return InvalidArgumentError("stage header: tensor " + std::to_string(i) + " has dtype " +
                                    std::to_string(raw_dtype) + "; expected one of f32, bf16, f16, i64, u8, bool (0-" +
                                    std::to_string(kDTypeCount - 1) + ")");
      }
      desc.dtype = static_cast<DType>(raw_dtype);
      auto shape = d.getShape();
      if (shape.size() > limits.max_rank) {
        return InvalidArgumentError("stage header: tensor " + std::to_string(i) + " has rank " +
                                    std::to_string(shape.size()) + "; expected at most " +
                                    std::to_string(limits.max_rank));
      }
      desc.shape.reserve(shape.size());
      for (int64_t dim : shape) desc.shape.push_back(dim);
      desc.byte_length = d.getByteLength();
      desc.checksum = d.getChecksum();
      out.tensors.push_back(std::move(desc));
    }
    // Names are checked once every string is in its final place (the set holds views).
    std::unordered_set<std::string_view> names;
    for (size_t i = 0; i < out.tensors.size(); ++i) {
      const auto& d = out.tensors[i];
      XCPIPE_RETURN_IF_ERROR(CheckTensor(i, d.name, d.dtype, d.shape, d.byte_length, limits, names, out.payload_bytes)
                                 .WithContext("stage header"));
    }
    return out;
  } catch (const kj::Exception& e) {
    return InvalidArgumentError(std::string("malformed stage header: ") + e.getDescription().cStr());
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError("decoding the stage header: out of memory");
  }
}

}  // namespace xcpipe::transport
