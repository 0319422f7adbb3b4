// TcpFrameReader without a socket: frames fed whole, in pieces, a byte at a time, two at once,
// and broken in each field the reader checks; every refusal names what was wrong.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "test_messages.h"
#include "xcpipe/testing/paths.h"
#include "xcpipe/transport/tcp_frame_reader.h"

namespace xcpipe::transport {
namespace {

using testing::EncodeRawFrame;
using testing::ExpectSameMessage;
using testing::MakeStageMessage;

// `text` contains `needle` (gtest without gmock).
::testing::AssertionResult Contains(const std::string& text, const std::string& needle) {
  if (text.find(needle) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "' does not contain '" << needle << "'";
}

class TcpFrameReaderTest : public ::testing::Test {
 protected:
  TcpFrameReader MakeReader(FrameReaderOptions options = {}) { return TcpFrameReader(options, pool_); }

  // Feeds `bytes` in pieces of `piece` bytes, taking each frame as it completes.
  static std::vector<ReceivedFrame> FeedInPieces(TcpFrameReader& reader, std::span<const std::byte> bytes,
                                                 size_t piece) {
    std::vector<ReceivedFrame> frames;
    size_t at = 0;
    while (at < bytes.size()) {
      const auto chunk = bytes.subspan(at, std::min(piece, bytes.size() - at));
      size_t used_of_chunk = 0;
      while (used_of_chunk < chunk.size()) {
        auto used = reader.Feed(chunk.subspan(used_of_chunk));
        EXPECT_TRUE(used.ok()) << used.status().ToString();
        if (!used.ok()) return frames;
        used_of_chunk += *used;
        if (reader.frame_ready()) {
          auto frame = reader.TakeFrame();
          EXPECT_TRUE(frame.ok()) << frame.status().ToString();
          if (frame.ok()) frames.push_back(std::move(*frame));
        } else {
          EXPECT_EQ(*used, chunk.size() - (used_of_chunk - *used)) << "a reader without a frame takes everything";
        }
      }
      at += chunk.size();
    }
    return frames;
  }

  // Feeds all of `bytes` at once and returns the reader's refusal.
  static Status Refusal(TcpFrameReader& reader, std::span<const std::byte> bytes) {
    auto used = reader.Feed(bytes);
    EXPECT_FALSE(used.ok()) << "the frame was not refused";
    EXPECT_EQ(reader.phase(), TcpFrameReader::Phase::kFailed);
    return used.ok() ? OkStatus() : used.status();
  }

  HostBufferPool pool_{size_t{64} << 20};
};

TEST_F(TcpFrameReaderTest, AWholeFrameInOneFeed) {
  const StageMessage m = MakeStageMessage(5, 8);
  const auto bytes = EncodeRawFrame(m).Join();
  TcpFrameReader reader = MakeReader();
  EXPECT_TRUE(reader.EndOfStream().ok()) << "nothing read yet";
  auto used = reader.Feed(bytes);
  ASSERT_TRUE(used.ok()) << used.status().ToString();
  EXPECT_EQ(*used, bytes.size());
  ASSERT_TRUE(reader.frame_ready());
  EXPECT_EQ(reader.frame_got(), bytes.size());
  auto frame = reader.TakeFrame();
  ASSERT_TRUE(frame.ok()) << frame.status().ToString();
  EXPECT_FALSE(frame->payload_out_of_band);
  ExpectSameMessage(m, frame->message);
  EXPECT_EQ(reader.phase(), TcpFrameReader::Phase::kPreamble);
  EXPECT_EQ(reader.frame_got(), 0u);
  EXPECT_TRUE(reader.EndOfStream().ok());
  EXPECT_FALSE(reader.TakeFrame().ok()) << "one frame is taken once";
}

TEST_F(TcpFrameReaderTest, PartialFeedsOfEverySizeGiveTheSameFrame) {
  const StageMessage m = MakeStageMessage(7, 6, 32);
  const auto bytes = EncodeRawFrame(m).Join();
  for (size_t piece : {size_t{2}, size_t{5}, size_t{23}, size_t{24}, size_t{25}, size_t{100}, bytes.size() - 1}) {
    SCOPED_TRACE("pieces of " + std::to_string(piece) + " bytes");
    TcpFrameReader reader = MakeReader();
    auto frames = FeedInPieces(reader, bytes, piece);
    ASSERT_EQ(frames.size(), 1u);
    ExpectSameMessage(m, frames[0].message);
    EXPECT_TRUE(reader.EndOfStream().ok());
  }
}

TEST_F(TcpFrameReaderTest, ByteAtATime) {
  const StageMessage m = MakeStageMessage(9, 4, 16);
  const auto bytes = EncodeRawFrame(m).Join();
  TcpFrameReader reader = MakeReader();
  for (size_t i = 0; i + 1 < bytes.size(); ++i) {
    auto used = reader.Feed(std::span(bytes).subspan(i, 1));
    ASSERT_TRUE(used.ok()) << "byte " << i << ": " << used.status().ToString();
    ASSERT_EQ(*used, 1u);
    ASSERT_FALSE(reader.frame_ready()) << "complete at byte " << i << " of " << bytes.size();
    EXPECT_EQ(reader.frame_got(), i + 1);
  }
  ASSERT_TRUE(reader.Feed(std::span(bytes).last(1)).ok());
  ASSERT_TRUE(reader.frame_ready());
  auto frame = reader.TakeFrame();
  ASSERT_TRUE(frame.ok());
  ExpectSameMessage(m, frame->message);
}

TEST_F(TcpFrameReaderTest, TwoFramesInOneBuffer) {
  const StageMessage first = MakeStageMessage(1, 8), second = MakeStageMessage(2, 3);
  auto bytes = EncodeRawFrame(first).Join();
  const auto more = EncodeRawFrame(second).Join();
  const size_t first_size = bytes.size();
  bytes.insert(bytes.end(), more.begin(), more.end());

  TcpFrameReader reader = MakeReader();
  auto used = reader.Feed(bytes);
  ASSERT_TRUE(used.ok()) << used.status().ToString();
  EXPECT_EQ(*used, first_size) << "the reader stops at the end of the first frame";
  ASSERT_TRUE(reader.frame_ready());
  auto again = reader.Feed(std::span(bytes).subspan(*used));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, 0u) << "nothing more is taken before the frame is";
  auto one = reader.TakeFrame();
  ASSERT_TRUE(one.ok());
  ExpectSameMessage(first, one->message);

  used = reader.Feed(std::span(bytes).subspan(first_size));
  ASSERT_TRUE(used.ok()) << used.status().ToString();
  EXPECT_EQ(*used, more.size());
  auto two = reader.TakeFrame();
  ASSERT_TRUE(two.ok()) << two.status().ToString();
  ExpectSameMessage(second, two->message);

  // The same two frames fed in pieces that straddle the boundary.
  TcpFrameReader pieces = MakeReader();
  auto frames = FeedInPieces(pieces, bytes, 37);
  ASSERT_EQ(frames.size(), 2u);
  ExpectSameMessage(first, frames[0].message);
  ExpectSameMessage(second, frames[1].message);
}

TEST_F(TcpFrameReaderTest, ReadsStraightIntoPlaceThroughTargetsAndCommit) {
  const StageMessage m = MakeStageMessage(4, 8);
  const auto bytes = EncodeRawFrame(m).Join();
  TcpFrameReader reader = MakeReader();
  size_t at = 0;
  while (!reader.frame_ready()) {
    // At most 100 bytes per "read", scattered over at most 2 spans.
    auto targets = reader.Targets(100, 2);
    ASSERT_FALSE(targets.empty()) << "at byte " << at;
    ASSERT_LE(targets.size(), 2u);
    size_t n = 0;
    for (auto t : targets) {
      std::memcpy(t.data(), bytes.data() + at + n, t.size());
      n += t.size();
    }
    ASSERT_LE(n, 100u);
    ASSERT_TRUE(reader.Commit(n).ok());
    at += n;
  }
  EXPECT_EQ(at, bytes.size());
  EXPECT_TRUE(reader.Targets().empty());
  auto frame = reader.TakeFrame();
  ASSERT_TRUE(frame.ok());
  ExpectSameMessage(m, frame->message);
}

TEST_F(TcpFrameReaderTest, BadMagicIsNamed) {
  auto bytes = EncodeRawFrame(MakeStageMessage(1, 4)).Join();
  bytes[0] = std::byte{'G'};
  TcpFrameReader reader = MakeReader();
  Status st = Refusal(reader, bytes);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(st.message(), "magic"));
  // A failed reader says so until Reset, then reads a good frame.
  auto after = reader.Feed(bytes);
  EXPECT_EQ(after.status().code(), StatusCode::kFailedPrecondition);
  reader.Reset();
  const StageMessage m = MakeStageMessage(2, 4);
  const auto good = EncodeRawFrame(m).Join();
  ASSERT_TRUE(reader.Feed(good).ok());
  auto frame = reader.TakeFrame();
  ASSERT_TRUE(frame.ok());
  ExpectSameMessage(m, frame->message);
}

TEST_F(TcpFrameReaderTest, CorruptHeaderFailsItsChecksum) {
  auto raw = EncodeRawFrame(MakeStageMessage(1, 4));
  raw.header[raw.header.size() / 2] ^= std::byte{0x40};  // the preamble's CRC no longer matches
  TcpFrameReader reader = MakeReader();
  Status st = Refusal(reader, raw.Join());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(st.message(), "header checksum"));
}

