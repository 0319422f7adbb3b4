#include "xcpipe/transport/tcp_frame_reader.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

#include "xcpipe/transport/checksum.h"

namespace xcpipe::transport {
namespace {

std::string Hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", v);
  return buf;
}

size_t AlignUp(size_t v, size_t a) { return (v + a - 1) / a * a; }

Status ChecksumMismatch(const TensorDescriptor& d, uint32_t got) {
  return InvalidArgumentError("checksum mismatch on tensor '" + d.name + "' (" + std::to_string(d.byte_length) +
                              " bytes): the header says " + Hex32(d.checksum) + ", the bytes received hash to " +
                              Hex32(got));
}

}  // namespace

TcpFrameReader::TcpFrameReader(FrameReaderOptions options, HostBufferPool& pool)
    : options_(std::move(options)), pool_(pool), expect_(options_.expect) {}

uint64_t TcpFrameReader::frame_total() const {
  if (phase_ == Phase::kPreamble || phase_ == Phase::kFailed) return 0;
  return kPreambleBytes + preamble_.header_bytes + preamble_.payload_bytes;
}

size_t TcpFrameReader::header_remaining() const {
  return phase_ == Phase::kHeader ? preamble_.header_bytes - header_got_ : 0;
}

uint64_t TcpFrameReader::payload_remaining() const {
  if (phase_ != Phase::kPayload) return 0;
  uint64_t remaining = 0;
  for (size_t t = tensor_; t < header_.tensors.size(); ++t) {
    remaining += header_.tensors[t].byte_length - (t == tensor_ ? tensor_got_ : 0);
  }
  return remaining;
}

void TcpFrameReader::Reset() {
  phase_ = Phase::kPreamble;
  preamble_got_ = 0;
  preamble_ = FramePreamble{};
  header_got_ = 0;
  header_ = StageHeader{};
  block_.reset();
  offsets_.clear();
  tensor_ = 0;
  tensor_got_ = 0;
  crc_ = 0;
  frame_got_ = 0;
}

Status TcpFrameReader::Fail(Status status) {
  phase_ = Phase::kFailed;
  block_.reset();
  return status;
}

std::span<const std::span<std::byte>> TcpFrameReader::Targets(size_t max_bytes, size_t max_spans) {
  targets_.clear();
  if (max_bytes == 0 || max_spans == 0) return targets_;
  switch (phase_) {
    case Phase::kPreamble:
      targets_.emplace_back(preamble_bytes_.data() + preamble_got_,
                            std::min(kPreambleBytes - preamble_got_, max_bytes));
      break;
    case Phase::kHeader:
      targets_.emplace_back(reinterpret_cast<std::byte*>(header_words_.data()) + header_got_,
                            std::min(header_remaining(), max_bytes));
      break;
    case Phase::kPayload: {
      // The rest of this tensor and the next ones, in place in the frame's block.
      size_t planned = 0;
      for (size_t t = tensor_; t < header_.tensors.size() && targets_.size() < max_spans && planned < max_bytes; ++t) {
        const uint64_t from = t == tensor_ ? tensor_got_ : 0;
        const uint64_t left = header_.tensors[t].byte_length - from;
        if (left == 0) continue;
        const size_t take = static_cast<size_t>(std::min<uint64_t>(left, max_bytes - planned));
        targets_.emplace_back(block_->data() + offsets_[t] + from, take);
        planned += take;
      }
      break;
    }
    case Phase::kComplete:
    case Phase::kFailed:
      break;
  }
  return targets_;
}

Status TcpFrameReader::Commit(size_t n) {
  switch (phase_) {
    case Phase::kFailed:
      return FailedPreconditionError("the frame reader refused the stream earlier; Reset() before reading on");
    case Phase::kComplete:
      if (n == 0) return OkStatus();
      return FailedPreconditionError("a frame is complete; TakeFrame() before committing more bytes");
    case Phase::kPreamble:
      if (n > kPreambleBytes - preamble_got_) {
        return FailedPreconditionError("committed " + std::to_string(n) + " bytes; the preamble needs " +
                                       std::to_string(kPreambleBytes - preamble_got_));
      }
      preamble_got_ += n;
      frame_got_ += n;
      return preamble_got_ == kPreambleBytes ? PreambleDone() : OkStatus();
    case Phase::kHeader:
      if (n > header_remaining()) {
        return FailedPreconditionError("committed " + std::to_string(n) + " bytes; the header needs " +
                                       std::to_string(header_remaining()));
      }
      header_got_ += n;
      frame_got_ += n;
      return header_got_ == preamble_.header_bytes ? HeaderDone() : OkStatus();
    case Phase::kPayload:
      break;
  }
  if (n > payload_remaining()) {
    return FailedPreconditionError("committed " + std::to_string(n) + " bytes; the payload needs " +
                                   std::to_string(payload_remaining()));
  }
  const auto& tensors = header_.tensors;
  const bool crc = header_.checksum_kind == ChecksumKind::kCrc32c;
  frame_got_ += n;
  // Hand the bytes to the tensors they landed in, checksumming each piece.
  for (size_t t = tensor_; n > 0; ++t) {
    const uint64_t from = t == tensor_ ? tensor_got_ : 0;
    const size_t k = static_cast<size_t>(std::min<uint64_t>(tensors[t].byte_length - from, n));
    if (t != tensor_) {
      // The previous tensor is complete: verify it before moving on.
      const auto& done = tensors[tensor_];
      if (crc && crc_ != done.checksum) return Fail(ChecksumMismatch(done, crc_));
      tensor_ = t;
      tensor_got_ = 0;
      crc_ = 0;
    }
    if (crc && k > 0) crc_ = Crc32cExtend(crc_, {block_->data() + offsets_[t] + from, k});
    tensor_got_ += k;
    n -= k;
  }
  return FinishTensors();
}

