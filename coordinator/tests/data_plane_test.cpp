// Which data plane the coordinator hands out, seen from the workers' side: a real Coordinator
// (its own thread, a real ROUTER on loopback) and scripted workers, real ZeroMQ DEALERs that
// say hello with the devices and data planes a test chooses and read the AssignStage messages
// they are sent. No worker process runs: what is checked is the protocol, i.e. the data plane
// of every stage, the 128-byte NCCL unique ids and how they pair up across stage links, the
// fallback to TCP and its reason, the status reply, and planning refusing a "nccl" it cannot honour.
//
// The model is a tiny random-weight XComposer2-VL made once per run (mkmodel); the "even"
// strategy makes the plan use every worker, so 3 workers give 3 stages and 2 links.
#include <gtest/gtest.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <functional>
#include <optional>
#include <set>
#include <thread>

#include "xcpipe/base/exit_codes.h"
#include "xcpipe/control/socket.h"
#include "xcpipe/coordinator/coordinator.h"
#include "xcpipe/mkmodel/model_generator.h"
#ifdef XCPIPE_HAVE_CUDA
#include "xcpipe/cuda/nccl.h"
#endif

namespace xcpipe::coordinator {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr size_t kNcclIdBytes = 128;

// What one AssignStage said.
struct Assignment {
  uint64_t epoch = 0;
  uint32_t stage = 0, stage_count = 0;
  std::string data_plane, previous_id, next_id, dtype;
};

struct WorkerScript {
  std::string id, host, device;
  std::vector<std::string> data_planes;
  uint64_t epoch = 0;  // the epoch its hello says it last served under
};

WorkerScript CudaWorker(const std::string& id, const std::string& device) {
  return {id, "node-a", device, {"tcp", "nccl"}};
}

// A worker played by the test: a DEALER that says hello, heartbeats, and keeps the newest
// AssignStage it was sent. Used from the test's thread only (a ZeroMQ socket stays on one).
class ScriptedWorker {
 public:
  ScriptedWorker(zmq::context_t& context, const std::string& coordinator, WorkerScript script, uint16_t data_port)
      : script_(std::move(script)), data_port_(data_port) {
    auto socket = control::ControlSocket::ConnectDealer(context, coordinator, script_.id);
    EXPECT_TRUE(socket.ok()) << socket.status().ToString();
    if (socket.ok()) socket_ = std::move(socket).value();
  }

  const std::string& id() const { return script_.id; }
  const std::optional<Assignment>& assignment() const { return assignment_; }

  void Hello() {
    capnp::MallocMessageBuilder m;
    auto hello = m.initRoot<proto::Envelope>().initHello();
    hello.setProtocolVersion(proto::K_PROTOCOL_VERSION);
    hello.setRole(proto::Role::WORKER);
    hello.setWorkerId(script_.id);
    hello.setEpoch(script_.epoch);
    auto caps = hello.initCapabilities();
    caps.setHost(script_.host);
    caps.setPid(static_cast<uint32_t>(getpid()));
    caps.setDevice(script_.device);
    caps.setDeviceName(script_.device == "cpu" ? "CPU" : "scripted GPU");
    caps.setMemoryBytes(uint64_t{80} << 30);
    caps.setFreeMemoryBytes(uint64_t{79} << 30);
    auto planes = caps.initDataPlanes(static_cast<unsigned>(script_.data_planes.size()));
    for (size_t i = 0; i < script_.data_planes.size(); ++i)
      planes.set(static_cast<unsigned>(i), script_.data_planes[i]);
    caps.setDataAddress("127.0.0.1:" + std::to_string(data_port_));
    caps.setThreads(1);
    caps.setBuildVersion("scripted");
    ASSERT_TRUE(socket_->Send(m).ok());
  }

