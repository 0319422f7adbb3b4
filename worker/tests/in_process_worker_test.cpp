// A worker actor in this process, on an in-memory control plane (control::LoopbackHub) instead
// of its ZeroMQ DEALER: the ControlTransport seam the actor shares with the coordinator and the
// client. The test plays the coordinator on the hub's ROUTER end and runs a greedy request step
// by step; a real xcpipe-worker process driven the same way over ZeroMQ must give the same
// tokens. (The coordinator itself cannot join this process: it links sentencepiece, whose
// protobuf clashes with libtorch's; docs/architecture.md, "Processes".)
#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "scripted_coordinator.h"
#include "tiny_model.h"
#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/control/transport.h"
#include "xcpipe/worker/device_probe.h"
#include "xcpipe/worker/worker_actor.h"

namespace xcpipe::worker {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

// The coordinator's end of a LoopbackHub, with ScriptedCoordinator's Send and Await.
class LoopbackCoordinator {
 public:
  LoopbackCoordinator(control::LoopbackHub& hub, std::string worker_peer)
      : router_(hub.Router()), peer_(std::move(worker_peer)) {}

  bool Send(capnp::MessageBuilder& m) {
    Status st = router_->Send(m, peer_, 1000ms);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return st.ok();
  }

  void Welcome() {
    capnp::MallocMessageBuilder w;
    auto welcome = w.initRoot<proto::Envelope>().initWelcome();
    welcome.setProtocolVersion(proto::K_PROTOCOL_VERSION);
    welcome.setEpoch(1);
    (void)router_->Send(w, peer_, 1000ms);
  }

  // The next envelope of kind `which` (or an error), answering hellos and heartbeats.
  std::optional<control::Incoming> Await(proto::Envelope::Which which, std::chrono::milliseconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
      auto in = router_->Receive(100ms);
      if (!in.ok() || !in->has_value()) continue;
      const auto kind = (*in)->message->envelope().which();
      if (kind == which || kind == proto::Envelope::ERROR) return std::move(**in);
      if (kind == proto::Envelope::HELLO) {
        Welcome();
      } else if (kind == proto::Envelope::HEARTBEAT) {
        capnp::MallocMessageBuilder hb;
        hb.initRoot<proto::Envelope>().initHeartbeat().setEpoch(1);
        (void)router_->Send(hb, peer_, 1000ms);
      }
    }
    return std::nullopt;
  }

 private:
  std::unique_ptr<control::ControlTransport> router_;
  std::string peer_;
};

// Assigns the whole tiny model as one stage, admits one sequence and runs the prompt and then
// one row per step; the greedy tokens (empty with a test failure when something is missing).
template <typename Coordinator>
std::vector<int64_t> GreedyTokens(Coordinator& c, size_t new_tokens) {
  const fs::path model = testing::TinyModelDir();
  auto described = checkpoint::DescribeCheckpoint(model);
  EXPECT_TRUE(described.ok()) << described.status().ToString();
  if (!described.ok()) return {};
  {
    capnp::MallocMessageBuilder m;
    testing::AssignWholeTinyModel(m.initRoot<proto::Envelope>().initAssignStage(), described->spec.blocks.size());
    if (!c.Send(m)) return {};
    auto ready = c.Await(proto::Envelope::STAGE_READY, 60s);
    EXPECT_TRUE(ready && ready->message->envelope().which() == proto::Envelope::STAGE_READY)
        << (ready ? ready->message->envelope().getError().getMessage().cStr() : "no stageReady");
    if (!ready || ready->message->envelope().which() != proto::Envelope::STAGE_READY) return {};
  }
  std::vector<int64_t> history = testing::kTinyPrompt;
  {
    capnp::MallocMessageBuilder m;
    auto a = m.initRoot<proto::Envelope>().initAdmitSequence();
    a.setEpoch(1);
    a.setSequenceId(1);
    a.setMaxTokens(static_cast<uint32_t>(history.size() + new_tokens));
    a.initSampling();
    a.setPrefillRows(static_cast<uint32_t>(history.size()));
    if (!c.Send(m)) return {};
  }
  std::vector<int64_t> tokens;
  size_t cached = 0;
  for (uint64_t step = 1; tokens.size() < new_tokens; ++step) {
    capnp::MallocMessageBuilder m;
    auto f = m.initRoot<proto::Envelope>().initForward();
    f.setEpoch(1);
    f.setMicroBatchId(step);
    f.setStep(step);
    auto seg = f.initSegments(1)[0];
    seg.setSequenceId(1);
    seg.setRows(static_cast<uint32_t>(history.size() - cached));
    seg.setStartPos(static_cast<uint32_t>(cached));
    auto ids = f.initTokenIds(static_cast<unsigned>(history.size() - cached));
    for (size_t i = cached; i < history.size(); ++i) ids.set(static_cast<unsigned>(i - cached), history[i]);
    f.initImMask(static_cast<unsigned>(history.size() - cached));
    if (!c.Send(m)) return {};
    auto in = c.Await(proto::Envelope::STEP_RESULT, 30s);
    EXPECT_TRUE(in && in->message->envelope().which() == proto::Envelope::STEP_RESULT)
        << (in ? in->message->envelope().getError().getMessage().cStr() : "no step result");
    if (!in || in->message->envelope().which() != proto::Envelope::STEP_RESULT) return {};
    auto r = in->message->envelope().getStepResult();
    EXPECT_EQ(r.getTokens().size(), 1u);
    if (r.getTokens().size() != 1) return {};
    cached = history.size();
    tokens.push_back(r.getTokens()[0]);
    history.push_back(r.getTokens()[0]);
  }
  return tokens;
}

TEST(InProcessWorkerTest, LoopbackControlPlaneGivesTheTokensOfARealWorkerProcess) {
  if (!fs::exists(testing::TinyModelDir())) GTEST_SKIP() << "fixtures not found at " << testing::TinyModelDir();
  constexpr size_t kNewTokens = 6;
  std::vector<int64_t> over_zeromq;
  {
    testing::ScriptedCoordinator real("in-process-reference");
    ASSERT_TRUE(real.ok());
    over_zeromq = GreedyTokens(real, kNewTokens);
  }
  ASSERT_EQ(over_zeromq.size(), kNewTokens);

  control::LoopbackHub hub;
  auto worker_end = hub.Connect("w0@1");
  LoopbackCoordinator coordinator(hub, "w0@1");
  WorkerOptions wo;
  wo.worker_id = "w0";
  wo.transport = worker_end.get();
  auto device = ChooseDevice("cpu", false, -1);
  ASSERT_TRUE(device.ok()) << device.status().ToString();
  wo.device = *device;
  WorkerActor actor(wo);
  int exit_code = -1;
  std::thread actor_thread([&] { exit_code = actor.Run(); });
  auto hello = coordinator.Await(proto::Envelope::HELLO, 20s);
  ASSERT_TRUE(hello.has_value()) << "no hello from the actor";
  EXPECT_EQ(hello->peer, "w0@1");
  coordinator.Welcome();
  const auto in_process = GreedyTokens(coordinator, kNewTokens);
  {
    capnp::MallocMessageBuilder m;
    m.initRoot<proto::Envelope>().initShutdown().setReason("test over");
    coordinator.Send(m);
  }
  actor_thread.join();
  EXPECT_EQ(in_process, over_zeromq);
  EXPECT_EQ(exit_code, 0);
}

}  // namespace
}  // namespace xcpipe::worker