TEST_F(TcpFrameReaderTest, CorruptPreambleFieldsAreNamed) {
  {
    auto raw = EncodeRawFrame(MakeStageMessage(1, 4));
    raw.preamble.version = 9;
    TcpFrameReader reader = MakeReader();
    EXPECT_TRUE(Contains(Refusal(reader, raw.Join()).message(), "frame version 9"));
  }
  {
    auto raw = EncodeRawFrame(MakeStageMessage(1, 4));
    raw.preamble.flags = 0x8000;
    TcpFrameReader reader = MakeReader();
    EXPECT_TRUE(Contains(Refusal(reader, raw.Join()).message(), "unknown bits"));
  }
  {
    auto raw = EncodeRawFrame(MakeStageMessage(1, 4));
    raw.preamble.payload_bytes += 8;  // the descriptors add up to less
    TcpFrameReader reader = MakeReader();
    std::vector<std::byte> bytes = raw.Join();
    bytes.resize(bytes.size() + 8);
    EXPECT_TRUE(Contains(Refusal(reader, bytes).message(), "tensor descriptors add up to"));
  }
}

TEST_F(TcpFrameReaderTest, OversizeLengthsAreRefusedBeforeAnyBufferIsSized) {
  FrameReaderOptions options;
  options.limits.max_header_bytes = 64;
  options.limits.max_payload_bytes = 1024;
  {
    auto raw = EncodeRawFrame(MakeStageMessage(1, 4));
    raw.preamble.header_bytes = 1u << 20;  // only the preamble is needed to refuse it
    TcpFrameReader reader = MakeReader(options);
    auto preamble = EncodePreamble(raw.preamble);
    Status st = Refusal(reader, preamble);
    EXPECT_TRUE(Contains(st.message(), "header length 1048576 bytes exceeds the limit of 64"));
  }
  {
    auto raw = EncodeRawFrame(MakeStageMessage(1, 4));
    raw.preamble.header_bytes = 64;
    raw.preamble.payload_bytes = uint64_t{1} << 40;
    TcpFrameReader reader = MakeReader(options);
    Status st = Refusal(reader, EncodePreamble(raw.preamble));
    EXPECT_TRUE(Contains(st.message(), "payload length 1099511627776 bytes exceeds the limit of 1024"));
  }
  EXPECT_EQ(pool_.allocations(), 0u);
}