StatusOr<size_t> TcpFrameReader::Feed(std::span<const std::byte> bytes) {
  if (phase_ == Phase::kFailed) {
    return FailedPreconditionError("the frame reader refused the stream earlier; Reset() before reading on");
  }
  size_t taken = 0;
  while (taken < bytes.size() && phase_ != Phase::kComplete) {
    size_t k = 0;
    for (std::span<std::byte> target : Targets(bytes.size() - taken)) {
      std::memcpy(target.data(), bytes.data() + taken + k, target.size());
      k += target.size();
    }
    if (k == 0) break;
    XCPIPE_RETURN_IF_ERROR(Commit(k));
    taken += k;
  }
  return taken;
}

Status TcpFrameReader::PreambleDone() {
  auto preamble = DecodePreamble(std::span<const std::byte, kPreambleBytes>(preamble_bytes_), options_.limits);
  if (!preamble.ok()) return Fail(preamble.status());
  preamble_ = *preamble;
  const bool out_of_band = preamble_.payload_out_of_band();
  if (out_of_band && expect_ == PayloadMode::kInBand) {
    return Fail(
        InvalidArgumentError("the frame's tensor bytes travel out of band (NCCL); this link expects "
                             "them in band after the header (TCP data plane)"));
  }
  if (!out_of_band && expect_ == PayloadMode::kOutOfBand) {
    return Fail(
        InvalidArgumentError("the frame carries its tensor bytes in band; this link expects them out "
                             "of band (NCCL data plane)"));
  }
  header_words_.resize(preamble_.header_bytes / 8);
  header_got_ = 0;
  phase_ = Phase::kHeader;
  return OkStatus();
}

Status TcpFrameReader::HeaderDone() {
  std::span<const std::byte> header_span(reinterpret_cast<const std::byte*>(header_words_.data()),
                                         preamble_.header_bytes);
  const uint32_t crc = Crc32c(header_span);
  if (crc != preamble_.header_crc32c) {
    return Fail(InvalidArgumentError("header checksum " + Hex32(crc) + " does not match the preamble's " +
                                     Hex32(preamble_.header_crc32c)));
  }
  auto header = DecodeStageHeader(header_span, options_.limits);
  if (!header.ok()) return Fail(header.status());
  header_ = std::move(*header);
  if (!preamble_.payload_out_of_band()) {
    if (header_.payload_bytes != preamble_.payload_bytes) {
      return Fail(InvalidArgumentError("the preamble announces " + std::to_string(preamble_.payload_bytes) +
                                       " payload bytes but the tensor descriptors add up to " +
                                       std::to_string(header_.payload_bytes)));
    }
    if (header_.checksum_kind == ChecksumKind::kNone && options_.require_checksum && !header_.tensors.empty()) {
      return Fail(
          InvalidArgumentError("the frame carries no checksum; this link requires CRC-32C on every "
                               "tensor (enable checksums on the sending side)"));
    }
  }
  if (preamble_.payload_out_of_band() || header_.tensors.empty()) {
    phase_ = Phase::kComplete;
    return OkStatus();
  }
  // Lay the tensors out at 64-byte boundaries in one pooled block.
  size_t capacity = 0;
  offsets_.clear();
  for (const auto& d : header_.tensors) {
    offsets_.push_back(capacity);
    capacity = AlignUp(capacity + d.byte_length, kPayloadAlignment);
  }
  if (header_.payload_bytes > 0) {
    auto block = pool_.Acquire(capacity);
    if (!block.ok()) return Fail(block.status());
    block_ = std::move(*block);
  }
  tensor_ = 0;
  tensor_got_ = 0;
  crc_ = 0;
  phase_ = Phase::kPayload;
  return FinishTensors();  // zero-length tensors are complete at once
}

Status TcpFrameReader::FinishTensors() {
  const auto& tensors = header_.tensors;
  const bool crc = header_.checksum_kind == ChecksumKind::kCrc32c;
  while (tensor_ < tensors.size() && tensor_got_ == tensors[tensor_].byte_length) {
    const auto& d = tensors[tensor_];
    if (crc && crc_ != d.checksum) return Fail(ChecksumMismatch(d, crc_));
    ++tensor_;
    tensor_got_ = 0;
    crc_ = 0;
  }
  if (tensor_ == tensors.size()) phase_ = Phase::kComplete;
  return OkStatus();
}

