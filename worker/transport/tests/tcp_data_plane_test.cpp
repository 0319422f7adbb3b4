// The TCP data plane over real loopback sockets, in one process.
#include "xcpipe/transport/tcp_data_plane.h"

#include <gtest/gtest.h>

#include <future>
#include <thread>

#include "test_messages.h"

namespace xcpipe::transport {
namespace {

using namespace std::chrono_literals;
using testing::ExpectSameMessage;
using testing::MakeStageMessage;

std::unique_ptr<TcpDataPlane> Listener(TcpLinkOptions link = {}, uint16_t port = 0) {
  auto plane = TcpDataPlane::Create(testing::ListenOn({"127.0.0.1", port}, link));
  EXPECT_TRUE(plane.ok()) << plane.status().ToString();
  return plane.ok() ? std::move(*plane) : nullptr;
}

std::unique_ptr<TcpDataPlane> SenderTo(const TcpEndpoint& to, TcpLinkOptions link = {}) {
  auto plane = TcpDataPlane::Create(testing::SendTo(to, link));
  EXPECT_TRUE(plane.ok()) << plane.status().ToString();
  return plane.ok() ? std::move(*plane) : nullptr;
}

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// A port that was free a moment ago (for tests that start the listener later).
uint16_t FreePort() {
  auto probe = Listener();
  return probe->listen_endpoint()->port;
}

TEST(TcpEndpointTest, ParsesAndPrints) {
  auto a = TcpEndpoint::Parse("127.0.0.1:7000");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, 7000);
  auto b = TcpEndpoint::Parse("[::1]:80");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->host, "::1");
  EXPECT_EQ(b->ToString(), "[::1]:80");
  EXPECT_FALSE(TcpEndpoint::Parse("localhost").ok());
  EXPECT_FALSE(TcpEndpoint::Parse(":80").ok());
  EXPECT_FALSE(TcpEndpoint::Parse("h:99999").ok());
  EXPECT_FALSE(TcpEndpoint::Parse("::1:80").ok());
}

TEST(TcpDataPlaneTest, ListenerNeedsAnExplicitAddress) {
  auto wildcard = TcpDataPlane::Create(testing::ListenOn({"0.0.0.0", 0}));
  ASSERT_FALSE(wildcard.ok());
  EXPECT_EQ(wildcard.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(wildcard.status().message().find("wildcard"), std::string::npos) << wildcard.status().ToString();
  auto empty = TcpDataPlane::Create(testing::ListenOn({"", 0}));
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.status().message().find("explicitly"), std::string::npos) << empty.status().ToString();
  TcpLinkOptions allow;
  allow.allow_wildcard_listen = true;
  EXPECT_TRUE(TcpDataPlane::Create(testing::ListenOn({"0.0.0.0", 0}, allow)).ok());
}

TEST(TcpDataPlaneTest, MissingLinksAreFailedPrecondition) {
  auto rx = Listener();
  EXPECT_EQ(rx->Send(StageMessage{}, DeadlineAfter(100ms)).code(), StatusCode::kFailedPrecondition);
  auto tx = SenderTo(*rx->listen_endpoint());
  EXPECT_EQ(tx->Receive(DeadlineAfter(100ms)).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(tx->kind(), "tcp");
}

TEST(TcpDataPlaneTest, RoundTripOfSeveralTensors) {
  auto rx = Listener();
  auto tx = SenderTo(*rx->listen_endpoint());
  StageMessage sent = MakeStageMessage(/*step=*/7, /*rows=*/8, /*hidden=*/4096);
  ASSERT_TRUE(tx->Send(sent, DeadlineAfter(5s)).ok());
  auto got = rx->Receive(DeadlineAfter(5s));
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ExpectSameMessage(sent, *got);
  // Received tensors are 64-byte aligned, owned (pooled) and typed views work.
  for (const auto& t : got->tensors) {
    EXPECT_TRUE(t.owns_bytes());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.bytes().data()) % 64, 0u) << t.name();
  }
  EXPECT_EQ(got->Find("positions")->as<int64_t>().size(), 8u);

  auto tx_stats = tx->stats();
  auto rx_stats = rx->stats();
  EXPECT_EQ(tx_stats.messages_sent, 1u);
  EXPECT_EQ(rx_stats.messages_received, 1u);
  EXPECT_EQ(tx_stats.bytes_sent, rx_stats.bytes_received);
  EXPECT_GT(tx_stats.bytes_sent, sent.payload_bytes());
  EXPECT_EQ(rx_stats.messages_refused, 0u);
}

