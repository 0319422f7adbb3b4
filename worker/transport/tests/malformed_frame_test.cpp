// A receiver faced with a peer that sends garbage, lies about lengths or vanishes mid-frame:
// every case is refused with a Status that names the problem, the offending connection is
// dropped, and the same listener then serves a well-behaved sender.
#include <utility>  // before Asio: Boost 1.74's Asio needs it first under C++20

#include <gtest/gtest.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>

#include "test_messages.h"
#include "xcpipe/testing/paths.h"
#include "xcpipe/transport/tcp_link.h"

namespace xcpipe::transport {
namespace {

using namespace std::chrono_literals;
namespace asio = boost::asio;
using testing::EncodeRawFrame;
using testing::ExpectSameMessage;
using testing::MakeStageMessage;
using testing::RawFrame;

// A plain blocking Asio client: writes whatever bytes the test gives it.
class RawPeer {
 public:
  explicit RawPeer(const TcpEndpoint& to) : socket_(io_) {
    boost::system::error_code ec;
    socket_.connect(asio::ip::tcp::endpoint(asio::ip::make_address(to.host), to.port), ec);
    EXPECT_FALSE(ec) << ec.message();
  }
  void Write(std::span<const std::byte> bytes) {
    boost::system::error_code ec;
    asio::write(socket_, asio::buffer(bytes.data(), bytes.size()), ec);
    EXPECT_FALSE(ec) << ec.message();
  }
  void Close() { socket_.close(); }
  // True when the receiver has closed the connection (reads EOF or a reset within `timeout`).
  bool ClosedByPeer(std::chrono::milliseconds timeout) {
    socket_.non_blocking(true);
    auto deadline = Clock::now() + timeout;
    std::byte b;
    while (Clock::now() < deadline) {
      boost::system::error_code ec;
      socket_.read_some(asio::buffer(&b, 1), ec);
      if (ec == asio::error::eof || ec == asio::error::connection_reset) return true;
      if (ec && ec != asio::error::would_block) return true;
      std::this_thread::sleep_for(5ms);
    }
    return false;
  }

 private:
  asio::io_context io_;
  asio::ip::tcp::socket socket_;
};

class MalformedFrameTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto link = TcpReceiverLink::Listen({"127.0.0.1", 0}, TcpLinkOptions{});
    ASSERT_TRUE(link.ok()) << link.status().ToString();
    rx_ = std::move(*link);
  }

  // Sends `bytes` from a raw peer and expects Receive to refuse them with `code` and a message
  // containing `needle`; then checks the connection was dropped and the listener still works.
  void ExpectRefused(std::span<const std::byte> bytes, StatusCode code, const std::string& needle,
                     bool close_after = false) {
    RawPeer peer(rx_->local_endpoint());
    peer.Write(bytes);
    if (close_after) peer.Close();
    auto result = rx_->Receive(DeadlineAfter(5s));
    ASSERT_FALSE(result.ok()) << "expected a refusal mentioning '" << needle << "'";
    EXPECT_EQ(result.status().code(), code) << result.status().ToString();
    EXPECT_NE(result.status().message().find(needle), std::string::npos)
        << "'" << result.status().message() << "' does not mention '" << needle << "'";
    if (!close_after) {
      EXPECT_TRUE(peer.ClosedByPeer(2s)) << "the offending connection was not dropped";
    }
    ExpectStillServes();
  }

  void ExpectStillServes() {
    auto tx = TcpSenderLink::Create(rx_->local_endpoint(), TcpLinkOptions{});
    ASSERT_TRUE(tx.ok());
    StageMessage m = MakeStageMessage(++step_, 8);
    ASSERT_TRUE((*tx)->Send(m, DeadlineAfter(5s)).ok());
    auto got = rx_->Receive(DeadlineAfter(5s));
    ASSERT_TRUE(got.ok()) << "after a refusal the listener should still serve: " << got.status().ToString();
    ExpectSameMessage(m, got->message);
  }

  RawFrame ValidFrame() { return EncodeRawFrame(MakeStageMessage(1, 8, 64)); }

  std::unique_ptr<TcpReceiverLink> rx_;
  uint64_t step_ = 100;
};

TEST_F(MalformedFrameTest, Garbage) {
  std::mt19937 rng(1);
  std::vector<std::byte> junk(1000);
  for (auto& b : junk) b = std::byte(rng());
  junk[0] = std::byte{'G'};
  ExpectRefused(junk, StatusCode::kInvalidArgument, "expected the data-plane magic");
}