StatusOr<ReceivedFrame> TcpFrameReader::TakeFrame() {
  if (phase_ != Phase::kComplete) return FailedPreconditionError("no complete frame to take");
  ReceivedFrame out;
  out.payload_out_of_band = preamble_.payload_out_of_band();
  StageMessage& m = out.message;
  m.epoch = header_.epoch;
  m.micro_batch_id = header_.micro_batch_id;
  m.step = header_.step;
  m.segments = header_.segments;
  if (!out.payload_out_of_band) {
    m.tensors.reserve(header_.tensors.size());
    std::shared_ptr<const void> owner = block_;
    for (size_t i = 0; i < header_.tensors.size(); ++i) {
      const auto& d = header_.tensors[i];
      StatusOr<TensorFrame> frame =
          owner ? TensorFrame::Share(d.name, d.dtype, d.shape,
                                     {block_->data() + offsets_[i], static_cast<size_t>(d.byte_length)}, owner)
                : TensorFrame::Own(d.name, d.dtype, d.shape, {});
      if (!frame.ok()) return Fail(InternalError(frame.status().message()));  // cannot happen: the header was validated
      m.tensors.push_back(std::move(*frame));
    }
  }
  out.header = std::move(header_);
  Reset();
  return out;
}

Status TcpFrameReader::EndOfStream() const {
  switch (phase_) {
    case Phase::kPreamble:
      if (frame_got_ == 0) return OkStatus();
      return InvalidArgumentError("truncated frame: the stream ended after " + std::to_string(preamble_got_) +
                                  " of the " + std::to_string(kPreambleBytes) + " preamble bytes");
    case Phase::kHeader:
      return InvalidArgumentError("truncated frame: the stream ended after " + std::to_string(header_got_) +
                                  " of the " + std::to_string(preamble_.header_bytes) + " header bytes");
    case Phase::kPayload: {
      const auto& d = header_.tensors[tensor_];
      return InvalidArgumentError(
          "truncated frame: the stream ended after " + std::to_string(preamble_.payload_bytes - payload_remaining()) +
          " of the " + std::to_string(preamble_.payload_bytes) + " payload bytes, " + std::to_string(tensor_got_) +
          " of the " + std::to_string(d.byte_length) + " bytes of tensor '" + d.name + "'");
    }
    case Phase::kComplete:
      return OkStatus();  // a whole frame, not yet taken
    case Phase::kFailed:
      return FailedPreconditionError("the frame reader refused the stream earlier");
  }
  return OkStatus();
}

}  // namespace xcpipe::transport

namespace xcpipe::transport {

StatusOr<std::vector<std::byte>> EncodeFrameBytes(const StageMessage& message, const MessageLimits& limits) {
  XCPIPE_RETURN_IF_ERROR(ValidateOutgoing(message, limits).WithContext("refusing to send"));
  std::vector<uint32_t> checksums;
  for (const auto& t : message.tensors) {
    if (t.location() != MemoryLocation::kHost) {
      return InvalidArgumentError("refusing to send: tensor '" + t.name() + "' is not in host memory");
    }
    checksums.push_back(Crc32c(t.bytes()));
  }
  XCPIPE_ASSIGN_OR_RETURN(std::vector<std::byte> header, EncodeStageHeader(message, ChecksumKind::kCrc32c, checksums));
  if (header.size() > limits.max_header_bytes) {
    return InvalidArgumentError("refusing to send: the header is " + std::to_string(header.size()) +
                                " bytes, over the limit of " + std::to_string(limits.max_header_bytes));
  }
  FramePreamble preamble;
  preamble.header_bytes = static_cast<uint32_t>(header.size());
  preamble.header_crc32c = Crc32c(header);
  preamble.payload_bytes = message.payload_bytes();
  const auto preamble_bytes = EncodePreamble(preamble);
  std::vector<std::byte> out;
  out.reserve(kPreambleBytes + header.size() + preamble.payload_bytes);
  out.insert(out.end(), preamble_bytes.begin(), preamble_bytes.end());
  out.insert(out.end(), header.begin(), header.end());
  for (const auto& t : message.tensors) out.insert(out.end(), t.bytes().begin(), t.bytes().end());
  return out;
}

StatusOr<ReceivedFrame> DecodeFrameBytes(std::span<const std::byte> bytes, const FrameReaderOptions& options,
                                         HostBufferPool& pool) {
  TcpFrameReader reader(options, pool);
  size_t taken = 0;
  while (taken < bytes.size() && !reader.frame_ready()) {
    XCPIPE_ASSIGN_OR_RETURN(size_t n, reader.Feed(bytes.subspan(taken)));
    if (n == 0) break;
    taken += n;
  }
  if (!reader.frame_ready()) {
    Status cut = reader.EndOfStream();
    return InvalidArgumentError("the message holds no whole frame: " +
                                (cut.ok() ? std::string("it is empty") : std::string(cut.message())));
  }
  if (taken != bytes.size()) {
    return InvalidArgumentError("the message holds " + std::to_string(bytes.size() - taken) +
                                " bytes after its frame; expected exactly one frame");
  }
  return reader.TakeFrame();
}

}  // namespace xcpipe::transport