TEST(TcpDataPlaneTest, EmptyTensorListAndZeroLengthTensor) {
  auto rx = Listener();
  auto tx = SenderTo(*rx->listen_endpoint());
  StageMessage empty;
  empty.step = 1;
  empty.segments = {{5, 0, 3}};
  ASSERT_TRUE(tx->Send(empty, DeadlineAfter(5s)).ok());
  StageMessage zero = MakeStageMessage(2, /*rows=*/0, 4096);
  ASSERT_TRUE(tx->Send(zero, DeadlineAfter(5s)).ok());
  auto a = rx->Receive(DeadlineAfter(5s));
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ExpectSameMessage(empty, *a);
  auto b = rx->Receive(DeadlineAfter(5s));
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  ExpectSameMessage(zero, *b);
}

TEST(TcpDataPlaneTest, LargeTensorOf64MiB) {
  auto rx = Listener();
  auto tx = SenderTo(*rx->listen_endpoint());
  StageMessage sent;
  sent.step = 3;
  auto big = TensorFrame::Own("hidden", DType::kBF16, {8192, 4096}, testing::PatternBytes(3, 0, size_t{64} << 20));
  ASSERT_TRUE(big.ok());
  sent.tensors.push_back(*big);
  auto sending = std::async(std::launch::async, [&] { return tx->Send(sent, DeadlineAfter(60s)); });
  auto got = rx->Receive(DeadlineAfter(60s));
  ASSERT_TRUE(sending.get().ok());
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ExpectSameMessage(sent, *got);
}

TEST(TcpDataPlaneTest, ManyMessagesArriveInOrderAndBuffersAreReused) {
  auto rx = Listener();
  auto tx = SenderTo(*rx->listen_endpoint());
  constexpr int kCount = 200;
  auto sending = std::async(std::launch::async, [&] {
    for (int i = 0; i < kCount; ++i) {
      Status s = tx->Send(MakeStageMessage(i, /*rows=*/(i % 3) * 64 + 8, 512), DeadlineAfter(10s));
      if (!s.ok()) return s;
    }
    return OkStatus();
  });
  for (int i = 0; i < kCount; ++i) {
    auto got = rx->Receive(DeadlineAfter(10s));
    ASSERT_TRUE(got.ok()) << "message " << i << ": " << got.status().ToString();
    ExpectSameMessage(MakeStageMessage(i, (i % 3) * 64 + 8, 512), *got);
  }
  ASSERT_TRUE(sending.get().ok());
  // One block in use at a time: the pool allocated a handful, not one per message.
  EXPECT_LE(rx->receiver()->pool().allocations(), 3u);
  EXPECT_EQ(rx->stats().connections_opened, 1u);
}

TEST(TcpDataPlaneTest, ReceiveWithNothingSentTimesOut) {
  auto rx = Listener();
  auto start = Clock::now();
  auto none = rx->Receive(DeadlineAfter(200ms));
  EXPECT_EQ(none.status().code(), StatusCode::kDeadlineExceeded) << none.status().ToString();
  EXPECT_GE(SecondsSince(start), 0.19);
  EXPECT_LT(SecondsSince(start), 2.0);

  // Connected but silent sender: same.
  auto tx = SenderTo(*rx->listen_endpoint());
  ASSERT_TRUE(tx->Connect(DeadlineAfter(5s)).ok());
  start = Clock::now();
  auto silent = rx->Receive(DeadlineAfter(200ms));
  EXPECT_EQ(silent.status().code(), StatusCode::kDeadlineExceeded) << silent.status().ToString();
  EXPECT_LT(SecondsSince(start), 2.0);
}

TEST(TcpDataPlaneTest, SendToAPeerThatNeverReadsTimesOut) {
  // The listener never calls Receive: the kernel completes the handshake, then the buffers
  // fill and the sender must give up at its deadline.
  auto rx = Listener();
  auto tx = SenderTo(*rx->listen_endpoint());
  StageMessage big;
  auto t = TensorFrame::Own("hidden", DType::kU8, {int64_t{128} << 20}, std::vector<std::byte>(size_t{128} << 20));
  ASSERT_TRUE(t.ok());
  big.tensors.push_back(*t);
  auto start = Clock::now();
  Status s = tx->Send(big, DeadlineAfter(500ms));
  double elapsed = SecondsSince(start);
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.ToString();
  EXPECT_NE(s.message().find("connection dropped"), std::string::npos) << s.ToString();
  EXPECT_LT(elapsed, 3.0) << "the send overran its 500 ms deadline";
}

TEST(TcpDataPlaneTest, ConnectGivesUpAtTheDeadline) {
  uint16_t port = FreePort();
  auto tx = SenderTo(TcpEndpoint{"127.0.0.1", port});
  auto start = Clock::now();
  Status s = tx->Send(MakeStageMessage(0, 8), DeadlineAfter(300ms));
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  EXPECT_NE(s.message().find("could not connect"), std::string::npos) << s.ToString();
  EXPECT_GE(SecondsSince(start), 0.29);
  EXPECT_LT(SecondsSince(start), 3.0);
}

