// A real xcpipe-worker process (CPU) and a coordinator played by the test (a ROUTER on loopback):
// what the worker offers in its hello, and how it answers assignments of a data plane it cannot
// use. The data plane is checked before any weights are read, so no model is needed: the
// answer is an error naming the stage and the reason, and the worker stays up (idle).
#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "scripted_coordinator.h"

namespace xcpipe::worker {
namespace {

using namespace std::chrono_literals;

class DataPlaneAssignmentTest : public ::testing::Test {
 protected:
  // Sends stage 1 of 3 with `data_plane` (and well-formed ids), returns the worker's error.
  std::optional<std::pair<proto::ErrorCode, std::string>> AssignAndReadError(const std::string& data_plane,
                                                                             uint64_t epoch) {
    coordinator_.set_epoch(epoch);
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
    if (!coordinator_.Send(m)) return std::nullopt;
    auto in = coordinator_.Await(proto::Envelope::ERROR, 20s);
    if (!in) return std::nullopt;
    auto e = in->message->envelope().getError();
    return std::make_pair(e.getCode(), std::string(e.getMessage().cStr()));
  }

  testing::ScriptedCoordinator coordinator_{"cpu-worker"};
};

TEST_F(DataPlaneAssignmentTest, ACpuWorkerOffersTcpOnlyAndRefusesNcclNamingTheStage) {
  // NCCL moves device memory: a worker on the CPU offers only TCP, CUDA build or not.
  ASSERT_TRUE(coordinator_.ok());
  EXPECT_EQ(coordinator_.data_planes(), std::vector<std::string>{"tcp"});
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