  // Reads what has arrived (up to `wait`), keeping the assignment of the newest epoch, and
  // heartbeats so the coordinator does not declare this worker lost.
  void Pump(std::chrono::milliseconds wait) {
    if (Clock::now() >= next_heartbeat_) {
      capnp::MallocMessageBuilder m;
      auto hb = m.initRoot<proto::Envelope>().initHeartbeat();
      hb.setSequence(++heartbeats_);
      hb.setEpoch(assignment_ ? assignment_->epoch : 0);
      (void)socket_->Send(m);
      next_heartbeat_ = Clock::now() + 250ms;
    }
    auto in = socket_->Receive(wait);
    while (in.ok() && in->has_value()) {
      auto env = (*in)->message->envelope();
      if (env.which() == proto::Envelope::ASSIGN_STAGE) {
        auto a = env.getAssignStage();
        if (!assignment_ || a.getEpoch() > assignment_->epoch) {
          Assignment got;
          got.epoch = a.getEpoch();
          got.stage = a.getStageIndex();
          got.stage_count = a.getStageCount();
          got.data_plane = a.getDataPlane().cStr();
          got.dtype = a.getDtype().cStr();
          got.previous_id.assign(reinterpret_cast<const char*>(a.getPreviousNcclId().begin()),
                                 a.getPreviousNcclId().size());
          got.next_id.assign(reinterpret_cast<const char*>(a.getNextNcclId().begin()), a.getNextNcclId().size());
          assignment_ = got;
        }
      }
      in = socket_->Receive(0ms);
    }
  }

