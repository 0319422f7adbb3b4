// The TCP data plane between two OS processes (xcpipe_transport_peer is the other one), over
// loopback exactly as between hosts, including a peer process that dies and comes back.
#include <gtest/gtest.h>
#include <signal.h>

#include "test_messages.h"
#include "xcpipe/base/subprocess.h"
#include "xcpipe/transport/tcp_data_plane.h"

namespace xcpipe::transport {
namespace {

using namespace std::chrono_literals;
using testing::ExpectSameMessage;
using testing::MakeStageMessage;

constexpr int64_t kRows = 64;
constexpr int64_t kHidden = 1024;

std::string PeerBinary() { return (ExecutableDir() / "xcpipe_transport_peer").string(); }

std::unique_ptr<Subprocess> StartPeer(std::vector<std::string> args) {
  args.insert(args.begin(), PeerBinary());
  SubprocessOptions options;
  options.capture_stdout = true;
  auto child = Subprocess::Start(args, options);
  EXPECT_TRUE(child.ok()) << child.status().ToString();
  return child.ok() ? std::move(*child) : nullptr;
}

// Reads lines until one starts with `prefix`; returns the rest of it.
std::string ExpectLine(Subprocess& child, const std::string& prefix) {
  for (int i = 0; i < 10000; ++i) {
    auto line = child.ReadLine(20s);
    if (!line.ok() || !line->has_value()) {
      ADD_FAILURE() << "peer ended or stalled before printing '" << prefix << "'";
      return "";
    }
    if ((*line)->rfind("error", 0) == 0) ADD_FAILURE() << "peer: " << **line;
    if ((*line)->rfind(prefix, 0) == 0) return (*line)->substr(prefix.size());
  }
  return "";
}

std::unique_ptr<TcpDataPlane> Listener(uint16_t port = 0) {
  auto plane = TcpDataPlane::Create(testing::ListenOn({"127.0.0.1", port}));
  EXPECT_TRUE(plane.ok()) << plane.status().ToString();
  return plane.ok() ? std::move(*plane) : nullptr;
}

TEST(TwoProcessTest, ChildSendsParentReceives) {
  auto rx = Listener();
  const std::string to = rx->listen_endpoint()->ToString();
  auto child = StartPeer(
      {"send", "--to", to, "--count", "20", "--rows", std::to_string(kRows), "--hidden", std::to_string(kHidden)});
  ASSERT_NE(child, nullptr);
  for (uint64_t step = 0; step < 20; ++step) {
    auto got = rx->Receive(DeadlineAfter(30s));
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    ExpectSameMessage(MakeStageMessage(step, kRows, kHidden), *got);
  }
  auto code = child->Wait(20s);
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0);
}

TEST(TwoProcessTest, ParentSendsChildReceives) {
  auto child = StartPeer({"receive", "--listen", "127.0.0.1:0", "--count", "20", "--rows", std::to_string(kRows),
                          "--hidden", std::to_string(kHidden)});
  ASSERT_NE(child, nullptr);
  const std::string port = ExpectLine(*child, "listening ");
  ASSERT_FALSE(port.empty());
  auto tx = TcpDataPlane::Create(testing::SendTo({"127.0.0.1", static_cast<uint16_t>(std::stoi(port))}));
  ASSERT_TRUE(tx.ok());
  for (uint64_t step = 0; step < 20; ++step) {
    Status s = (*tx)->Send(MakeStageMessage(step, kRows, kHidden), DeadlineAfter(30s));
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  EXPECT_EQ(ExpectLine(*child, "done "), "20");
  auto code = child->Wait(20s);
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0);
}

TEST(TwoProcessTest, SenderProcessKilledAndRestarted) {
  auto rx = Listener();
  const std::string to = rx->listen_endpoint()->ToString();
  auto first = StartPeer(
      {"send", "--to", to, "--count", "1000000", "--rows", std::to_string(kRows), "--hidden", std::to_string(kHidden)});
  ASSERT_NE(first, nullptr);
  for (uint64_t step = 0; step < 5; ++step) {
    auto got = rx->Receive(DeadlineAfter(30s));
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(got->step, step);
  }
  first->Signal(SIGKILL);
  ASSERT_TRUE(first->Wait(10s).ok());
  // A replacement process (steps from 5000 on) reconnects; messages still buffered from the
  // killed one may arrive first, and a frame it was cut off in is reported, not delivered.
  auto second = StartPeer({"send", "--to", to, "--count", "3", "--first-step", "5000", "--rows", std::to_string(kRows),
                           "--hidden", std::to_string(kHidden)});
  ASSERT_NE(second, nullptr);
  std::vector<uint64_t> new_steps;
  for (int i = 0; i < 100000 && new_steps.size() < 3; ++i) {
    auto got = rx->Receive(DeadlineAfter(30s));
    if (!got.ok()) {
      ASSERT_EQ(got.status().code(), StatusCode::kUnavailable) << got.status().ToString();
      continue;
    }
    if (got->step >= 5000) {
      new_steps.push_back(got->step);
      ExpectSameMessage(MakeStageMessage(got->step, kRows, kHidden), *got);
    }
  }
  EXPECT_EQ(new_steps, (std::vector<uint64_t>{5000, 5001, 5002}));
  auto code = second->Wait(20s);
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0);
}

TEST(TwoProcessTest, ReceiverProcessKilledAndRestartedOnTheSamePort) {
  auto first = StartPeer({"receive", "--listen", "127.0.0.1:0", "--count", "1000000", "--rows", std::to_string(kRows),
                          "--hidden", std::to_string(kHidden)});
  ASSERT_NE(first, nullptr);
  const std::string port = ExpectLine(*first, "listening ");
  ASSERT_FALSE(port.empty());
  auto tx = TcpDataPlane::Create(testing::SendTo({"127.0.0.1", static_cast<uint16_t>(std::stoi(port))}));
  ASSERT_TRUE(tx.ok());
  ASSERT_TRUE((*tx)->Send(MakeStageMessage(0, kRows, kHidden), DeadlineAfter(30s)).ok());
  EXPECT_EQ(ExpectLine(*first, "got "), "0");
  first->Signal(SIGKILL);
  ASSERT_TRUE(first->Wait(10s).ok());

  auto second = StartPeer({"receive", "--listen", "127.0.0.1:" + port, "--count", "2", "--rows", std::to_string(kRows),
                           "--hidden", std::to_string(kHidden)});
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(ExpectLine(*second, "listening "), port);
  for (uint64_t step = 1; step <= 2; ++step) {
    Status s = (*tx)->Send(MakeStageMessage(step, kRows, kHidden), DeadlineAfter(30s));
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  EXPECT_EQ(ExpectLine(*second, "done "), "2");
  auto code = second->Wait(20s);
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0);
  EXPECT_GE((*tx)->stats().connections_opened, 2u);
}

}  // namespace
}  // namespace xcpipe::transport