TEST(TcpDataPlaneTest, ConnectRetriesUntilTheListenerAppears) {
  uint16_t port = FreePort();
  auto tx = SenderTo(TcpEndpoint{"127.0.0.1", port});
  auto sending = std::async(std::launch::async, [&] { return tx->Send(MakeStageMessage(1, 8), DeadlineAfter(10s)); });
  std::this_thread::sleep_for(300ms);
  auto rx = Listener({}, port);
  ASSERT_NE(rx, nullptr);
  auto got = rx->Receive(DeadlineAfter(10s));
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_TRUE(sending.get().ok());
  ExpectSameMessage(MakeStageMessage(1, 8), *got);
}

TEST(TcpDataPlaneTest, ReconnectsAfterTheReceiverRestarts) {
  auto rx = Listener();
  const TcpEndpoint at = *rx->listen_endpoint();
  auto tx = SenderTo(at);
  ASSERT_TRUE(tx->Send(MakeStageMessage(0, 8), DeadlineAfter(5s)).ok());
  ASSERT_TRUE(rx->Receive(DeadlineAfter(5s)).ok());
  rx.reset();  // the next stage goes away ...
  std::this_thread::sleep_for(50ms);
  rx = Listener({}, at.port);  // ... and comes back on the same address
  ASSERT_NE(rx, nullptr);
  ASSERT_TRUE(tx->Send(MakeStageMessage(1, 8), DeadlineAfter(5s)).ok());
  auto got = rx->Receive(DeadlineAfter(5s));
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->step, 1u);
  EXPECT_GE(tx->stats().connections_opened, 2u);
}

TEST(TcpDataPlaneTest, AcceptsTheNewConnectionAfterTheSenderRestarts) {
  auto rx = Listener();
  auto tx = SenderTo(*rx->listen_endpoint());
  ASSERT_TRUE(tx->Send(MakeStageMessage(0, 8), DeadlineAfter(5s)).ok());
  ASSERT_TRUE(rx->Receive(DeadlineAfter(5s)).ok());
  tx.reset();
  tx = SenderTo(*rx->listen_endpoint());
  ASSERT_TRUE(tx->Send(MakeStageMessage(1, 8), DeadlineAfter(5s)).ok());
  auto got = rx->Receive(DeadlineAfter(5s));
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->step, 1u);
}

TEST(TcpDataPlaneTest, NewConnectionReplacesASilentOne) {
  // The old sender's host vanished without a FIN: its connection stays open but silent.
  auto rx = Listener();
  auto old_sender = SenderTo(*rx->listen_endpoint());
  ASSERT_TRUE(old_sender->Connect(DeadlineAfter(5s)).ok());
  EXPECT_EQ(rx->Receive(DeadlineAfter(100ms)).status().code(), StatusCode::kDeadlineExceeded);
  auto new_sender = SenderTo(*rx->listen_endpoint());
  ASSERT_TRUE(new_sender->Send(MakeStageMessage(4, 8), DeadlineAfter(5s)).ok());
  auto got = rx->Receive(DeadlineAfter(5s));
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->step, 4u);
}

TEST(TcpDataPlaneTest, ChecksumsCanBeTurnedOffPerConnection) {
  TcpLinkOptions off;
  off.checksum = false;
  off.require_checksum = false;
  auto rx = Listener(off);
  auto tx = SenderTo(*rx->listen_endpoint(), off);
  ASSERT_TRUE(tx->Send(MakeStageMessage(0, 16), DeadlineAfter(5s)).ok());
  auto got = rx->Receive(DeadlineAfter(5s));
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ExpectSameMessage(MakeStageMessage(0, 16), *got);

  // A receiver that requires checksums refuses such a frame, and names why.
  auto strict = Listener();
  auto lax = SenderTo(*strict->listen_endpoint(), off);
  ASSERT_TRUE(lax->Send(MakeStageMessage(0, 16), DeadlineAfter(5s)).ok());
  auto refused = strict->Receive(DeadlineAfter(5s));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("no checksum"), std::string::npos) << refused.status().ToString();
}

TEST(TcpDataPlaneTest, RefusesToSendDeviceMemoryOrOversizeMessages) {
  auto rx = Listener();
  auto tx = SenderTo(*rx->listen_endpoint());
  StageMessage device;
  auto owner = std::make_shared<int>(0);
  auto t = TensorFrame::Share("hidden", DType::kF32, {4}, {reinterpret_cast<const std::byte*>(0x1000), 16}, owner,
                              MemoryLocation::kCudaDevice, 0);
  ASSERT_TRUE(t.ok());
  device.tensors.push_back(*t);
  Status s = tx->Send(device, DeadlineAfter(1s));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("device memory"), std::string::npos) << s.ToString();

  TcpLinkOptions small;
  small.limits.max_payload_bytes = 1024;
  auto tx_small = SenderTo(*rx->listen_endpoint(), small);
  Status big = tx_small->Send(MakeStageMessage(0, 64, 64), DeadlineAfter(1s));
  EXPECT_EQ(big.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(big.message().find("refusing to send"), std::string::npos) << big.ToString();
  EXPECT_EQ(tx_small->stats().bytes_sent, 0u);
}