TEST_F(TcpFrameReaderTest, TensorChecksumMismatchNamesTheTensor) {
  auto raw = EncodeRawFrame(MakeStageMessage(1, 4));
  raw.payload.back() ^= std::byte{1};  // the last tensor ("positions")
  TcpFrameReader reader = MakeReader();
  Status st = Refusal(reader, raw.Join());
  EXPECT_TRUE(Contains(st.message(), "checksum mismatch on tensor 'positions'"));
}

TEST_F(TcpFrameReaderTest, MissingChecksumsAndTheWrongPayloadModeAreRefused) {
  const auto plain = EncodeRawFrame(MakeStageMessage(1, 4), /*checksum=*/false).Join();
  {
    TcpFrameReader reader = MakeReader();
    EXPECT_TRUE(Contains(Refusal(reader, plain).message(), "carries no checksum"));
  }
  {
    FrameReaderOptions options;
    options.require_checksum = false;
    TcpFrameReader reader = MakeReader(options);
    ASSERT_TRUE(reader.Feed(plain).ok());
    EXPECT_TRUE(reader.frame_ready());
  }
  {
    TcpFrameReader reader = MakeReader();
    reader.set_expect(PayloadMode::kOutOfBand);
    EXPECT_TRUE(Contains(Refusal(reader, plain).message(), "expects them out of band"));
  }
}

TEST_F(TcpFrameReaderTest, OutOfBandFramesEndWithTheirHeader) {
  const StageMessage m = MakeStageMessage(3, 4);
  auto raw = EncodeRawFrame(m);
  raw.preamble.flags = kFlagPayloadOutOfBand;
  raw.preamble.payload_bytes = 0;
  raw.payload.clear();
  FrameReaderOptions options;
  options.expect = PayloadMode::kOutOfBand;
  TcpFrameReader reader = MakeReader(options);
  ASSERT_TRUE(reader.Feed(raw.Join()).ok());
  ASSERT_TRUE(reader.frame_ready());
  auto frame = reader.TakeFrame();
  ASSERT_TRUE(frame.ok());
  EXPECT_TRUE(frame->payload_out_of_band);
  EXPECT_TRUE(frame->message.tensors.empty());
  ASSERT_EQ(frame->header.tensors.size(), m.tensors.size());
  EXPECT_EQ(frame->header.tensors[0].name, "hidden");
}

