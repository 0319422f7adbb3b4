// Network and memory faults on a live cluster (issue 6): a partition between network-namespace
// "hosts" (`ip link set down`), delay / resets / a corrupted byte injected by a userspace TCP
// proxy on the data plane and on a worker's control connection (these kernels have no `tc
// netem`), and a worker killed by a cgroup memory limit. Each scenario runs the fault suite's
// workload (6 concurrent requests of 40 greedy tokens, half with an image, tiny XComposer2-VL,
// steps slowed by 15 ms), compares every token with a fault-free run in the same test, and
// writes one row to <build>/reports/faults.json.
//
// The coordinator runs on a thread of this process (as in LocalCluster); workers are processes,
// started through a command prefix where they must live elsewhere (`ip netns exec NS`), each
// with its log in a file so a test can check what a worker said. Scenarios that need root
// (namespaces, cgroups) skip with the reason otherwise; everything they create is removed by
// RAII guards, also when the test fails.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <sstream>
#include <thread>

#include "xcpipe/base/files.h"
#include "xcpipe/base/subprocess.h"
#include "xcpipe/coordinator/client.h"
#include "xcpipe/coordinator/coordinator.h"
#include "xcpipe/coordinator/local_cluster.h"
#include "xcpipe/testing/fault_proxy.h"
#include "xcpipe/testing/fault_report.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::coordinator {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Row = testing::FaultRow;

constexpr auto kStepDelay = "15";  // ms per step: faults land mid-decode on this tiny model

fs::path ModelDir() { return testing::FixturesDir() / "ixc2_vl" / "checkpoint"; }

