// libFuzzer target for TcpFrameReader, the data plane's stream parser. Input = the bytes of a
// connection (any number of frames, cut anywhere). The same bytes go through three readers:
// fed all at once, fed in pieces whose sizes the input's own bytes pick, and read in place
// through Targets()/Commit() a few bytes and spans at a time. All three must deliver the same
// frames and end with the same Status: how the stream is cut never changes what is read. Any
// crash, sanitizer report, hang, a disagreement, or an error without a message is a bug. Seeds:
// reader_corpus/ (valid frames, one to three per file; xcpipe_transport_test reads them too).
//
// Build: -DXCPIPE_FUZZ=ON with clang; run:
//   build/fuzz/bin/xcpipe_transport_frame_reader_fuzz worker/transport/fuzz/reader_corpus
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <span>
#include <string>

#include "xcpipe/transport/tcp_frame_reader.h"

namespace {

using namespace xcpipe;
using namespace xcpipe::transport;

// What a reader made of the stream: each frame's fields and bytes, then how it ended.
std::string Describe(const ReceivedFrame& f) {
  const StageMessage& m = f.message;
  std::string out = "frame " + std::to_string(m.epoch) + "/" + std::to_string(m.micro_batch_id) + "/" +
                    std::to_string(m.step) + " segments=" + std::to_string(m.segments.size());
  for (const auto& s : m.segments) {
    out += " " + std::to_string(s.sequence_id) + ":" + std::to_string(s.rows) + "@" + std::to_string(s.start_pos);
  }
  for (const auto& t : m.tensors) {
    out += " [" + t.name() + " " + std::to_string(t.byte_length()) + " ";
    out.append(reinterpret_cast<const char*>(t.bytes().data()), t.bytes().size());
    out += "]";
  }
  return out + "\n";
}

void Check(bool ok) {
  if (!ok) std::abort();
}

// `step(reader, rest)` advances the reader over the start of `rest` and returns how many bytes it
// took, or an error. Frames are taken as they complete.
std::string Run(std::span<const std::byte> stream, HostBufferPool& pool,
                const std::function<StatusOr<size_t>(TcpFrameReader&, std::span<const std::byte>)>& step) {
  FrameReaderOptions options;
  options.limits.max_header_bytes = 64 << 10;  // small limits keep runs fast; the checks run all the same
  options.limits.max_payload_bytes = 1 << 20;
  TcpFrameReader reader(options, pool);
  std::string transcript;
  size_t at = 0;
  for (;;) {
    if (reader.frame_ready()) {
      auto frame = reader.TakeFrame();
      Check(frame.ok());
      transcript += Describe(*frame);
      Check(reader.frame_got() == 0);
      continue;
    }
    if (at == stream.size()) break;
    auto taken = step(reader, stream.subspan(at));
    if (!taken.ok()) {
      Check(!taken.status().message().empty());
      Check(reader.phase() == TcpFrameReader::Phase::kFailed);
      return transcript + "error " + taken.status().ToString() + "\n";
    }
    Check(*taken > 0 && *taken <= stream.size() - at);
    at += *taken;
    Check(reader.frame_total() == 0 || reader.frame_got() <= reader.frame_total());
  }
  const Status end = reader.EndOfStream();
  Check(end.ok() || !end.message().empty());
  return transcript + "end " + end.ToString() + "\n";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static HostBufferPool pool(size_t{8} << 20);
  std::span<const std::byte> stream(reinterpret_cast<const std::byte*>(data), size);

  const std::string whole =
      Run(stream, pool, [](TcpFrameReader& r, std::span<const std::byte> rest) { return r.Feed(rest); });

  // Pieces of 1 to 32 bytes, the size picked by the byte where the piece starts.
  const std::string pieces = Run(stream, pool, [](TcpFrameReader& r, std::span<const std::byte> rest) {
    const size_t piece = 1 + std::to_integer<size_t>(rest[0]) % 32;
    return r.Feed(rest.first(std::min(piece, rest.size())));
  });
  if (pieces != whole) std::abort();

  // In place: at most 7 bytes over at most 2 spans per read, as a scatter read would.
  const std::string in_place =
      Run(stream, pool, [](TcpFrameReader& r, std::span<const std::byte> rest) -> StatusOr<size_t> {
        size_t n = 0;
        for (std::span<std::byte> target : r.Targets(std::min<size_t>(7, rest.size()), 2)) {
          std::memcpy(target.data(), rest.data() + n, target.size());
          n += target.size();
        }
        if (n == 0) std::abort();  // no frame is complete, the reader has not failed: it wants bytes
        XCPIPE_RETURN_IF_ERROR(r.Commit(n));
        return n;
      });
  if (in_place != whole) std::abort();
  return 0;
}
