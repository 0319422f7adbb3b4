// A real xcpipe-worker process (CPU) and a coordinator played by the test (a ROUTER on loopback):
// what the worker offers in its hello, and how it answers assignments of a data plane it cannot
// use. The data plane is checked before any weights are read, so no model is needed: the
// answer is an error naming the stage and the reason, and the worker stays up (idle).
#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "xcpipe/base/subprocess.h"
#include "xcpipe/control/socket.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::worker {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

class DataPlaneAssignmentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto router = control::ControlSocket::BindRouter(context_, "tcp://127.0.0.1:*");
    ASSERT_TRUE(router.ok()) << router.status().ToString();
    router_ = std::move(router).value();
    auto worker =
        Subprocess::Start({(testing::BinDir() / "xcpipe-worker").string(), "--coordinator", router_->last_endpoint(),
                           "--worker-id", "cpu-worker", "--device", "cpu", "--threads", "1"},
                          {.capture_stdout = false, .silence_stderr = true, .extra_env = {}});
    ASSERT_TRUE(worker.ok()) << worker.status().ToString();
    worker_ = std::move(worker).value();
    // The hello, answered with a welcome.
    const auto until = Clock::now() + 20s;
    while (Clock::now() < until && planes_.empty()) {
      auto in = router_->Receive(100ms);
      ASSERT_TRUE(in.ok()) << in.status().ToString();
      if (!in->has_value() || (*in)->message->envelope().which() != proto::Envelope::HELLO) continue;
      peer_ = (*in)->peer;
      for (auto p : (*in)->message->envelope().getHello().getCapabilities().getDataPlanes())
        planes_.emplace_back(p.cStr());
      capnp::MallocMessageBuilder m;
      auto w = m.initRoot<proto::Envelope>().initWelcome();
      w.setProtocolVersion(proto::K_PROTOCOL_VERSION);
      w.setEpoch(1);
      ASSERT_TRUE(router_->Send(m, peer_).ok());
    }
    ASSERT_FALSE(planes_.empty()) << "no hello from the worker";
  }

  void TearDown() override {
    if (router_ && !peer_.empty()) {
      capnp::MallocMessageBuilder m;
      m.initRoot<proto::Envelope>().initShutdown().setReason("test over");
      (void)router_->Send(m, peer_);
    }
    if (worker_) {
      auto code = worker_->Wait(10s);
      EXPECT_TRUE(code.ok() && *code == 0) << "the worker did not exit cleanly after shutdown";
    }
  }

  // Sends stage 1 of 3 with `data_plane` (and well-formed ids), returns the worker's error.
  std::optional<std::pair<proto::ErrorCode, std::string>> AssignAndReadError(const std::string& data_plane,
                                                                             uint64_t epoch) {
    capnp::MallocMessageBuilder m;
    auto a = m.initRoot<proto::Envelope>().initAssignStage();
    a.setEpoch(epoch);
    a.setStageIndex(1);
    a.setStageCount(3);
    a.setBlockBegin(2);
    a.setBlockEnd(4);
    a.setModelPath("/nonexistent/model");  // never read: the data plane is refused first
    a.setDtype("f32");
    a.setNextDataAddress("127.0.0.1:1");
    a.setDataPlane(data_plane);
    a.initPreviousNcclId(128);
    a.initNextNcclId(128);
    EXPECT_TRUE(router_->Send(m, peer_).ok());
    const auto until = Clock::now() + 20s;
    while (Clock::now() < until) {
      auto in = router_->Receive(100ms);
      if (!in.ok() || !in->has_value()) continue;
      auto env = (*in)->message->envelope();
      if (env.which() == proto::Envelope::HEARTBEAT) {
        capnp::MallocMessageBuilder hb;
        hb.initRoot<proto::Envelope>().initHeartbeat().setEpoch(epoch);
        (void)router_->Send(hb, peer_);  // the worker says hello again after 2.5 s of silence
        continue;
      }
      if (env.which() != proto::Envelope::ERROR) continue;
      return std::make_pair(env.getError().getCode(), std::string(env.getError().getMessage().cStr()));
    }
    return std::nullopt;
  }

  zmq::context_t context_;
  std::unique_ptr<control::ControlSocket> router_;
  std::unique_ptr<Subprocess> worker_;
  std::string peer_;
  std::vector<std::string> planes_;
};

TEST_F(DataPlaneAssignmentTest, ACpuWorkerOffersTcpOnlyAndRefusesNcclNamingTheStage) {
  // NCCL moves device memory: a worker on the CPU offers only TCP, CUDA build or not.
  EXPECT_EQ(planes_, std::vector<std::string>{"tcp"});
  auto error = AssignAndReadError("nccl", 2);
  ASSERT_TRUE(error.has_value()) << "no error for an NCCL assignment to a CPU worker";
  EXPECT_EQ(error->first, proto::ErrorCode::FAILED_PRECONDITION) << error->second;
  EXPECT_NE(error->second.find("stage 1"), std::string::npos) << error->second;
  EXPECT_NE(error->second.find("NCCL"), std::string::npos) << error->second;
  // Still alive and answering: an unknown data plane is the sender's mistake.
  auto unknown = AssignAndReadError("carrier-pigeon", 3);
  ASSERT_TRUE(unknown.has_value());
  EXPECT_EQ(unknown->first, proto::ErrorCode::INVALID_ARGUMENT) << unknown->second;
  EXPECT_NE(unknown->second.find("dataPlane 'carrier-pigeon' is unknown"), std::string::npos) << unknown->second;
}

}  // namespace
}  // namespace xcpipe::worker