TEST_F(MalformedFrameTest, WrongMagic) {
  auto bytes = ValidFrame().Join();
  bytes[3] = std::byte{'Q'};
  ExpectRefused(bytes, StatusCode::kInvalidArgument, "0x58434451");
}

TEST_F(MalformedFrameTest, WrongVersion) {
  RawFrame f = ValidFrame();
  f.preamble.version = 7;
  ExpectRefused(f.Join(), StatusCode::kInvalidArgument, "frame version 7; this build speaks version 1");
}

TEST_F(MalformedFrameTest, OversizeHeader) {
  RawFrame f = ValidFrame();
  f.preamble.header_bytes = 64u << 20;  // 64 MiB announced; the limit is 1 MiB
  ExpectRefused(f.Join(), StatusCode::kInvalidArgument, "exceeds the limit of 1048576");
}

TEST_F(MalformedFrameTest, OversizePayload) {
  RawFrame f = ValidFrame();
  f.preamble.payload_bytes = uint64_t{1} << 50;
  ExpectRefused(f.Join(), StatusCode::kInvalidArgument, "payload length");
}

TEST_F(MalformedFrameTest, HeaderChecksumMismatch) {
  RawFrame f = ValidFrame();
  f.header[20] ^= std::byte{0x01};
  ExpectRefused(f.Join(), StatusCode::kInvalidArgument, "header checksum");
}

TEST_F(MalformedFrameTest, HeaderThatIsNotCapnProto) {
  RawFrame f = ValidFrame();
  for (auto& b : f.header) b = std::byte{0xFF};
  f.SealHeader();
  ExpectRefused(f.Join(), StatusCode::kInvalidArgument, "stage header");
}

TEST_F(MalformedFrameTest, PreambleLiesAboutThePayloadLength) {
  RawFrame f = ValidFrame();
  f.preamble.payload_bytes -= 1;
  ExpectRefused(f.Join(), StatusCode::kInvalidArgument, "descriptors add up to");
}

TEST_F(MalformedFrameTest, DescriptorLiesAboutItsLength) {
  StageMessage m = MakeStageMessage(1, 8, 64);
  RawFrame f = EncodeRawFrame(m);
  // Re-encode the header with a shape that no longer matches the byte count.
  auto shrunk = TensorFrame::Own("hidden", DType::kBF16, {4, 64}, std::vector<std::byte>(4 * 64 * 2));
  m.tensors[0] = *shrunk;
  auto header = EncodeStageHeader(m, ChecksumKind::kNone, {});
  ASSERT_TRUE(header.ok());
  // Patch byteLength back to the original (8 * 64 * 2): find the little-endian value 512.
  std::vector<std::byte> patched = *header;
  bool replaced = false;
  for (size_t i = 0; i + 8 <= patched.size() && !replaced; i += 8) {
    uint64_t v;
    std::memcpy(&v, patched.data() + i, 8);
    if (v == 4 * 64 * 2) {
      v = 8 * 64 * 2;
      std::memcpy(patched.data() + i, &v, 8);
      replaced = true;
    }
  }
  ASSERT_TRUE(replaced);
  f.header = patched;
  f.SealHeader();
  ExpectRefused(f.Join(), StatusCode::kInvalidArgument, "does not match bf16 shape [4, 64]");
}

TEST_F(MalformedFrameTest, TensorChecksumMismatch) {
  RawFrame f = ValidFrame();
  f.payload[f.payload.size() / 2] ^= std::byte{0x40};
  ExpectRefused(f.Join(), StatusCode::kInvalidArgument, "checksum mismatch on tensor 'hidden'");
  EXPECT_GE(rx_->counters().refused.load(), 1u);
}

TEST_F(MalformedFrameTest, MissingChecksumWhenRequired) {
  ExpectRefused(EncodeRawFrame(MakeStageMessage(1, 8, 64), /*checksum=*/false).Join(), StatusCode::kInvalidArgument,
                "carries no checksum");
}

TEST_F(MalformedFrameTest, OutOfBandFrameOnATcpLink) {
  RawFrame f = EncodeRawFrame(MakeStageMessage(1, 8, 64), false);
  f.preamble.flags = kFlagPayloadOutOfBand;
  f.preamble.payload_bytes = 0;
  f.payload.clear();
  ExpectRefused(f.Join(), StatusCode::kInvalidArgument, "out of band");
}

TEST_F(MalformedFrameTest, PeerClosesMidPreamble) {
  auto bytes = ValidFrame().Join();
  ExpectRefused(std::span<const std::byte>(bytes).first(10), StatusCode::kUnavailable, "mid-frame after 10", true);
}