std::string Slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs a shell command; returns its exit code (the command's output goes to the test's log).
int Sh(const std::string& command) {
  const int rc = std::system(command.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

std::vector<GenerateRequest> Workload(size_t count = 6) {
  const std::string png = ReadFileToString(testing::FixturesDir() / "ixc2_vl/cases/image_chat/image.png").value();
  std::vector<GenerateRequest> out;
  const std::vector<std::string> q = {"Hello! Please introduce yourself.", "What is in the picture?",
                                      "Describe the picture in great detail.", "Write a short poem."};
  for (size_t i = 0; i < count; ++i) {
    GenerateRequest r;
    const bool image = i % 2 == 1;
    r.prompt_json = nlohmann::json((image ? "<ImageHere>" : "") + q[i % q.size()]).dump();
    if (image) r.images = {png};
    r.max_new_tokens = 40;
    out.push_back(r);
  }
  return out;
}

// The fault-free tokens of Workload(), from one worker process (the `xcpipe run` path).
const std::vector<std::vector<int64_t>>& Reference() {
  static std::vector<std::vector<int64_t>> ref = [] {
    std::vector<std::vector<int64_t>> out;
    LocalClusterOptions o;
    o.model_dir = ModelDir();
    o.workers = 1;
    o.quiet_workers = true;
    o.worker_binary = testing::BinDir() / "xcpipe-worker";
    auto cluster = LocalCluster::Start(o);
    if (!cluster.ok()) return out;
    auto client = Client::Connect((*cluster)->address(), 10s);
    if (!client.ok()) return out;
    for (const auto& r : Workload()) {
      auto res = (*client)->Generate(r, 120s);
      out.push_back(res.ok() && res->error.empty() ? res->token_ids[0] : std::vector<int64_t>{});
    }
    return out;
  }();
  return ref;
}

// A cluster assembled by hand: the coordinator on a thread of this process, workers started
// through any command prefix, each logging to its own file. The destructor stops the
// coordinator and kills every worker still running. Not copyable; one thread.
class HandCluster {
 public:
  HandCluster(const HandCluster&) = delete;
  HandCluster& operator=(const HandCluster&) = delete;

  // Binds the coordinator on `listen` and runs it; nullptr (with a test failure) on error.
  static std::unique_ptr<HandCluster> Start(const std::string& listen, int expect_workers) {
    std::unique_ptr<HandCluster> c(new HandCluster());
    c->logs_ = fs::temp_directory_path() / ("xcpipe-netfault-" + std::to_string(getpid()) + "-" +
                                             std::to_string(Clock::now().time_since_epoch().count() % 100000));
    fs::create_directories(c->logs_);
    CoordinatorOptions o;
    o.model_dir = ModelDir();
    o.listen = listen;
    o.expect_workers = expect_workers;
    o.spec_overrides = FixtureSpecOverrides(ModelDir());
    o.worker_wait = 120s;
    HandCluster* raw = c.get();
    o.on_ready = [raw](const std::string&) {
      std::lock_guard<std::mutex> lock(raw->mutex_);
      raw->ready_ = true;
      raw->cv_.notify_all();
    };
    c->coordinator_ = std::make_unique<Coordinator>(std::move(o));
    auto bound = c->coordinator_->Bind();
    if (!bound.ok()) {
      ADD_FAILURE() << "coordinator: " << bound.status().ToString();
      return nullptr;
    }
    c->address_ = *bound;
    Coordinator* coord = c->coordinator_.get();
    c->thread_ = std::thread([coord, raw] {
      coord->Run();
      std::lock_guard<std::mutex> lock(raw->mutex_);
      raw->exited_ = true;
      raw->cv_.notify_all();
    });
    return c;
  }

  ~HandCluster() {
    coordinator_->RequestStop();
    if (thread_.joinable()) thread_.join();
    for (auto& w : workers_) {
      if (!w->Wait(5s).ok()) {
        w->Signal(SIGKILL);
        (void)w->Wait(5s);
      }
    }
    if (!::testing::Test::HasFailure()) {
      std::error_code ignored;
      fs::remove_all(logs_, ignored);
    } else {
      std::cerr << "worker logs kept in " << logs_ << "\n";
    }
  }

  const std::string& address() const { return address_; }

  // Starts `prefix... xcpipe-worker --coordinator C --worker-id ID ... extra...`; returns its index.
  size_t AddWorker(const std::string& id, const std::vector<std::string>& extra = {},
                   const std::vector<std::string>& prefix = {}, const std::string& coordinator = "") {
    const size_t i = workers_.size();
    const fs::path log = logs_ / ("worker" + std::to_string(i) + ".log");
    std::vector<std::string> argv = prefix;
    // The shell only redirects stderr to the log and execs: the pid stays the worker's.
    for (const char* a : {"/bin/sh", "-c", "exec \"$@\" 2>>\"$0\"", log.c_str()}) argv.push_back(a);
    for (const auto& a :
         std::vector<std::string>{(testing::BinDir() / "xcpipe-worker").string(), std::string("--coordinator"),
          coordinator.empty() ? address_ : coordinator, std::string("--worker-id"), id, std::string("--device"),
          std::string("cpu"), std::string("--threads"), std::string("1"), std::string("--inject-step-delay-ms"),
          std::string(kStepDelay)}) {
      argv.push_back(a);
    }
    for (const auto& a : extra) argv.push_back(a);
    auto p = Subprocess::Start(argv);
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    if (p.ok()) workers_.push_back(std::move(p).value());
    log_paths_.push_back(log);
    return i;
  }
  Subprocess& worker(size_t i) { return *workers_.at(i); }
  std::string log(size_t i) const { return Slurp(log_paths_.at(i)); }

  bool WaitServing(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait_for(lock, timeout, [&] { return ready_ || exited_; });
    return ready_;
  }

  nlohmann::json Status() {
    auto client = Client::Connect(address_, 5s);
    if (!client.ok()) {
      ADD_FAILURE() << "status: " << client.status().ToString();
      return {};
    }
    auto s = (*client)->GetStatus(5s);
    if (!s.ok()) ADD_FAILURE() << "status: " << s.status().ToString();
    return s.ok() ? *s : nlohmann::json{};
  }

  // The id of the worker holding `stage`; "" when none does.
  std::string WorkerOfStage(int stage) {
    const auto status = Status();
    if (status.contains("workers")) {
      for (const auto& w : status["workers"])
        if (w["stage"].get<int>() == stage && w["state"].get<std::string>() != "lost") return w["id"].get<std::string>();
    }
    return "";
  }
  nlohmann::json WorkerStatus(const std::string& id) {
    const auto status = Status();
    if (status.contains("workers")) {
      for (const auto& w : status["workers"])
        if (w["id"] == id) return w;
    }
    return {};
  }

 private:
  HandCluster() = default;
  std::unique_ptr<Coordinator> coordinator_;
  std::thread thread_;
  std::string address_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool ready_ = false, exited_ = false;
  std::vector<std::unique_ptr<Subprocess>> workers_;
  std::vector<fs::path> log_paths_;
  fs::path logs_;
};

struct Outcome {
  Row row;
  nlohmann::json status;  // the coordinator's status after the workload
};

// Runs `requests` concurrently, applies `fault` once decoding is under way, waits for every
// answer and checks it against the fault-free reference. The row's figures come from the
// coordinator's status (detect: last sign of life to detection; recover: detection to the
// first step served under the new plan).
Outcome RunWithFault(const std::string& scenario, HandCluster& cluster, const std::function<void()>& fault,
                     size_t request_count = 6) {
  const auto requests = Workload(request_count);
  const auto& reference = Reference();
  std::vector<std::future<StatusOr<GenerateResult>>> futures;
  for (const auto& r : requests) {
    futures.push_back(std::async(std::launch::async, [&cluster, r]() -> StatusOr<GenerateResult> {
      auto client = Client::Connect(cluster.address(), 10s);
      if (!client.ok()) return client.status();
      return (*client)->Generate(r, 120s);
    }));
  }
  for (int i = 0; i < 300; ++i) {  // decoding under way: some steps done on every stage
    auto s = cluster.Status();
    uint64_t steps = 0;
    if (s.contains("workers"))
      for (const auto& w : s["workers"]) steps += w["steps"].get<uint64_t>();
    if (steps > 40) break;
    std::this_thread::sleep_for(20ms);
  }
  fault();
  Outcome out;
  Row& row = out.row;
  row.scenario = scenario;
  testing::TallyResults(futures, requests, reference, row);
  out.status = cluster.Status();
  if (!out.status.empty()) {
    row.detect_ms = out.status["last_detect_ms"].get<double>();
    row.recover_ms = out.status["last_recover_ms"].get<double>();
  }
  return out;
}

void ReportAndCheck(const Row& row, bool expect_fault) {
  EXPECT_TRUE(testing::ReportFault(row)) << "cannot write the faults report";
  EXPECT_EQ(row.lost, 0);
  EXPECT_EQ(row.duplicated, 0);
  EXPECT_EQ(row.completed, row.requests);
  EXPECT_TRUE(row.tokens_identical);
  if (expect_fault) {
    EXPECT_GT(row.detect_ms, 0);
    EXPECT_LT(row.detect_ms, 5000);
    EXPECT_GT(row.recover_ms, 0);
    EXPECT_LT(row.recover_ms, 15000);
  }
}

#define SKIP_WITHOUT_FIXTURES()                                                                   \
  if (!fs::exists(ModelDir())) {                                                                  \
    GTEST_SKIP() << "fixtures not found at " << ModelDir().string();                              \
  }                                                                                               \
  ASSERT_EQ(Reference().size(), Workload().size()) << "no fault-free reference run";            \
  for (const auto& tokens : Reference()) ASSERT_FALSE(tokens.empty()) << "the reference run failed"

// ---------------------------------------------------------------------------------------------
// 1. A partition between network-namespace hosts
// ---------------------------------------------------------------------------------------------

// Why namespaces cannot be used here; "" when they can.
std::string NamespaceSkipReason() {
  if (geteuid() != 0) return "needs root for network namespaces (ip netns, veth, bridge)";
  if (Sh("command -v ip >/dev/null 2>&1") != 0) return "needs iproute2 (ip) for network namespaces";
  return "";
}

// Hosts on one bridge: this process's namespace is host 0 (the coordinator, address .254 on
// the bridge), each `ip netns` namespace one more host (10.78.S.i). The destructor deletes the
// namespaces and the bridge (and with them the veth pairs and addresses).
class NamespaceLab {
 public:
  explicit NamespaceLab(int hosts) {
    const int id = getpid() % 100000;
    tag_ = "xnf" + std::to_string(id);
    subnet_ = "10.78." + std::to_string(20 + id % 200);
    ok_ = Sh("ip link add br-" + tag_ + " type bridge") == 0 && Sh("ip link set br-" + tag_ + " up") == 0 &&
          Sh("ip addr add " + subnet_ + ".254/24 dev br-" + tag_) == 0;
    for (int i = 1; ok_ && i <= hosts; ++i) {
      const std::string ns = Ns(i);
      ok_ = Sh("ip netns add " + ns) == 0 &&
            Sh("ip link add " + Veth(i) + " type veth peer name eth0 netns " + ns) == 0 &&
            Sh("ip link set " + Veth(i) + " master br-" + tag_ + " up") == 0 &&
            Sh("ip -n " + ns + " addr add " + Address(i) + "/24 dev eth0") == 0 &&
            Sh("ip -n " + ns + " link set eth0 up") == 0 && Sh("ip -n " + ns + " link set lo up") == 0;
      if (ok_) created_ = i;
    }
  }
  ~NamespaceLab() {
    for (int i = 1; i <= created_ + 1; ++i) Sh("ip netns del " + Ns(i) + " 2>/dev/null");
    Sh("ip link del br-" + tag_ + " 2>/dev/null");
  }
  NamespaceLab(const NamespaceLab&) = delete;
  NamespaceLab& operator=(const NamespaceLab&) = delete;

  bool ok() const { return ok_; }
  std::string Ns(int host) const { return tag_ + "h" + std::to_string(host); }
  std::string Veth(int host) const { return "v" + tag_ + "h" + std::to_string(host); }  // the bridge's end
  std::string Address(int host) const { return subnet_ + "." + std::to_string(host); }
  std::string CoordinatorAddress() const { return subnet_ + ".254"; }
  // Subprocess does not search PATH: name ip by its full path.
  std::vector<std::string> Prefix(int host) const {
    for (const char* ip : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"})
      if (fs::exists(ip)) return {ip, "netns", "exec", Ns(host)};
    return {"ip", "netns", "exec", Ns(host)};
  }

 private:
  std::string tag_, subnet_;
  bool ok_ = false;
  int created_ = 0;
};

TEST(NetworkFaultTest, PartitionedWorkerHostIsReplacedBySpareAndRejoinsAsSpare) {
  if (const auto why = NamespaceSkipReason(); !why.empty()) GTEST_SKIP() << why;
  SKIP_WITHOUT_FIXTURES();
  NamespaceLab lab(4);
  if (!lab.ok()) GTEST_SKIP() << "cannot create network namespaces, veth pairs or a bridge here";
  auto cluster = HandCluster::Start("tcp://" + lab.CoordinatorAddress() + ":7100", 3);
  ASSERT_NE(cluster, nullptr);
  for (int host = 1; host <= 3; ++host) {
    cluster->AddWorker("host" + std::to_string(host) + "/cpu", {"--data-host", lab.Address(host)}, lab.Prefix(host));
  }
  ASSERT_FALSE(::testing::Test::HasFailure()) << "a worker did not start";
  ASSERT_TRUE(cluster->WaitServing(120s)) << "the 3-host cluster did not start serving";
  // The spare, on a 4th host: registers idle until a re-plan uses it.
  cluster->AddWorker("host4/cpu", {"--data-host", lab.Address(4)}, lab.Prefix(4));
  for (int i = 0; i < 100 && cluster->WorkerStatus("host4/cpu").empty(); ++i) std::this_thread::sleep_for(100ms);
  ASSERT_FALSE(cluster->WorkerStatus("host4/cpu").empty()) << "the spare did not register";
  ASSERT_EQ(cluster->Status()["stages"].get<int>(), 3);

  const std::string victim = cluster->WorkerOfStage(1);
  ASSERT_FALSE(victim.empty());
  const int victim_host = victim[4] - '0';  // "hostK/cpu"
  Clock::time_point cut;
  Outcome out = RunWithFault("network partition of a worker host (ip link set down), spare on a 4th host", *cluster, [&] {
    cut = Clock::now();
    ASSERT_EQ(Sh("ip link set " + lab.Veth(victim_host) + " down"), 0);
  });
  ReportAndCheck(out.row, /*expect_fault=*/true);
  EXPECT_GE(out.status["faults"].get<int>(), 1);
  EXPECT_GT(out.status["replays"].get<int>(), 0);
  bool spare_serves = false;
  for (const auto& w : out.status["workers"]) {
    if (w["id"] == victim) {
      EXPECT_EQ(w["state"], "lost");
    }
    if (w["id"] == "host4/cpu") spare_serves = w["stage"].get<int>() >= 0;
  }
  EXPECT_TRUE(spare_serves) << "the re-plan did not use the spare: " << out.status["workers"].dump();

  // Heal the partition. The worker still holds the old epoch's stage: it must come back as a
  // spare (hello again, refused work of the old epoch), and serving must stay correct.
  ASSERT_EQ(Sh("ip link set " + lab.Veth(victim_host) + " up"), 0);
  const auto healed = Clock::now();
  std::string state;
  int stage = -2;
  for (int i = 0; i < 150 && state != "idle"; ++i) {
    std::this_thread::sleep_for(100ms);
    const auto w = cluster->WorkerStatus(victim);
    state = w.empty() ? "" : w["state"].get<std::string>();
    stage = w.empty() ? -2 : w["stage"].get<int>();
  }
  EXPECT_EQ(state, "idle") << "the partitioned worker did not re-register as a spare";
  EXPECT_EQ(stage, -1) << "the partitioned worker came back still holding a stage";
  std::cout << "partitioned worker back as a spare " << std::chrono::duration_cast<std::chrono::milliseconds>(
                                                            Clock::now() - healed).count()
            << " ms after the link came up\n";
  const int faults_before = out.status["faults"].get<int>();
  Outcome after = RunWithFault("(after the partition healed)", *cluster, [] {}, 2);
  EXPECT_EQ(after.row.completed, 2);
  EXPECT_TRUE(after.row.tokens_identical) << "serving after the stale worker came back gave different tokens";
  // (A later re-plan, e.g. a rebalance, may give the returned spare a stage of the new epoch.)
  EXPECT_EQ(after.status["faults"].get<int>(), faults_before) << "the returning worker caused another fault";
}

// ---------------------------------------------------------------------------------------------
// 2. Delay, resets and corruption from a userspace TCP fault proxy
// ---------------------------------------------------------------------------------------------

// 3 workers on loopback, each worker's data plane behind its own proxy (the worker binds one
// port and advertises the proxy's); optionally worker 0's control connection behind another.
struct ProxiedCluster {
  std::unique_ptr<HandCluster> cluster;
  std::vector<std::unique_ptr<testing::FaultProxy>> data;  // by worker index
  std::unique_ptr<testing::FaultProxy> control;             // worker 0's, when asked for
  std::vector<std::string> ids;

  testing::FaultProxy& DataProxyOf(const std::string& id) {
    for (size_t i = 0; i < ids.size(); ++i)
      if (ids[i] == id) return *data[i];
    throw std::runtime_error("no worker " + id);
  }
};

std::unique_ptr<ProxiedCluster> StartProxied(bool proxy_control, const testing::FaultPlan& initial = {}) {
  auto out = std::make_unique<ProxiedCluster>();
  out->cluster = HandCluster::Start("tcp://127.0.0.1:*", 3);
  if (!out->cluster) return nullptr;
  std::string coordinator = out->cluster->address();
  if (proxy_control) {
    const auto port = static_cast<uint16_t>(std::stoul(coordinator.substr(coordinator.rfind(':') + 1)));
    auto p = testing::FaultProxy::Start({.target_port = port, .seed = 7, .name = "control"});
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    if (!p.ok()) return nullptr;
    out->control = std::move(p).value();
    out->control->SetPlan(initial);
  }
  for (int i = 0; i < 3; ++i) {
    auto port = testing::PickFreePort();
    EXPECT_TRUE(port.ok());
    if (!port.ok()) return nullptr;
    auto p = testing::FaultProxy::Start(
        {.target_port = *port, .seed = static_cast<uint64_t>(11 + i), .name = "data" + std::to_string(i)});
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    if (!p.ok()) return nullptr;
    p.value()->SetPlan(initial);
    const std::string id = "proxied-" + std::to_string(i);
    const std::string via = proxy_control && i == 0 ? "tcp://" + out->control->address() : "";
    out->cluster->AddWorker(id, {"--data-port", std::to_string(*port), "--data-advertise", (*p)->address()}, {}, via);
    out->ids.push_back(id);
    out->data.push_back(std::move(p).value());
  }
  if (!out->cluster->WaitServing(120s)) {
    ADD_FAILURE() << "the proxied cluster did not start serving";
    return nullptr;
  }
  return out;
}

uint64_t DataBytesThroughProxies(const ProxiedCluster& c) {
  uint64_t n = 0;
  for (const auto& p : c.data) n += p->counters().bytes_forwarded;
  return n;
}

TEST(NetworkFaultTest, DataPlaneDelayThroughProxyOnlySlowsServing) {
  SKIP_WITHOUT_FIXTURES();
  testing::FaultPlan delay;
  delay.delay = 20ms;
  delay.jitter = 5ms;
  auto c = StartProxied(/*proxy_control=*/false, delay);
  ASSERT_NE(c, nullptr);
  ASSERT_EQ(c->cluster->Status()["stages"].get<int>(), 3);
  const auto started = Clock::now();
  Outcome out = RunWithFault("TCP proxy: 20 ms + 0-5 ms jitter per chunk on every data link", *c->cluster, [] {});
  std::cout << "workload took " << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count()
            << " ms through delayed data links\n";
  ReportAndCheck(out.row, /*expect_fault=*/false);
  EXPECT_EQ(out.status["faults"].get<int>(), 0) << "a delay is not a fault";
  EXPECT_GT(DataBytesThroughProxies(*c), 10000u) << "the activations did not go through the proxies";
}

TEST(NetworkFaultTest, DataConnectionResetsMidDecodeAreRecovered) {
  SKIP_WITHOUT_FIXTURES();
  auto c = StartProxied(/*proxy_control=*/false);
  ASSERT_NE(c, nullptr);
  ASSERT_EQ(c->cluster->Status()["stages"].get<int>(), 3);
  Outcome out = RunWithFault("TCP proxy: data connections reset (RST) mid-decode, frames cut mid-way", *c->cluster, [&] {
    // Reset both data links now, and cut the next frame on each 100 bytes in.
    for (auto& p : c->data) {
      p->ResetAll();
      testing::FaultPlan cut;
      cut.reset_after_bytes = 100;
      p->SetPlan(cut);
    }
  });
  ReportAndCheck(out.row, /*expect_fault=*/true);
  uint64_t resets = 0;
  for (const auto& p : c->data) resets += p->counters().resets;
  EXPECT_GE(resets, 2u) << "the proxies reset nothing";
  EXPECT_GE(out.status["faults"].get<int>(), 1);
}

TEST(NetworkFaultTest, CorruptedByteInDataFrameIsRefusedByChecksumAndRecovered) {
  SKIP_WITHOUT_FIXTURES();
  auto c = StartProxied(/*proxy_control=*/false);
  ASSERT_NE(c, nullptr);
  ASSERT_EQ(c->cluster->Status()["stages"].get<int>(), 3);
  const std::string receiver = c->cluster->WorkerOfStage(1);
  ASSERT_FALSE(receiver.empty());
  size_t receiver_index = 0;
  while (c->ids[receiver_index] != receiver) ++receiver_index;
  Outcome out = RunWithFault("TCP proxy: one byte flipped inside a data frame (CRC-32C)", *c->cluster, [&] {
    // Well past the preamble and header: a byte of the activations themselves.
    testing::FaultPlan flip;
    flip.corrupt_byte_at = 700;
    c->DataProxyOf(receiver).SetPlan(flip);
  });
  ReportAndCheck(out.row, /*expect_fault=*/true);
  EXPECT_EQ(c->DataProxyOf(receiver).counters().corrupted, 1u);
  const std::string log = c->cluster->log(receiver_index);
  const size_t at = log.find("checksum");
  EXPECT_NE(at, std::string::npos) << "the receiver did not refuse the frame by its checksum:\n" << log;
  if (at != std::string::npos) {
    const size_t begin = log.rfind('\n', at) + 1;
    std::cout << "receiver said: " << log.substr(begin, log.find('\n', at) - begin) << "\n";
  }
  EXPECT_GE(out.status["faults"].get<int>(), 1);
}

TEST(NetworkFaultTest, DelayAndResetsOnWorkerControlConnectionAreRecovered) {
  SKIP_WITHOUT_FIXTURES();
  auto c = StartProxied(/*proxy_control=*/true);
  ASSERT_NE(c, nullptr);
  Outcome out = RunWithFault("TCP proxy: 20 ms delay then resets on a worker's control connection", *c->cluster, [&] {
    testing::FaultPlan delay;
    delay.delay = 20ms;
    c->control->SetPlan(delay);
    std::this_thread::sleep_for(500ms);
    c->control->ResetAll();  // ZeroMQ reconnects; what was in flight on the old connection is gone
    std::this_thread::sleep_for(300ms);
    c->control->ResetAll();
  });
  ReportAndCheck(out.row, /*expect_fault=*/false);
  EXPECT_GE(c->control->counters().resets, 1u);
  EXPECT_GE(c->control->counters().connections, 2u) << "the worker did not reconnect through the proxy";
}

// ---------------------------------------------------------------------------------------------
// 3. A worker killed by a cgroup memory limit
// ---------------------------------------------------------------------------------------------

// A fresh memory cgroup under this process's own (cgroup v1 memory controller, or cgroup v2
// with the memory controller enabled for children). The destructor moves any task left in it
// back to the parent and removes it.
class MemoryCgroup {
 public:
  MemoryCgroup() {
    if (geteuid() != 0) {
      why_not_ = "needs root to create a memory cgroup";
      return;
    }
    const std::string name = "xcpipe-oom-" + std::to_string(getpid());
    // This process's place in each hierarchy, from /proc/self/cgroup ("ID:controllers:/path").
    std::string v1_path, v2_path;
    std::istringstream lines(Slurp("/proc/self/cgroup"));
    for (std::string line; std::getline(lines, line);) {
      const auto a = line.find(':'), b = line.find(':', a + 1);
      if (a == std::string::npos || b == std::string::npos) continue;
      const std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
      std::istringstream cs(controllers);
      for (std::string c; std::getline(cs, c, ',');)
        if (c == "memory") v1_path = path;
      if (line.substr(0, a) == "0" && controllers.empty()) v2_path = path;
    }
    const fs::path v1_root = "/sys/fs/cgroup/memory";
    if (!v1_path.empty() && fs::exists(v1_root / v1_path.substr(1) / "memory.limit_in_bytes")) {
      parent_ = v1_root / v1_path.substr(1);
      v2_ = false;
    } else {
      for (const fs::path root : {"/sys/fs/cgroup", "/sys/fs/cgroup/unified"}) {
        const fs::path here = root / v2_path.substr(v2_path.empty() ? 0 : 1);
        if (!v2_path.empty() && Slurp(here / "cgroup.subtree_control").find("memory") != std::string::npos) {
          parent_ = here;
          v2_ = true;
          break;
        }
      }
    }
    if (parent_.empty()) {
      why_not_ = "no memory cgroup controller usable here (cgroup v1 memory at /sys/fs/cgroup/memory, or cgroup v2 "
                 "with memory in the parent's cgroup.subtree_control)";
      return;
    }
    dir_ = parent_ / name;
    std::error_code ec;
    fs::create_directory(dir_, ec);
    if (ec) {
      why_not_ = "cannot create " + dir_.string() + ": " + ec.message();
      dir_.clear();
    }
  }
  ~MemoryCgroup() {
    if (dir_.empty()) return;
    std::istringstream pids(Slurp(dir_ / "cgroup.procs"));
    for (std::string pid; pids >> pid;) Write(parent_ / "cgroup.procs", pid);
    for (int i = 0; i < 50 && ::rmdir(dir_.c_str()) != 0; ++i) std::this_thread::sleep_for(100ms);
    if (fs::exists(dir_)) std::cerr << "could not remove " << dir_ << "\n";
  }
  MemoryCgroup(const MemoryCgroup&) = delete;
  MemoryCgroup& operator=(const MemoryCgroup&) = delete;

  const std::string& why_not() const { return why_not_; }
  bool v2() const { return v2_; }
  const fs::path& dir() const { return dir_; }
  bool SetLimit(uint64_t bytes) {
    if (!Write(dir_ / (v2_ ? "memory.max" : "memory.limit_in_bytes"), std::to_string(bytes))) return false;
    // No swapping out of the limit, where swap accounting exists (best effort).
    if (v2_) Write(dir_ / "memory.swap.max", "0");
    else Write(dir_ / "memory.memsw.limit_in_bytes", std::to_string(bytes));
    return true;
  }
  bool Add(pid_t pid) { return Write(dir_ / "cgroup.procs", std::to_string(pid)); }
  // OOM kills the kernel made in this cgroup.
  int OomKills() const {
    std::istringstream in(Slurp(dir_ / (v2_ ? "memory.events" : "memory.oom_control")));
    for (std::string key, value; in >> key >> value;)
      if (key == "oom_kill") return std::stoi(value);
    return -1;
  }

 private:
  static bool Write(const fs::path& file, const std::string& value) {
    std::ofstream out(file);
    out << value;
    out.flush();
    return static_cast<bool>(out);
  }
  fs::path parent_, dir_;
  bool v2_ = false;
  std::string why_not_;
};

TEST(NetworkFaultTest, WorkerKilledByCgroupMemoryLimitIsReplacedBySpare) {
  SKIP_WITHOUT_FIXTURES();
  MemoryCgroup cgroup;
  if (!cgroup.why_not().empty()) GTEST_SKIP() << cgroup.why_not();
  auto cluster = HandCluster::Start("tcp://127.0.0.1:*", 3);
  ASSERT_NE(cluster, nullptr);
  for (int i = 0; i < 3; ++i) cluster->AddWorker("mem-" + std::to_string(i));
  ASSERT_TRUE(cluster->WaitServing(120s));
  const size_t spare = cluster->AddWorker("mem-spare");
  for (int i = 0; i < 100 && cluster->WorkerStatus("mem-spare").empty(); ++i) std::this_thread::sleep_for(100ms);
  ASSERT_FALSE(cluster->WorkerStatus("mem-spare").empty()) << "the spare did not register";
  // The first stage encodes images: a request with an image needs megabytes of fresh memory
  // there (pixels, patch embeddings), which a 2 MiB cgroup cannot give.
  const std::string victim = cluster->WorkerOfStage(0);
  ASSERT_FALSE(victim.empty());
  const size_t victim_index = std::stoul(victim.substr(4));
  ASSERT_NE(victim_index, spare);
  constexpr uint64_t kLimitBytes = 2 << 20;
  std::future<StatusOr<GenerateResult>> extra;
  Outcome out = RunWithFault(std::string("worker killed by a cgroup ") + (cgroup.v2() ? "v2" : "v1") +
                                 " memory limit (OOM), spare present", *cluster, [&] {
    // Charges stay where they were made: in the new cgroup the worker starts near zero, and
    // what it allocates from now on counts against the limit.
    ASSERT_TRUE(cgroup.SetLimit(kLimitBytes)) << "cannot set the limit in " << cgroup.dir();
    ASSERT_TRUE(cgroup.Add(cluster->worker(victim_index).pid())) << "cannot move the worker into " << cgroup.dir();
    extra = std::async(std::launch::async, [&cluster]() -> StatusOr<GenerateResult> {
      auto client = Client::Connect(cluster->address(), 10s);
      if (!client.ok()) return client.status();
      return (*client)->Generate(Workload(2)[1], 120s);  // an image: prefill on the first stage
    });
  });
  ASSERT_TRUE(extra.valid());
  auto extra_result = extra.get();
  Row& row = out.row;
  ++row.requests;
  if (!extra_result.ok()) {
    ++row.lost;
  } else if (!extra_result->error.empty()) {
    ++row.failed[extra_result->error.substr(0, extra_result->error.find(':'))];
    row.tokens_identical = false;
  } else {
    ++row.completed;
    row.tokens_identical = row.tokens_identical && extra_result->token_ids[0] == Reference()[1];
  }
  auto code = cluster->worker(victim_index).Wait(10s);
  ASSERT_TRUE(code.ok()) << "the worker in the cgroup is still running";
  EXPECT_EQ(*code, 128 + SIGKILL);
  EXPECT_GE(cgroup.OomKills(), 1) << "the kernel did not OOM-kill in " << cgroup.dir();
  ReportAndCheck(row, /*expect_fault=*/true);
  EXPECT_GE(out.status["faults"].get<int>(), 1);
  bool spare_serves = false;
  for (const auto& w : out.status["workers"]) {
    if (w["id"] == victim) {
      EXPECT_EQ(w["state"], "lost");
    }
    if (w["id"] == "mem-spare") spare_serves = w["stage"].get<int>() >= 0;
  }
  EXPECT_TRUE(spare_serves) << "the re-plan did not use the spare: " << out.status["workers"].dump();
}

}  // namespace
}  // namespace xcpipe::coordinator