TEST_F(TcpFrameReaderTest, TruncatedStreamsNameWhereTheyStopped) {
  const auto bytes = EncodeRawFrame(MakeStageMessage(1, 8)).Join();
  {
    TcpFrameReader reader = MakeReader();
    ASSERT_TRUE(reader.Feed(std::span(bytes).first(10)).ok());
    Status st = reader.EndOfStream();
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(Contains(st.message(), "truncated frame: the stream ended after 10 of the 24 preamble bytes"));
  }
  {
    TcpFrameReader reader = MakeReader();
    ASSERT_TRUE(reader.Feed(std::span(bytes).first(kPreambleBytes + 8)).ok());
    EXPECT_EQ(reader.phase(), TcpFrameReader::Phase::kHeader);
    EXPECT_TRUE(Contains(reader.EndOfStream().message(), "truncated frame: the stream ended after 8 of the"));
    EXPECT_TRUE(Contains(reader.EndOfStream().message(), "header bytes"));
  }
  {
    TcpFrameReader reader = MakeReader();
    ASSERT_TRUE(reader.Feed(std::span(bytes).first(bytes.size() - 3)).ok());
    EXPECT_EQ(reader.phase(), TcpFrameReader::Phase::kPayload);
    EXPECT_EQ(reader.payload_remaining(), 3u);
    EXPECT_TRUE(Contains(reader.EndOfStream().message(), "bytes of tensor 'positions'"));
  }
}

// The frame reader fuzzer's seeds (worker/transport/fuzz/reader_corpus): valid frames, one to
// three per file, each read whole, a byte at a time and in pieces alike.
TEST_F(TcpFrameReaderTest, FuzzSeedsAreWholeFrames) {
  namespace fs = std::filesystem;
  const fs::path corpus = ::xcpipe::testing::SourceDir() / "worker/transport/fuzz/reader_corpus";
  ASSERT_TRUE(fs::is_directory(corpus)) << corpus;
  int files = 0;
  for (const auto& entry : fs::directory_iterator(corpus)) {
    SCOPED_TRACE(entry.path().filename().string());
    std::ifstream in(entry.path(), std::ios::binary);
    std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::byte> bytes(chars.size());
    if (!chars.empty()) std::memcpy(bytes.data(), chars.data(), chars.size());
    size_t count = 0;
    for (size_t piece : {bytes.size(), size_t{1}, size_t{13}}) {
      TcpFrameReader reader = MakeReader();
      auto frames = FeedInPieces(reader, bytes, piece);
      EXPECT_TRUE(reader.EndOfStream().ok()) << reader.EndOfStream().ToString();
      EXPECT_GE(frames.size(), 1u);
      if (count == 0) count = frames.size();
      EXPECT_EQ(frames.size(), count) << "pieces of " << piece;
    }
    ++files;
  }
  EXPECT_GE(files, 3);
}

}  // namespace
}  // namespace xcpipe::transport

namespace xcpipe::transport {
namespace {

// Whole frames in one buffer (the image link: one ZeroMQ message per frame): what
// EncodeFrameBytes lays out is byte for byte the stream encoding, DecodeFrameBytes gives the
// message back, and bytes that hold less or more than one frame, or a flipped bit, are refused.
TEST(FrameBytesTest, OneFrameEncodedWholeDecodesToTheSameMessage) {
  HostBufferPool pool(size_t{16} << 20);
  const StageMessage m = MakeStageMessage(3, 12);
  auto bytes = EncodeFrameBytes(m, MessageLimits{});
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
  const auto stream = EncodeRawFrame(m).Join();
  EXPECT_EQ(*bytes, stream) << "the stream receiver reads the same bytes";
  auto frame = DecodeFrameBytes(*bytes, FrameReaderOptions{}, pool);
  ASSERT_TRUE(frame.ok()) << frame.status().ToString();
  ExpectSameMessage(m, frame->message);

  const std::span<const std::byte> all(*bytes);
  auto cut = DecodeFrameBytes(all.first(all.size() - 1), FrameReaderOptions{}, pool);
  ASSERT_FALSE(cut.ok());
  EXPECT_TRUE(Contains(cut.status().message(), "no whole frame")) << cut.status().ToString();
  std::vector<std::byte> two = *bytes;
  two.insert(two.end(), bytes->begin(), bytes->end());
  auto extra = DecodeFrameBytes(two, FrameReaderOptions{}, pool);
  ASSERT_FALSE(extra.ok());
  EXPECT_TRUE(Contains(extra.status().message(), "after its frame")) << extra.status().ToString();
  std::vector<std::byte> flipped = *bytes;
  flipped.back() ^= std::byte{0x01};  // a payload byte: its tensor's CRC-32C no longer matches
  EXPECT_FALSE(DecodeFrameBytes(flipped, FrameReaderOptions{}, pool).ok());
  EXPECT_FALSE(DecodeFrameBytes({}, FrameReaderOptions{}, pool).ok());
}

}  // namespace
}  // namespace xcpipe::transport