TEST_F(MalformedFrameTest, PeerClosesMidHeader) {
  auto bytes = ValidFrame().Join();
  ExpectRefused(std::span<const std::byte>(bytes).first(kPreambleBytes + 8), StatusCode::kUnavailable, "mid-frame",
                true);
}

TEST_F(MalformedFrameTest, PeerClosesMidPayload) {
  auto bytes = ValidFrame().Join();
  ExpectRefused(std::span<const std::byte>(bytes).first(bytes.size() - 100), StatusCode::kUnavailable,
                "closed the connection mid-frame", true);
}

TEST_F(MalformedFrameTest, PeerClosingBetweenFramesIsNotAnError) {
  {
    RawPeer peer(rx_->local_endpoint());
    peer.Write(ValidFrame().Join());
    peer.Close();
  }
  auto got = rx_->Receive(DeadlineAfter(5s));
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  // The close after it is quiet: the next receive simply waits for a new sender.
  EXPECT_EQ(rx_->Receive(DeadlineAfter(200ms)).status().code(), StatusCode::kDeadlineExceeded);
  ExpectStillServes();
}

TEST_F(MalformedFrameTest, TimeoutMidFrameKeepsProgress) {
  RawFrame f = ValidFrame();
  auto bytes = f.Join();
  RawPeer peer(rx_->local_endpoint());
  const size_t half = kPreambleBytes + f.header.size() + 100;
  peer.Write(std::span<const std::byte>(bytes).first(half));
  auto first = rx_->Receive(DeadlineAfter(200ms));
  ASSERT_EQ(first.status().code(), StatusCode::kDeadlineExceeded) << first.status().ToString();
  EXPECT_NE(first.status().message().find("resumes"), std::string::npos) << first.status().ToString();
  EXPECT_EQ(rx_->state(), TcpReceiverLink::State::kMidFrame);
  peer.Write(std::span<const std::byte>(bytes).subspan(half));
  auto second = rx_->Receive(DeadlineAfter(5s));
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  ExpectSameMessage(MakeStageMessage(1, 8, 64), second->message);
}

TEST_F(MalformedFrameTest, RandomCorruptionIsAlwaysRefusedOrDelivered) {
  // Flip one random byte of a valid frame many times: the receiver either refuses the frame
  // with InvalidArgument or (if the flip hit a field it does not check, e.g. the epoch)
  // delivers it; it never crashes or hangs.
  std::mt19937 rng(99);
  const auto clean = ValidFrame().Join();
  for (int i = 0; i < 60; ++i) {
    auto bytes = clean;
    size_t at = rng() % bytes.size();
    bytes[at] ^= std::byte(1 + rng() % 255);
    RawPeer peer(rx_->local_endpoint());
    peer.Write(bytes);
    peer.Close();
    auto result = rx_->Receive(DeadlineAfter(2s));
    if (!result.ok()) {
      EXPECT_TRUE(result.status().code() == StatusCode::kInvalidArgument ||
                  result.status().code() == StatusCode::kUnavailable ||
                  result.status().code() == StatusCode::kDeadlineExceeded)
          << "flip at " << at << ": " << result.status().ToString();
    }
  }
  ExpectStillServes();
}

// The fuzzer's seed corpus (worker/transport/fuzz/corpus), replayed through a real receiver:
// files named bad_* must never be delivered; every other file must arrive intact.
TEST_F(MalformedFrameTest, FuzzCorpusReplaysThroughARealReceiver) {
  namespace fs = std::filesystem;
  const fs::path corpus = ::xcpipe::testing::SourceDir() / "worker/transport/fuzz/corpus";
  ASSERT_TRUE(fs::is_directory(corpus)) << corpus;
  int delivered = 0, refused = 0;
  for (const auto& entry : fs::directory_iterator(corpus)) {
    std::ifstream in(entry.path(), std::ios::binary);
    std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::byte> bytes(chars.size());
    if (!chars.empty()) std::memcpy(bytes.data(), chars.data(), chars.size());
    const std::string name = entry.path().filename().string();
    {
      RawPeer peer(rx_->local_endpoint());
      peer.Write(bytes);
      peer.Close();
    }
    auto result = rx_->Receive(DeadlineAfter(500ms));
    const bool bad = name.rfind("bad_", 0) == 0;
    EXPECT_EQ(result.ok(), !bad) << name << ": " << result.status().ToString();
    if (!result.ok()) {
      EXPECT_FALSE(result.status().message().empty()) << name;
      ++refused;
    } else {
      ++delivered;
    }
  }
  EXPECT_GT(delivered, 0);
  EXPECT_GT(refused, 0);
  ExpectStillServes();
}

}  // namespace
}  // namespace xcpipe::transport