 private:
  WorkerScript script_;
  uint16_t data_port_;
  std::unique_ptr<control::ControlSocket> socket_;
  std::optional<Assignment> assignment_;
  uint64_t heartbeats_ = 0;
  Clock::time_point next_heartbeat_ = Clock::now();
};

class DataPlaneTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_dir_ = new fs::path(fs::temp_directory_path() / ("xcpipe-data-plane-" + std::to_string(getpid())));
    mkmodel::GeneratorOptions options;  // tiny XComposer2-VL
    auto model = mkmodel::GenerateModel(options, *model_dir_);
    ASSERT_TRUE(model.ok()) << model.status().ToString();
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(*model_dir_, ec);
    delete model_dir_;
    model_dir_ = nullptr;
  }

  void TearDown() override { Stop(); }

  // Starts a coordinator expecting `scripts.size()` workers, and those scripted workers.
  void Start(const std::vector<WorkerScript>& scripts, const std::string& data_plane) {
    CoordinatorOptions o;
    o.model_dir = *model_dir_;
    o.listen = "tcp://127.0.0.1:*";
    o.expect_workers = static_cast<int>(scripts.size());
    o.strategy = "even";       // every worker gets a stage
    o.vision_stage = "first";  // and the vision block stays on stage 0 (vision workers: cluster_test.cpp)
    o.max_sequences = 4;
    o.max_context = 256;
    o.data_plane = data_plane;
    o.worker_wait = 20s;
    coordinator_ = std::make_unique<Coordinator>(o);
    auto bound = coordinator_->Bind();
    ASSERT_TRUE(bound.ok()) << bound.status().ToString();
    address_ = *bound;
    exit_code_ = -1;
    thread_ = std::thread([this] { exit_code_ = coordinator_->Run(); });
    uint16_t port = 47100;
    for (const auto& s : scripts) workers_.push_back(std::make_unique<ScriptedWorker>(context_, address_, s, port++));
    for (auto& w : workers_) w->Hello();
  }

  // Pumps every worker until `done` holds or `timeout` passes; returns whether it held.
  bool PumpUntil(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
    const auto until = Clock::now() + timeout;
    while (Clock::now() < until) {
      for (auto& w : workers_) w->Pump(10ms);
      if (done()) return true;
    }
    return false;
  }

  // Every scripted worker's assignment, in stage order; fails the test unless each worker got
  // one of the same epoch within `timeout`.
  std::vector<Assignment> AssignmentsByStage(std::chrono::milliseconds timeout = 20s, uint64_t after_epoch = 0) {
    const bool all = PumpUntil(
        [&] {
          std::set<uint64_t> epochs;
          for (const auto& w : workers_) {
            if (!w->assignment() || w->assignment()->epoch <= after_epoch) return false;
            epochs.insert(w->assignment()->epoch);
          }
          return epochs.size() == 1;
        },
        timeout);
    EXPECT_TRUE(all) << "not every scripted worker received an assignment of one epoch";
    std::vector<Assignment> out;
    if (!all) return out;
    for (const auto& w : workers_) out.push_back(*w->assignment());
    std::sort(out.begin(), out.end(), [](const Assignment& a, const Assignment& b) { return a.stage < b.stage; });
    for (size_t k = 0; k < out.size(); ++k) {
      EXPECT_EQ(out[k].stage, k);
      EXPECT_EQ(out[k].stage_count, out.size());
    }
    return out;
  }

  // The coordinator's status reply (data plane and its reason), asked by a client DEALER.
  std::pair<std::string, std::string> StatusDataPlane() {
    auto client =
        control::ControlSocket::ConnectDealer(context_, address_, "status-client-" + std::to_string(++clients_));
    EXPECT_TRUE(client.ok());
    if (!client.ok()) return {};
    capnp::MallocMessageBuilder hello;
    hello.initRoot<proto::Envelope>().initHello().setRole(proto::Role::CLIENT);
    hello.getRoot<proto::Envelope>().getHello().setProtocolVersion(proto::K_PROTOCOL_VERSION);
    EXPECT_TRUE((*client)->Send(hello).ok());
    capnp::MallocMessageBuilder ask;
    ask.initRoot<proto::Envelope>().initStatusRequest();
    EXPECT_TRUE((*client)->Send(ask).ok());
    std::pair<std::string, std::string> out;
    const bool answered = PumpUntil(
        [&] {
          auto in = (*client)->Receive(0ms);
          if (!in.ok() || !in->has_value()) return false;
          auto env = (*in)->message->envelope();
          if (env.which() != proto::Envelope::STATUS_REPLY) return false;
          out = {env.getStatusReply().getDataPlane().cStr(), env.getStatusReply().getDataPlaneReason().cStr()};
          return true;
        },
        10s);
    EXPECT_TRUE(answered) << "no status reply";
    return out;
  }

  // Waits for the coordinator to stop on its own; its exit code, or nullopt if it did not.
  std::optional<int> WaitForExit(std::chrono::milliseconds timeout) {
    PumpUntil([&] { return exit_code_.load() >= 0; }, timeout);
    if (exit_code_.load() < 0) return std::nullopt;
    return exit_code_.load();
  }

  void Stop() {
    if (coordinator_) coordinator_->RequestStop();
    if (thread_.joinable()) thread_.join();
    workers_.clear();
    coordinator_.reset();
  }

  static void ExpectTcpWithoutIds(const std::vector<Assignment>& stages) {
    for (const auto& a : stages) {
      EXPECT_EQ(a.data_plane, "tcp") << "stage " << a.stage;
      EXPECT_TRUE(a.previous_id.empty()) << "stage " << a.stage;
      EXPECT_TRUE(a.next_id.empty()) << "stage " << a.stage;
    }
  }

  static fs::path* model_dir_;
  zmq::context_t context_;
  std::unique_ptr<Coordinator> coordinator_;
  std::string address_;
  std::thread thread_;
  std::atomic<int> exit_code_{-1};  // the coordinator's Run() result once it returned
  std::vector<std::unique_ptr<ScriptedWorker>> workers_;
  int clients_ = 0;
};
fs::path* DataPlaneTest::model_dir_ = nullptr;

#ifdef XCPIPE_HAVE_CUDA
// Whether this host can make NCCL unique ids at all (it needs no GPU: the id names a bootstrap
// socket of the calling process); the NCCL cases skip, saying why, where it cannot.
std::optional<std::string> NcclIdsUnavailable() {
  auto id = cuda::CreateNcclUniqueId();
  if (id.ok()) return std::nullopt;
  return id.status().ToString();
}
#endif