TEST(TcpDataPlaneTest, CloseWakesABlockedReceiveAndSend) {
  auto rx = Listener();
  auto receiving = std::async(std::launch::async, [&] { return rx->Receive(DeadlineAfter(30s)).status(); });
  std::this_thread::sleep_for(100ms);
  auto start = Clock::now();
  rx->Close();
  EXPECT_EQ(receiving.get().code(), StatusCode::kCancelled);
  EXPECT_LT(SecondsSince(start), 2.0);
  EXPECT_EQ(rx->Receive(DeadlineAfter(1s)).status().code(), StatusCode::kCancelled);

  auto silent = Listener();
  auto tx = SenderTo(*silent->listen_endpoint());
  StageMessage big;
  big.tensors.push_back(
      *TensorFrame::Own("x", DType::kU8, {int64_t{64} << 20}, std::vector<std::byte>(size_t{64} << 20)));
  auto sending = std::async(std::launch::async, [&] { return tx->Send(big, DeadlineAfter(30s)); });
  std::this_thread::sleep_for(200ms);
  start = Clock::now();
  tx->Close();
  EXPECT_EQ(sending.get().code(), StatusCode::kCancelled);
  EXPECT_LT(SecondsSince(start), 2.0);
}

// A worker keeps one listener (the address in its hello) while each assignment builds a new
// plane around it: closing a plane leaves the shared listener serving the next one.
TEST(TcpDataPlaneTest, PlanesOverASharedListenerComeAndGo) {
  auto listener = TcpReceiverLink::Listen({"127.0.0.1", 0}, {});
  ASSERT_TRUE(listener.ok()) << listener.status().ToString();
  const TcpEndpoint at = (*listener)->local_endpoint();
  TcpDataPlaneOptions both;
  both.listen = at;
  both.shared_receiver = listener->get();
  EXPECT_EQ(TcpDataPlane::Create(both).status().code(), StatusCode::kInvalidArgument);
  for (uint64_t epoch = 1; epoch <= 2; ++epoch) {
    TcpDataPlaneOptions o;
    o.shared_receiver = listener->get();
    auto rx = TcpDataPlane::Create(o);
    ASSERT_TRUE(rx.ok()) << rx.status().ToString();
    EXPECT_EQ((*rx)->listen_endpoint(), at);
    auto tx = SenderTo(at);
    StageMessage sent = MakeStageMessage(epoch, 8, 64);
    ASSERT_TRUE(tx->Send(sent, DeadlineAfter(5s)).ok());
    auto got = (*rx)->Receive(DeadlineAfter(5s));
    ASSERT_TRUE(got.ok()) << "epoch " << epoch << ": " << got.status().ToString();
    ExpectSameMessage(sent, *got);
    (*rx)->Close();
    EXPECT_EQ((*rx)->Receive(DeadlineAfter(100ms)).status().code(), StatusCode::kCancelled);
    EXPECT_NE((*listener)->state(), TcpReceiverLink::State::kClosed) << "epoch " << epoch;
  }
}

TEST(TcpDataPlaneTest, ReceiveTimingOutMidFrameResumesLater) {
  auto rx = Listener();
  auto tx = SenderTo(*rx->listen_endpoint());
  StageMessage sent;
  sent.tensors.push_back(
      *TensorFrame::Own("x", DType::kU8, {int64_t{48} << 20}, testing::PatternBytes(0, 0, size_t{48} << 20)));
  auto sending = std::async(std::launch::async, [&] { return tx->Send(sent, DeadlineAfter(30s)); });
  // Tiny deadlines cut the frame anywhere; every attempt must keep what it read.
  StatusOr<StageMessage> got = DeadlineExceededError("not yet");
  int timeouts = 0;
  for (int i = 0; i < 100000 && !got.ok(); ++i) {
    got = rx->Receive(DeadlineAfter(1ms));
    if (!got.ok()) {
      ASSERT_EQ(got.status().code(), StatusCode::kDeadlineExceeded) << got.status().ToString();
      ++timeouts;
    }
  }
  ASSERT_TRUE(got.ok());
  ASSERT_TRUE(sending.get().ok());
  ExpectSameMessage(sent, *got);
  RecordProperty("receive_timeouts", timeouts);
}

}  // namespace
}  // namespace xcpipe::transport
