// libFuzzer target for the data plane's parsers of outside bytes: the frame preamble and the
// Cap'n Proto stage header. Input = a frame as it would arrive on a socket (preamble, header,
// payload). Any crash, sanitizer report, hang, or a refusal without a message is a bug. The seed
// corpus in corpus/ is replayed through a real TCP receiver by tests/fuzz_corpus_test.cpp.
//
// Build: -DXCPIPE_FUZZ=ON with clang; run: build/bin/xcpipe_transport_frame_fuzz worker/transport/fuzz/corpus
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "xcpipe/transport/checksum.h"
#include "xcpipe/transport/frame.h"
#include "xcpipe/transport/stage_message.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace xcpipe::transport;
  std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  MessageLimits limits;
  limits.max_header_bytes = 64 << 10;  // small limits keep runs fast; the checks run all the same
  limits.max_payload_bytes = 1 << 20;
  if (bytes.size() < kPreambleBytes) {
    // Too short for a preamble: the header parser alone gets the bytes.
    auto header = DecodeStageHeader(bytes, limits);
    if (!header.ok() && header.status().message().empty()) std::abort();
    return 0;
  }
  auto preamble = DecodePreamble(bytes.first<kPreambleBytes>(), limits);
  auto rest = bytes.subspan(kPreambleBytes);
  if (!preamble.ok()) {
    if (preamble.status().message().empty()) std::abort();
    // Still exercise the header parser on whatever follows.
    (void)DecodeStageHeader(rest, limits);
    return 0;
  }
  if (rest.size() < preamble->header_bytes) return 0;
  auto header_bytes = rest.first(preamble->header_bytes);
  auto header = DecodeStageHeader(header_bytes, limits);
  if (!header.ok()) {
    if (header.status().message().empty()) std::abort();
    return 0;
  }
  // A header that passed must describe sizes consistent with its own limits and shapes.
  uint64_t total = 0;
  for (const auto& d : header->tensors) {
    auto expected = TensorByteLength(d.dtype, d.shape);
    if (!expected.ok() || *expected != d.byte_length) std::abort();
    total += d.byte_length;
  }
  if (total != header->payload_bytes || total > limits.max_payload_bytes) std::abort();
  (void)Crc32c(rest.subspan(header_bytes.size()));
  return 0;
}