TEST_F(DataPlaneTest, CudaWorkersOfferingNcclGetPairedUniqueIdsFreshEveryEpoch) {
#ifndef XCPIPE_HAVE_CUDA
  GTEST_SKIP() << "this build has no CUDA/NCCL (XCPIPE_WITH_CUDA off or no toolkit): the coordinator cannot "
                  "create NCCL unique ids, so it always hands out TCP (checked by the other cases)";
#else
  if (auto why = NcclIdsUnavailable()) GTEST_SKIP() << "ncclGetUniqueId fails on this host: " << *why;
  Start({CudaWorker("w0", "cuda:0"), CudaWorker("w1", "cuda:1"), CudaWorker("w2", "cuda:2")}, "auto");
  const auto stages = AssignmentsByStage();
  ASSERT_EQ(stages.size(), 3u);
  std::set<std::string> link_ids;
  for (const auto& a : stages) {
    EXPECT_EQ(a.data_plane, "nccl") << "stage " << a.stage;
    if (a.stage == 0) {
      EXPECT_TRUE(a.previous_id.empty()) << "stage 0 has no previous link";
    } else {
      EXPECT_EQ(a.previous_id.size(), kNcclIdBytes) << "stage " << a.stage;
    }
    if (a.stage + 1 == stages.size()) {
      EXPECT_TRUE(a.next_id.empty()) << "the last stage has no next link";
    } else {
      EXPECT_EQ(a.next_id.size(), kNcclIdBytes) << "stage " << a.stage;
      link_ids.insert(a.next_id);
    }
  }
  for (size_t k = 0; k + 1 < stages.size(); ++k) {
    EXPECT_EQ(stages[k].next_id, stages[k + 1].previous_id) << "link " << k << ": both ends must hold the same id";
  }
  EXPECT_EQ(link_ids.size(), 2u) << "each stage link has its own unique id";
  const auto [plane, reason] = StatusDataPlane();
  EXPECT_EQ(plane, "nccl");
  EXPECT_NE(reason.find("2 link(s)"), std::string::npos) << reason;

  // A worker goes silent: the coordinator re-plans on the other two under a new epoch, with a
  // new id for their one link (a communicator is never reused).
  const uint64_t first_epoch = stages[0].epoch;
  workers_.pop_back();
  const auto replanned = AssignmentsByStage(20s, first_epoch);
  ASSERT_EQ(replanned.size(), 2u);
  EXPECT_EQ(replanned[0].data_plane, "nccl");
  EXPECT_EQ(replanned[1].data_plane, "nccl");
  EXPECT_EQ(replanned[0].next_id.size(), kNcclIdBytes);
  EXPECT_EQ(replanned[0].next_id, replanned[1].previous_id);
  EXPECT_TRUE(replanned[0].previous_id.empty());
  EXPECT_TRUE(replanned[1].next_id.empty());
  EXPECT_EQ(link_ids.count(replanned[0].next_id), 0u) << "the new epoch reuses an old unique id";
#endif
}

TEST_F(DataPlaneTest, OneWorkerWithoutNcclMeansTcpForEveryStage) {
  WorkerScript tcp_only = CudaWorker("w1", "cuda:1");
  tcp_only.data_planes = {"tcp"};
  Start({CudaWorker("w0", "cuda:0"), tcp_only, CudaWorker("w2", "cuda:2")}, "auto");
  const auto stages = AssignmentsByStage();
  ASSERT_EQ(stages.size(), 3u);
  ExpectTcpWithoutIds(stages);
  const auto [plane, reason] = StatusDataPlane();
  EXPECT_EQ(plane, "tcp");
#ifdef XCPIPE_HAVE_CUDA
  EXPECT_NE(reason.find("worker w1"), std::string::npos) << reason;
  EXPECT_NE(reason.find("does not offer the nccl data plane"), std::string::npos) << reason;
#else
  EXPECT_NE(reason.find("built without CUDA"), std::string::npos) << reason;
#endif
}

TEST_F(DataPlaneTest, DataPlaneTcpFlagMeansTcpEvenWhereNcclWouldDo) {
  Start({CudaWorker("w0", "cuda:0"), CudaWorker("w1", "cuda:1"), CudaWorker("w2", "cuda:2")}, "tcp");
  const auto stages = AssignmentsByStage();
  ASSERT_EQ(stages.size(), 3u);
  ExpectTcpWithoutIds(stages);
  const auto [plane, reason] = StatusDataPlane();
  EXPECT_EQ(plane, "tcp");
  EXPECT_EQ(reason, "--data-plane tcp");
}

// Two workers sharing one GPU of a host (cuda:0 on node-a) are planned as two stages, each
// for its share of the device; NCCL cannot join two ranks on one GPU, so the plan hands off
// over TCP and says why. Every worker being a CUDA device, the default dtype ("auto") is the
// checkpoint's 16-bit one (bf16 for this float32 model), the same for every stage.
TEST_F(DataPlaneTest, WorkersSharingOneGpuHandOffOverTcpInTheCheckpoints16BitDtype) {
  Start({CudaWorker("w0", "cuda:0"), CudaWorker("w1", "cuda:0"), CudaWorker("w2", "cuda:1")}, "auto");
  const auto stages = AssignmentsByStage();
  ASSERT_EQ(stages.size(), 3u);
  ExpectTcpWithoutIds(stages);
  for (const auto& a : stages) EXPECT_EQ(a.dtype, "bf16") << "stage " << a.stage;
  const auto [plane, reason] = StatusDataPlane();
  EXPECT_EQ(plane, "tcp");
#ifdef XCPIPE_HAVE_CUDA
  EXPECT_NE(reason.find("share cuda:0 on node-a"), std::string::npos) << reason;
#endif
}

// A coordinator restarted while its workers kept running: they remember epoch 16, and its first
// plan must be newer (a worker refuses an assignment older than its epoch, which stopped the
// whole cluster before the coordinator adopted the epoch it hears in the hellos).
TEST_F(DataPlaneTest, ARestartedCoordinatorPlansNewerThanTheEpochItsWorkersRemember) {
  WorkerScript a = CudaWorker("w0", "cuda:0"), b = CudaWorker("w1", "cuda:1");
  a.epoch = 16;
  b.epoch = 9;
  Start({a, b}, "tcp");
  const auto stages = AssignmentsByStage();
  ASSERT_EQ(stages.size(), 2u);
  EXPECT_GT(stages[0].epoch, 16u);
}

// "--data-plane nccl" with a CPU worker: planning fails at once, naming the worker, and no
// worker is assigned anything.
TEST_F(DataPlaneTest, NcclAskedForButACpuWorkerRefusesToPlanNamingIt) {
  auto log = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(64);
  spdlog::default_logger()->sinks().push_back(log);
  Start({CudaWorker("w0", "cuda:0"), {"cpu-worker", "node-b", "cpu", {"tcp"}}}, "nccl");
  const std::optional<int> code = WaitForExit(20s);
  spdlog::default_logger()->sinks().pop_back();
  ASSERT_TRUE(code.has_value()) << "the coordinator kept running";
  EXPECT_EQ(*code, kExitInfeasible);
  for (const auto& w : workers_) EXPECT_FALSE(w->assignment().has_value()) << w->id() << " was assigned a stage";
  std::string logged;
  for (const auto& line : log->last_formatted()) logged += line;
  EXPECT_NE(logged.find("--data-plane nccl cannot be used"), std::string::npos) << logged;
#ifdef XCPIPE_HAVE_CUDA
  EXPECT_NE(logged.find("worker cpu-worker"), std::string::npos) << logged;
  EXPECT_NE(logged.find("computes on cpu"), std::string::npos) << logged;
#else
  EXPECT_NE(logged.find("built without CUDA"), std::string::npos) << logged;
#endif
}

}  // namespace
}  // namespace xcpipe::coordinator
