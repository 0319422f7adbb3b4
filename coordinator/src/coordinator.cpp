#include "xcpipe/coordinator/coordinator.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <map>
#include <numeric>
#include <optional>
#include <set>

#include "xcpipe/base/exit_codes.h"
#include "xcpipe/control/socket.h"
#ifdef XCPIPE_HAVE_CUDA
#include "xcpipe/cuda/nccl.h"
#endif
#include "xcpipe/coordinator/metrics_http.h"
#include "xcpipe/planner/planner.h"
#include "xcpipe/planner/planning_model.h"
#include "monitoring.h"

namespace xcpipe::coordinator {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// A micro-batch counts as lost (a dropped forward or step result) when nothing has shown it
// alive for this long: it was sent, or a stage's heartbeat named it, or an earlier one, as being
// computed (workers heartbeat every 250 ms while a step runs, so a long prefill keeps extending
// the deadlines of everything queued behind it).
constexpr std::chrono::milliseconds kStepDeadline{2000};
// Rebalancing looks only at windows with this many steps on every stage, and only when a
// stage's compute per step is large enough to measure (below it, noise and not placement).
constexpr uint64_t kRebalanceMinSteps = 20;
constexpr double kRebalanceMinStepMs = 1.0;
// A worker's measured speed is taken within [1/kRebalanceMaxSlowdown, kRebalanceMaxSlowdown] of
// the median worker's; speeds that moved less than kRebalanceSpeedChange since the last plan do
// not justify moving blocks again.
constexpr double kRebalanceMaxSlowdown = 16.0;
constexpr double kRebalanceSpeedChange = 0.15;
// The retry budget: how many faults may send one sequence back to prefill before its request
// fails with the reason.
constexpr int kMaxFaultReplays = 8;
// What a client is told to wait before repeating a submit the cluster cannot take yet.
constexpr std::chrono::milliseconds kRetryAfterWhenNotServing{500};
// A stage that neither reports load progress nor says ready this long after its assignment is
// sent the assignment again (workers report progress at least every few hundred ms).
constexpr std::chrono::milliseconds kAssignmentResend{3000};

enum class WorkerState { kIdle, kLoading, kReady, kServing, kLost };
const char* WorkerStateName(WorkerState s) {
  switch (s) {
    case WorkerState::kIdle: return "idle";
    case WorkerState::kLoading: return "loading";
    case WorkerState::kReady: return "ready";
    case WorkerState::kServing: return "serving";
    case WorkerState::kLost: return "lost";
  }
  return "?";
}

struct WorkerInfo {
  std::string peer, id, host, device, device_name, data_address;
  std::vector<std::string> data_planes;  // what its hello offered ("tcp", "nccl")
  uint32_t pid = 0, threads = 1;
  uint64_t memory = 0;
  std::string kernels;                // "cpu-fast" or "generic" (hello)
  std::string dtype;                  // the dtype its stage computes in (stageReady)
  uint64_t bandwidth_bytes_per_s = 0;  // CUDA: measured device copy rate (hello); 0 unknown
  double matmul_tflops = 0;            // CUDA: measured bf16 matrix-product rate (hello); 0 unknown
  WorkerState state = WorkerState::kIdle;
  int stage = -1;
  bool weights_kept = false;  // its last stageReady reused loaded weights
  Clock::time_point last_seen = Clock::now();
  uint64_t steps = 0, resident = 0, planned = 0, load_done = 0, load_total = 0;
  WorkerFigures figures;  // the latest heartbeat's resource sample (monitoring)
};

struct StageInfo {
  std::string peer;
  size_t first = 0, end = 0;
  uint64_t kv_budget = 0, kv_per_token = 0, kv_reserved = 0, weight_bytes = 0, planned_bytes = 0;
  planner::StageBytes predicted;   // the plan's memory by category
  double predicted_step_ms = 0;    // the plan's step time for this stage
  std::chrono::steady_clock::time_point last_load_news;  // assignment sent or load progress heard
  bool ready = false;
};

// kHeld: the shared-prefix holder after its prefill: it keeps its KV on every stage for
// others to copy and takes no more steps.
enum class SeqState { kQueued, kReady, kInFlight, kDone, kHeld };

struct Sequence {
  uint64_t id = 0;
  uint64_t request = 0;     // internal request id
  uint32_t prompt_index = 0;
  PreparedPrompt prompt;
  std::vector<int64_t> generated;
  int64_t max_new = 0;
  Sampling sampling;
  SeqState state = SeqState::kQueued;
  int64_t cached = 0;       // tokens in the stages' caches
  uint64_t max_tokens = 0;
  Clock::time_point admitted_at;
  size_t text_sent = 0;     // bytes of decoded text already streamed
  std::optional<Clock::time_point> first_token_at;  // monitoring: time to first token, decode speed
  bool want_logits = false;
  int fault_replays = 0;    // times a fault sent it back to prefill (bounded: kMaxFaultReplays)
  bool use_prefix = false;  // its prompt starts with the shared head: admitted with a copy of its KV
  bool is_prefix = false;   // the holder of the shared head's KV (no request; see SharedPrefix)
  bool in_pieces = false;   // its prompt is being prefilled piece by piece (prefill_chunk_rows)
};

// Where each image of a prompt starts: its rows are the next run of -1 ids, in image order.
std::vector<int64_t> ImageFirstRows(const PreparedPrompt& p) {
  std::vector<int64_t> first;
  int64_t pos = 0;
  for (const auto& image : p.images) {
    while (pos < static_cast<int64_t>(p.ids.size()) && p.ids[pos] >= 0) ++pos;
    first.push_back(pos);
    pos += image.rows;
  }
  return first;
}

// The shared prompt prefix: every chat prompt starts with the template's system text
// (RequestPreparer::shared_head). Its KV is computed once per plan by a holder sequence of its
// own and copied into each admitted sequence whose prompt starts with it, which then prefills
// only the rest: the same work for every such prompt, whatever arrives with it, so tokens do
// not depend on the mix. A new plan (epoch) drops the holder; the next admission makes another.
struct SharedPrefix {
  std::vector<int64_t> head;  // empty: off
  uint64_t holder = 0;        // the holder's sequence id this epoch (0: none yet)
  bool ready = false;         // the holder's prefill step completed on every stage
  uint64_t hits = 0, rows_saved = 0;
};

// The last event of one prompt, kept so that a repeated submit (its client missed the end) is
// answered with the outcome instead of running the request twice.
struct FinalEvent {
  uint32_t prompt_index = 0;
  std::vector<int64_t> tokens;
  std::string text, finish_reason, error;
  uint32_t prompt_tokens = 0;
};

struct Request {
  std::string peer;
  uint64_t client_id = 0;
  std::vector<uint64_t> sequences;
  size_t done = 0;
  Clock::time_point received = Clock::now();
  Clock::time_point deadline = Clock::time_point::max();
  std::vector<FinalEvent> finals;  // prompts finished so far
};

// Finished requests remembered per client for repeated submits (oldest forgotten first).
constexpr size_t kFinishedRemembered = 4096;

// The data plane of one plan (see CoordinatorOptions::data_plane).
struct DataPlaneChoice {
  std::string kind = "tcp";           // "tcp" or "nccl"
  std::string reason;                 // why: shown in the log and the status
  std::vector<std::string> nccl_ids;  // "nccl": one 128-byte ncclUniqueId per stage link (k -> k+1)
};

enum class ClusterState { kWaiting, kLoading, kServing };
// The dtype every stage of a plan computes in. "auto" (the default): the checkpoint's 16-bit
// dtype when every worker is a CUDA device (bf16 for a float32 checkpoint), else float32,
// which the CPU computes fast and which matches the official float32 outputs exactly.
std::string ResolveDtype(const std::string& asked, const std::vector<WorkerInfo*>& pool,
                         const checkpoint::TensorTable& tensors) {
  if (!asked.empty() && asked != "auto") return asked;
  const bool all_cuda = !pool.empty() && std::all_of(pool.begin(), pool.end(), [](const WorkerInfo* w) {
    return w->device.rfind("cuda", 0) == 0;
  });
  if (!all_cuda) return "f32";
  for (const auto& t : tensors.tensors) {
    if (t.dtype == checkpoint::DType::kF16) return "f16";
    if (t.dtype == checkpoint::DType::kBF16 || t.dtype == checkpoint::DType::kF32) break;
  }
  return "bf16";
}

// Planner ordinals for the second and later workers sharing one GPU (no host has this many).
constexpr size_t kSharedGpuOrdinal = 1000;

const char* ClusterStateName(ClusterState s) {
  switch (s) {
    case ClusterState::kWaiting: return "waiting-for-workers";
    case ClusterState::kLoading: return "loading";
    case ClusterState::kServing: return "serving";
  }
  return "?";
}

}  // namespace

struct Coordinator::Impl {
  CoordinatorOptions opt;
  std::atomic<bool> stop{false};
  std::atomic<bool> drain_requested{false};  // RequestDrain()
  zmq::context_t context;
  std::unique_ptr<control::ControlSocket> socket;
  std::unique_ptr<RequestPreparer> edge;
  std::string bound;

  ClusterState state = ClusterState::kWaiting;
  uint64_t epoch = 1;
  std::map<std::string, WorkerInfo> workers;  // by peer identity
  std::set<std::string> clients;
  std::vector<StageInfo> stages;
  DataPlaneChoice data_plane;  // of the current plan
  // Which data plane a plan on these stage workers (in stage order) uses, with fresh NCCL ids;
  // FailedPrecondition, naming the worker or the reason, when "nccl" was asked for and cannot be had.
  StatusOr<DataPlaneChoice> ChooseDataPlane(const std::vector<const WorkerInfo*>& stage_workers) const;
  Clock::time_point started = Clock::now();
  Clock::time_point next_heartbeat = Clock::now();

  uint64_t next_request = 1, next_sequence = 1, next_micro_batch = 1, step_counter = 0;
  std::map<uint64_t, Request> requests;
  std::map<uint64_t, Sequence> sequences;
  SharedPrefix prefix;
  std::deque<uint64_t> queue;            // sequences waiting for admission, in arrival order
  // micro-batch -> its sequences and the rows each contributed
  std::map<uint64_t, std::vector<std::pair<uint64_t, int64_t>>> in_flight;
  struct StepTimes {
    Clock::time_point sent, deadline;  // the deadline: when the micro-batch counts as lost
  };
  std::map<uint64_t, StepTimes> step_deadlines;  // by micro-batch
  void CheckStepDeadlines();
  void CheckRequestDeadlines();
  Clock::time_point next_request_deadline_check = Clock::now();
  // Dynamic load balancing (see CoordinatorOptions::rebalance).
  std::map<std::string, double> slowdown;  // worker peer -> its speed relative to the prediction (1 = as predicted)
  std::map<std::string, WorkerFigures> window_base;  // peer -> its figures when the window started
  Clock::time_point window_started;
  uint64_t rebalances = 0;
  std::string last_rebalance;
  bool rebalance_pending = false;  // the next plan is a rebalance: log it as such
  void CheckRebalance();
  // Re-plans on the live workers and replays every admitted sequence; `fault`: after a failure
  // (fault figures are kept), else a deliberate move (rebalancing).
  void Replan(const std::string& why, bool fault);
  // Exactly-once delivery: finished requests by (client peer, client's request id).
  std::map<std::pair<std::string, uint64_t>, std::vector<FinalEvent>> finished;
  std::deque<std::pair<std::string, uint64_t>> finished_order;
  void RememberFinished(const Request& r) {
    auto key = std::make_pair(r.peer, r.client_id);
    if (finished.emplace(key, r.finals).second) finished_order.push_back(key);
    while (finished_order.size() > kFinishedRemembered) {
      finished.erase(finished_order.front());
      finished_order.pop_front();
    }
  }
  void SendFinal(const std::string& peer, uint64_t client_id, const FinalEvent& f, size_t prompt_count);
  void SendAccepted(const std::string& peer, uint64_t client_id, uint32_t prompt_index, uint32_t offset,
                    size_t prompt_count);
  // A submit this coordinator already has (the client repeated it): answer where it stands.
  bool AnswerRepeatedSubmit(const std::string& peer, uint64_t client_id);
  void SendAssignment(size_t stage);
  void ResendLostAssignments();
  // A stage is computing `micro_batch`: it is alive, and so is every later micro-batch, which
  // queues behind it on some stage (micro-batches go through the stages in order). An earlier
  // one that no stage names is not extended: if lost, it runs out while later ones flow.
  void ExtendStepDeadline(uint64_t micro_batch) {
    if (!step_deadlines.count(micro_batch)) return;  // idle (0), finished or of an older epoch
    for (auto it = step_deadlines.find(micro_batch); it != step_deadlines.end(); ++it) {
      it->second.deadline = std::max(it->second.deadline, Clock::now() + kStepDeadline);
    }
  }
  // Fault handling: a stage was lost; re-plan on the workers that are left (or that come back)
  // and replay every admitted sequence from its prompt and the tokens already generated.
  bool recovering = false;
  bool planned_once = false;
  std::string plan_dtype = "f32";  // the dtype of the current plan (ResolveDtype)
  bool planned_once_served = false;  // the cluster has served at least once
  bool capacity_lost = false;    // recovery found no feasible plan: refuse until a worker returns
  bool workers_changed = true;   // re-plan only when the set of live workers changed
  Clock::time_point fault_detected_at;
  uint64_t faults = 0, replays = 0;
  double last_detect_ms = 0, last_recover_ms = 0;
  void OnStageLost(WorkerInfo& w, const std::string& why);
  // Re-plans on the live workers and replays every admitted sequence (after a lost stage, or a
  // step that failed in the pipeline).
  void Recover(const std::string& why);
  uint64_t completed = 0, failed = 0;
  // Monitoring: request counters and histograms live here (the actor's thread); a copy with the
  // workers' figures is published on `board` for the HTTP thread (see metrics.h).
  MetricsSnapshot live;
  std::shared_ptr<MetricsBoard> board = std::make_shared<MetricsBoard>();
  std::unique_ptr<MetricsHttpServer> metrics_http;
  Clock::time_point next_publish;
  bool published_serving = false;
  void PublishMetrics();
  MetricsSnapshot Snapshot() const;
  int exit_code = kExitOk;
  // Graceful stop (RequestDrain; SIGTERM/SIGINT in the binaries): refuse new requests, let
  // admitted ones finish until the deadline.
  bool draining = false;
  Clock::time_point drain_deadline;

  void Send(capnp::MallocMessageBuilder& m, const std::string& peer) {
    if (Status st = socket->Send(m, peer); !st.ok()) spdlog::warn("send to {}: {}", peer, st.ToString());
  }
  void SendError(const std::string& peer, const Status& st, uint64_t request_id) {
    capnp::MallocMessageBuilder m;
    wire::SetError(m.initRoot<proto::Envelope>(), st, request_id);
    Send(m, peer);
  }

  void Dispatch(const std::string& peer, const proto::Envelope::Reader& env);
  void OnHello(const std::string& peer, proto::Hello::Reader h);
  bool ClaimWorkerId(const std::string& peer, const std::string& id, const std::string& host, uint32_t pid);
  void OnSubmit(const std::string& peer, proto::Submit::Reader s);
  StatusOr<std::vector<PreparedPrompt>> PreparePretokenized(proto::Submit::Reader s) const;
  void OnStepResult(proto::StepResult::Reader r);
  void OnStatus(const std::string& peer);
  void OnWorkerError(const std::string& peer, proto::Error::Reader e);
  void MaybePlan();
  void Admit();
  void Schedule();
  // Turns the shared prefix off for good (its holder cannot be computed): waiting sequences
  // prefill their whole prompts instead.
  void DropSharedPrefix(const std::string& why);
  // Forgets this plan's holder of the shared head (queue and sequences), telling the stages to
  // free its KV when asked; returns the state it was in (kDone when there was none).
  SeqState RemoveHolder(bool release_on_stages);
  void Heartbeats();
  void FinishSequence(Sequence& seq, const std::string& reason);
  // Frees the sequence's KV room in the accounting and on every stage.
  void ReleaseOnStages(const Sequence& seq);
  void FailRequest(uint64_t request_id, const Status& reason);
  void StreamTokens(Sequence& seq, const std::vector<int64_t>& tokens, bool done, const std::string& finish,
                    kj::ArrayPtr<const kj::byte> logits = {});
  // The context one sequence may use: the configured limit, capped at the model's.
  int64_t MaxContext(const checkpoint::ModelSpec& spec) const {
    const int64_t model_limit = spec.llm.max_position_embeddings > 0 ? spec.llm.max_position_embeddings : 4096;
    return std::min<int64_t>(opt.max_context, model_limit);
  }
  // Rows one micro-batch may carry, which is also what the plan sizes activations for: the
  // configured bound, never more than one whole context, and no more than a prefill piece when
  // long prompts go in pieces (a prompt left whole may carry up to a whole context by itself).
  int64_t StepRowLimit(const checkpoint::ModelSpec& spec) const {
    const int64_t limit = std::min<int64_t>(opt.max_batch_rows, MaxContext(spec));
    return opt.prefill_chunk_rows > 0 ? std::min(limit, opt.prefill_chunk_rows) : limit;
  }
  uint64_t ReadyWorkers() const {
    uint64_t n = 0;
    for (const auto& [p, w] : workers) n += w.state != WorkerState::kLost;
    return n;
  }
};

void Coordinator::Impl::OnHello(const std::string& peer, proto::Hello::Reader h) {
  if (h.getProtocolVersion() != proto::K_PROTOCOL_VERSION) {
    SendError(peer, FailedPreconditionError("protocol version " + std::to_string(h.getProtocolVersion()) +
                                            " is not supported; this coordinator speaks version " +
                                            std::to_string(proto::K_PROTOCOL_VERSION)), 0);
    return;
  }
  // A restarted coordinator starts at epoch 1 while its workers remember the epoch they served
  // under: before the first plan it adopts the highest one it hears, so its first assignment is
  // newer than anything a worker has seen (a worker refuses an older one).
  if (h.getRole() == proto::Role::WORKER && !planned_once && h.getEpoch() > epoch) {
    spdlog::info("adopting epoch {} from worker {} (it served under it before this coordinator started)",
                 h.getEpoch(), h.getWorkerId().cStr());
    epoch = h.getEpoch();
  }
  capnp::MallocMessageBuilder m;
  auto w = m.initRoot<proto::Envelope>().initWelcome();
  w.setProtocolVersion(proto::K_PROTOCOL_VERSION);
  w.setEpoch(epoch);
  w.setHeartbeatIntervalMs(static_cast<uint32_t>(control::ControlTimings::kHeartbeatInterval.count()));
  w.setHeartbeatTimeoutMs(static_cast<uint32_t>(control::ControlTimings::kHeartbeatTimeout.count()));
  if (h.getRole() == proto::Role::CLIENT) {
    clients.insert(peer);
    Send(m, peer);
    return;
  }
  if (h.getRole() != proto::Role::WORKER) {
    SendError(peer, InvalidArgumentError("only workers and clients may say hello to a coordinator"), 0);
    return;
  }
  auto caps = h.getCapabilities();
  if (!ClaimWorkerId(peer, h.getWorkerId().cStr(), caps.getHost().cStr(), caps.getPid())) return;
  auto it = workers.find(peer);
  const bool known = it != workers.end() && it->second.state != WorkerState::kLost;
  WorkerInfo& info = workers[peer];
  info.peer = peer;
  info.id = h.getWorkerId().cStr();
  info.host = caps.getHost().cStr();
  info.pid = caps.getPid();
  info.device = caps.getDevice().cStr();
  info.device_name = caps.getDeviceName().cStr();
  info.memory = caps.getMemoryBytes();
  info.threads = caps.getThreads();
  info.kernels = caps.getKernels().cStr();
  info.bandwidth_bytes_per_s = caps.getMemoryBandwidthBytesPerS();
  info.matmul_tflops = caps.getMatmulTflops();
  info.data_address = caps.getDataAddress().cStr();
  info.data_planes.clear();
  for (auto plane : caps.getDataPlanes()) info.data_planes.emplace_back(plane.cStr());
  info.last_seen = Clock::now();
  if (!known) {
    info.state = WorkerState::kIdle;
    info.stage = -1;
    workers_changed = true;
    spdlog::info("worker {} registered: {} on {} (pid {}), data plane {} [{} of {} expected]", info.id, info.device,
                 info.host, info.pid, info.data_address, ReadyWorkers(), opt.expect_workers);
  }
  Send(m, peer);
}

// One live registration per worker id; peers are per-process routing identities. Another live
// registration of the same id is either this worker's previous process, killed and restarted
// (its connection is gone: ROUTER_MANDATORY refuses a send to it), which is declared lost now
// instead of after the heartbeat timeout; or a second process given a serving worker's id,
// which is refused with AlreadyExists while the first keeps serving. A holder whose host
// vanished keeps its half-open connection until the heartbeat timeout; the newcomer repeats
// its hello and is taken once the holder is declared lost.
bool Coordinator::Impl::ClaimWorkerId(const std::string& peer, const std::string& id, const std::string& host,
                                      uint32_t pid) {
  for (auto& [other_peer, other] : workers) {
    if (other_peer == peer || other.id != id || other.state == WorkerState::kLost) continue;
    capnp::MallocMessageBuilder probe;
    probe.initRoot<proto::Envelope>().initHeartbeat().setEpoch(epoch);
    const Status reach = socket->Send(probe, other_peer, 100ms);
    if (reach.ok()) {
      const auto heard = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - other.last_seen);
      spdlog::warn("refused a second worker '{}' (pid {} on {}): pid {} on {} holds that id", id, pid, host, other.pid,
                   other.host);
      SendError(peer,
                AlreadyExistsError("worker id '" + id + "' is held by a live worker: pid " +
                                   std::to_string(other.pid) + " on host " + other.host + ", heard " +
                                   std::to_string(heard.count()) + " ms ago. Give each worker its own --worker-id; "
                                   "if that process has exited, this one is taken once it misses its heartbeats (" +
                                   std::to_string(control::ControlTimings::kHeartbeatTimeout.count()) + " ms)"),
                0);
      return false;
    }
    spdlog::warn("worker {} restarted (pid {} on {} replaces pid {} on {}, whose connection is gone)", id, pid, host,
                 other.pid, other.host);
    other.state = WorkerState::kLost;
    workers_changed = true;
    if (other.stage >= 0) OnStageLost(other, "restarted as pid " + std::to_string(pid));
  }
  // Earlier processes of this id that no stage refers to any more: forgotten, so status and
  // metrics list each worker id once.
  for (auto it = workers.begin(); it != workers.end();) {
    const bool stale = it->first != peer && it->second.id == id && it->second.state == WorkerState::kLost &&
                       std::none_of(stages.begin(), stages.end(), [&](const auto& s) { return s.peer == it->first; });
    it = stale ? workers.erase(it) : std::next(it);
  }
  return true;
}

void Coordinator::Impl::MaybePlan() {
  if (state != ClusterState::kWaiting) return;
  if (planned_once && !workers_changed) return;
  std::vector<WorkerInfo*> pool;
  for (auto& [peer, w] : workers)
    if (w.state != WorkerState::kLost) pool.push_back(&w);
  // After a fault: whatever is alive.
  const int needed = planned_once ? 1 : std::max(opt.expect_workers, static_cast<int>(opt.expect_worker_ids.size()));
  if (static_cast<int>(pool.size()) < needed) {
    if (!planned_once && Clock::now() - started > opt.worker_wait) {
      // Name who came and who did not, so an operator knows which host or GPU to look at.
      std::string registered, missing;
      for (const auto* w : pool) registered += (registered.empty() ? "" : ", ") + w->id + " (" + w->host + ")";
      for (const auto& id : opt.expect_worker_ids)
        if (std::none_of(pool.begin(), pool.end(), [&](const WorkerInfo* w) { return w->id == id; }))
          missing += (missing.empty() ? "" : ", ") + id;
      if (missing.empty()) missing = std::to_string(needed - static_cast<int>(pool.size())) + " unnamed worker(s)";
      spdlog::error("gave up after {} s waiting for {} workers: {} registered [{}]; missing: {}",
                    opt.worker_wait.count() / 1000, needed, pool.size(), registered, missing);
      exit_code = kExitUnavailable;
      stop.store(true);
    }
    return;
  }
  std::sort(pool.begin(), pool.end(), [](auto* a, auto* b) { return a->id < b->id; });
  workers_changed = false;
  auto model = planner::LoadCheckpointForPlanning(opt.model_dir);
  if (!model.ok()) {
    spdlog::error("cannot plan: {}", model.status().ToString());
    exit_code = ExitCodeFor(model.status());
    stop.store(true);
    return;
  }
  // The cluster as registered: one host per host name, one device per worker.
  planner::ClusterSpec cluster;
  cluster.source = "registered workers";
  cluster.serving.max_sequences = opt.max_sequences;
  cluster.serving.max_context = MaxContext(model->spec);
  // The rows one step carries, as the scheduler packs them (see StepRowLimit): what each
  // stage's activations are planned for.
  cluster.serving.prefill_chunk = StepRowLimit(model->spec);
  plan_dtype = ResolveDtype(opt.dtype, pool, model->tensors);
  cluster.serving.dtype = plan_dtype == "bf16"  ? checkpoint::DType::kBF16
                          : plan_dtype == "f16" ? checkpoint::DType::kF16
                                                : checkpoint::DType::kF32;
  cluster.network.inter_host_gbps = 10;
  std::vector<std::pair<size_t, size_t>> where(pool.size());
  for (size_t i = 0; i < pool.size(); ++i) {
    auto h = std::find_if(cluster.hosts.begin(), cluster.hosts.end(),
                          [&](const planner::HostSpec& x) { return x.name == pool[i]->host; });
    if (h == cluster.hosts.end()) {
      planner::HostSpec host;
      host.name = pool[i]->host;
      host.address = pool[i]->host;
      host.intra_host_gbps = 100;
      cluster.hosts.push_back(host);
      h = cluster.hosts.end() - 1;
    }
    planner::GpuSpec gpu;
    const bool cuda = pool[i]->device.rfind("cuda", 0) == 0;
    gpu.device = cuda ? pool[i]->device : "cpu:" + std::to_string(i);
    // Workers sharing one GPU of a host (allowed: they hand off over TCP) split its memory and
    // speed; the planner, which sees one entry per device, gets the later ones under ordinals
    // no device has (status shows the real device of each worker).
    size_t gpu_sharers = 1, gpu_rank = 0;
    if (cuda) {
      for (size_t j = 0; j < pool.size(); ++j) {
        if (j == i || pool[j]->host != pool[i]->host || pool[j]->device != pool[i]->device) continue;
        ++gpu_sharers;
        if (j < i) ++gpu_rank;
      }
      if (gpu_rank > 0) gpu.device = "cuda:" + std::to_string(kSharedGpuOrdinal + i);
    }
    gpu.memory_gib = static_cast<double>(pool[i]->memory) / double(1ull << 30);
    if (!cuda) {
      // CPU workers on one host share its RAM, and each announces all of it: each is planned
      // for its share, so their plans together fit the host.
      const auto sharing = std::count_if(pool.begin(), pool.end(), [&](const WorkerInfo* w) {
        return w->host == pool[i]->host && w->device.rfind("cuda", 0) != 0;
      });
      gpu.memory_gib /= static_cast<double>(std::max<std::ptrdiff_t>(1, sharing));
    }
    // A CUDA worker's speed as it measured its device at start; the constants stand in for a
    // worker that could not measure (an older one, or no toolkit at build time).
    gpu.tflops = cuda ? (pool[i]->matmul_tflops > 0 ? pool[i]->matmul_tflops : 100.0)
                      : 0.05 * std::max<uint32_t>(1, pool[i]->threads);
    gpu.mem_bw_gbps = cuda ? (pool[i]->bandwidth_bytes_per_s > 0 ? static_cast<double>(pool[i]->bandwidth_bytes_per_s) / 1e9
                                                                 : 1000.0)
                           : 20.0;
    gpu.reserved_gib = cuda ? planner::kDefaultCudaReservedGib : planner::kDefaultCpuReservedGib;
    if (gpu_sharers > 1) {
      gpu.memory_gib /= static_cast<double>(gpu_sharers);
      gpu.tflops /= static_cast<double>(gpu_sharers);
      gpu.mem_bw_gbps /= static_cast<double>(gpu_sharers);
    }
    if (auto sd = slowdown.find(pool[i]->peer); sd != slowdown.end() && sd->second > 0) {
      gpu.tflops /= sd->second;  // measured: this worker runs slower (or faster) than predicted
      gpu.mem_bw_gbps /= sd->second;
    }
    where[i] = {static_cast<size_t>(h - cluster.hosts.begin()), h->gpus.size()};
    h->gpus.push_back(gpu);
  }
  planner::PlanOptions plan_options;
  if (auto strategy = planner::ParseStrategy(opt.strategy)) plan_options.strategy = *strategy;
  auto plan = planner::MakePlan(*model, cluster, plan_options);
  if (!plan.ok() || !plan->feasible) {
    const std::string why = plan.ok() ? plan->infeasible_reason : plan.status().ToString();
    if (!planned_once) {
      spdlog::error("no plan fits the registered workers: {}", why);
      exit_code = kExitInfeasible;
      stop.store(true);
      return;
    }
    // After a fault: the survivors cannot hold the model. Fail what is waiting, with the reason,
    // and keep refusing new requests until capacity returns (a worker registers again).
    spdlog::error("cannot recover on {} worker(s): {}", pool.size(), why);
    std::vector<uint64_t> ids;
    for (const auto& [id, r] : requests) ids.push_back(id);
    for (uint64_t id : ids) {
      FailRequest(id, ResourceExhaustedError("a stage was lost and the remaining workers cannot hold the model (" + why +
                                             "); waiting for capacity to return"));
    }
    capacity_lost = true;
    return;
  }
  std::vector<const WorkerInfo*> stage_workers;  // in stage order
  for (const auto& sp : plan->stages) {
    const WorkerInfo* w = nullptr;
    for (size_t i = 0; i < pool.size(); ++i)
      if (where[i].first == sp.device_ref.host && where[i].second == sp.device_ref.gpu) w = pool[i];
    if (w == nullptr) {
      spdlog::error("plan names a device no worker holds");
      stop.store(true);
      return;
    }
    stage_workers.push_back(w);
  }
  // The data plane goes with the plan: NCCL ids are fresh every epoch.
  StatusOr<DataPlaneChoice> chosen = ChooseDataPlane(stage_workers);
  if (!chosen.ok()) {
    spdlog::error("cannot plan on the registered workers: {}", chosen.status().message());
    if (!planned_once) {
      exit_code = kExitInfeasible;
      stop.store(true);
      return;
    }
    // After a fault: what is waiting fails with the reason; a worker that registers again
    // (workers_changed) brings another attempt.
    std::vector<uint64_t> ids;
    for (const auto& [id, r] : requests) ids.push_back(id);
    for (uint64_t id : ids) FailRequest(id, chosen.status().WithContext("no plan can be served"));
    capacity_lost = true;
    return;
  }
  planned_once = true;
  capacity_lost = false;
  ++epoch;
  stages.clear();
  data_plane = std::move(chosen).value();
  for (size_t k = 0; k < plan->stages.size(); ++k) {
    const auto& sp = plan->stages[k];
    const WorkerInfo* w = stage_workers[k];
    StageInfo st;
    st.peer = w->peer;
    st.first = sp.first_block;
    st.end = sp.end_block;
    st.kv_budget = opt.kv_budget_bytes ? opt.kv_budget_bytes : sp.bytes.kv;
    st.planned_bytes = sp.bytes.total();
    st.predicted = sp.bytes;
    st.predicted_step_ms = sp.step_ms();
    stages.push_back(st);
  }
  spdlog::info("plan (epoch {}): {} stages in {}, predicted bottleneck {:.2f} ms", epoch, stages.size(), plan_dtype,
               plan->bottleneck_ms);
  spdlog::info("data plane: {} ({})", data_plane.kind, data_plane.reason);
  if (rebalance_pending) {
    rebalance_pending = false;
    std::string after;
    for (const auto& st : stages) {
      after += (after.empty() ? "" : ", ") + workers[st.peer].id + " [" + std::to_string(st.first) + ", " +
               std::to_string(st.end) + ")";
    }
    last_rebalance += "; after: " + after;
    spdlog::info("rebalanced: {}", last_rebalance);
  }
  for (size_t i = 0; i < stages.size(); ++i) {
    WorkerInfo& w = workers[stages[i].peer];
    w.stage = static_cast<int>(i);
    w.state = WorkerState::kLoading;
    w.planned = stages[i].planned_bytes;
    const auto& pb = stages[i].predicted;
    spdlog::info("stage {}: worker {} holds blocks [{}, {}) ({} .. {}); predicted MiB: weights {:.1f}, kv {:.1f}, "
                 "activations {:.1f}, workspace {:.1f}, total {:.1f}; step {:.2f} ms",
                 i, w.id, stages[i].first, stages[i].end, model->spec.blocks[stages[i].first].name,
                 model->spec.blocks[stages[i].end - 1].name, pb.weights / 1048576.0, pb.kv / 1048576.0,
                 pb.activations / 1048576.0, pb.workspace / 1048576.0, pb.total() / 1048576.0,
                 stages[i].predicted_step_ms);
    SendAssignment(i);
  }
  state = ClusterState::kLoading;
}

StatusOr<DataPlaneChoice> Coordinator::Impl::ChooseDataPlane(
    const std::vector<const WorkerInfo*>& stage_workers) const {
  DataPlaneChoice choice;
  if (opt.data_plane == "tcp") {
    choice.reason = "--data-plane tcp";
    return choice;
  }
  // Whatever rules NCCL out, in words naming the worker; empty: NCCL it is. NCCL refuses two
  // ranks of one communicator on one GPU, so neighbours sharing a GPU go over TCP.
  std::string obstacle;
  for (size_t k = 0; k + 1 < stage_workers.size() && obstacle.empty(); ++k) {
    const WorkerInfo& a = *stage_workers[k];
    const WorkerInfo& b = *stage_workers[k + 1];
    if (a.host == b.host && a.device == b.device && a.device.rfind("cuda", 0) == 0) {
      obstacle = "workers " + a.id + " and " + b.id + " (stages " + std::to_string(k) + " and " + std::to_string(k + 1) +
                 ") share " + a.device + " on " + a.host + ", and NCCL cannot join two ranks on one GPU";
    }
  }
#ifndef XCPIPE_HAVE_CUDA
  (void)stage_workers;
  obstacle = "this coordinator was built without CUDA and NCCL, so it cannot create NCCL unique ids";
#else
  for (size_t k = 0; k < stage_workers.size() && obstacle.empty(); ++k) {
    const WorkerInfo& w = *stage_workers[k];
    const auto& planes = w.data_planes;
    if (w.device.rfind("cuda", 0) != 0) {
      obstacle =
          "worker " + w.id + " (stage " + std::to_string(k) + ") computes on " + w.device + ", not a CUDA device";
    } else if (std::find(planes.begin(), planes.end(), "nccl") == planes.end()) {
      std::string offered;
      for (const auto& p : planes) offered += (offered.empty() ? "" : ", ") + p;
      obstacle = "worker " + w.id + " (stage " + std::to_string(k) + ") does not offer the nccl data plane (offered: " +
                 (offered.empty() ? std::string("nothing") : offered) + ")";
    }
  }
  for (size_t link = 0; link + 1 < stage_workers.size() && obstacle.empty(); ++link) {
    auto id = cuda::CreateNcclUniqueId();
    if (!id.ok()) {
      obstacle = "creating an NCCL unique id failed: " + id.status().ToString();
      break;
    }
    choice.nccl_ids.emplace_back(reinterpret_cast<const char*>(id->data()), id->size());
  }
#endif
  if (obstacle.empty()) {
    choice.kind = "nccl";
    choice.reason = "every stage is a CUDA worker offering NCCL; " + std::to_string(choice.nccl_ids.size()) +
                    " link(s) with fresh unique ids";
    return choice;
  }
  if (opt.data_plane == "nccl") return FailedPreconditionError("--data-plane nccl cannot be used: " + obstacle);
  choice.nccl_ids.clear();
  choice.reason = "TCP because " + obstacle;
  return choice;
}

void Coordinator::Impl::SendAssignment(size_t i) {
  capnp::MallocMessageBuilder m;
  auto a = m.initRoot<proto::Envelope>().initAssignStage();
  a.setEpoch(epoch);
  a.setStageIndex(static_cast<uint32_t>(i));
  a.setStageCount(static_cast<uint32_t>(stages.size()));
  a.setBlockBegin(static_cast<uint32_t>(stages[i].first));
  a.setBlockEnd(static_cast<uint32_t>(stages[i].end));
  a.setModelPath(std::filesystem::absolute(opt.model_dir).string());
  a.setDtype(plan_dtype);
  a.setKvBudgetBytes(stages[i].kv_budget);
  a.setNextDataAddress(i + 1 < stages.size() ? workers[stages[i + 1].peer].data_address : "");
  a.setSpecOverrides(opt.spec_overrides);
  a.setMaxBatchRows(static_cast<uint32_t>(opt.max_batch_rows));
  a.setDataPlane(data_plane.kind);
  if (data_plane.kind == "nccl") {
    // Link k joins stage k (rank 0, "next") and stage k+1 (rank 1, "previous"). A re-sent
    // assignment carries the same ids: the worker keeps links it has started.
    auto bytes = [](const std::string& id) {
      return kj::arrayPtr(reinterpret_cast<const kj::byte*>(id.data()), id.size());
    };
    if (i > 0 && i - 1 < data_plane.nccl_ids.size()) a.setPreviousNcclId(bytes(data_plane.nccl_ids[i - 1]));
    if (i < data_plane.nccl_ids.size()) a.setNextNcclId(bytes(data_plane.nccl_ids[i]));
  }
  stages[i].last_load_news = Clock::now();
  Send(m, stages[i].peer);
}

void Coordinator::Impl::ResendLostAssignments() {
  if (state != ClusterState::kLoading) return;
  const auto now = Clock::now();
  for (size_t i = 0; i < stages.size(); ++i) {
    // No progress report and no ready for a while: the assignment or the answer was lost. The
    // worker treats a repeat of the same epoch as the same assignment (the model is kept).
    if (stages[i].ready || now - stages[i].last_load_news < kAssignmentResend) continue;
    spdlog::warn("stage {}: no word from worker {} since its assignment; sending it again", i,
                 workers[stages[i].peer].id);
    SendAssignment(i);
  }
}

void Coordinator::Impl::OnSubmit(const std::string& peer, proto::Submit::Reader s) {
  const uint64_t client_id = s.getRequestId();
  ++live.submitted;
  auto refuse = [&](const Status& st) {
    // The only refusal for lack of resources before queueing is a full queue: "busy".
    ++live.refused_by_reason[st.code() == StatusCode::kResourceExhausted ? "busy" : std::string(StatusCodeName(st.code()))];
    capnp::MallocMessageBuilder m;
    auto e = m.initRoot<proto::Envelope>().initTokenEvent();
    e.setRequestId(client_id);
    e.setDone(true);
    e.setFinishReason(std::string(StatusCodeName(st.code())));
    e.setError(st.message());
    (void)socket->Send(m, peer, 0ms);  // a client that does not read loses only its answer
    spdlog::info("request {} from {} refused: {}", client_id, peer, StatusCodeName(st.code()));
  };
  if (AnswerRepeatedSubmit(peer, client_id)) return;
  int64_t of_this_client = 0;
  for (const auto& [id, r] : requests) of_this_client += r.peer == peer;
  if (of_this_client >= opt.max_requests_per_client) {
    return refuse(ResourceExhaustedError("this client already has " + std::to_string(of_this_client) +
                                         " requests in progress; at most " +
                                         std::to_string(opt.max_requests_per_client) + " per client"));
  }
  if (static_cast<int64_t>(queue.size()) >= opt.max_queue) {
    return refuse(ResourceExhaustedError("the coordinator is busy: " + std::to_string(queue.size()) +
                                         " requests are waiting; retry later"));
  }
  Sampling sampling;
  auto sp = s.getSampling();
  sampling.greedy = sp.getGreedy();
  sampling.temperature = sp.getTemperature();
  sampling.top_k = sp.getTopK();
  sampling.top_p = sp.getTopP();
  sampling.repetition_penalty = sp.getRepetitionPenalty();
  sampling.seed = sp.getSeed();
  sampling.min_new_tokens = sp.getMinNewTokens();
  sampling.ignore_eos = sp.getIgnoreEos();
  const int64_t max_new = s.getMaxNewTokens();
  if (Status st = edge->ValidateGeneration(max_new, sampling); !st.ok()) return refuse(st);
  std::vector<std::string> images;
  for (auto img : s.getImages()) images.emplace_back(reinterpret_cast<const char*>(img.begin()), img.size());
  StatusOr<std::vector<PreparedPrompt>> prepared = s.getTokenIds().size() > 0
                                                       ? PreparePretokenized(s)
                                                       : edge->Prepare(s.getPromptJson().cStr(), images);
  if (!prepared.ok()) return refuse(prepared.status());
  const int64_t max_context = MaxContext(edge->spec());
  for (const auto& p : *prepared) {
    if (static_cast<int64_t>(p.ids.size()) + max_new > max_context) {
      return refuse(InvalidArgumentError("the prompt (" + std::to_string(p.ids.size()) + " tokens) plus max_new_tokens (" +
                                         std::to_string(max_new) + ") exceeds the serving context of " +
                                         std::to_string(max_context) + " tokens"));
    }
  }
  const uint64_t rid = next_request++;
  Request& req = requests[rid];
  req.peer = peer;
  req.client_id = client_id;
  const auto asked = std::chrono::milliseconds(s.getDeadlineMs());
  req.deadline = req.received + (asked.count() > 0 ? std::min(asked, opt.max_deadline) : opt.default_deadline);
  for (size_t i = 0; i < prepared->size(); ++i) {
    Sequence seq;
    seq.id = next_sequence++;
    seq.request = rid;
    seq.prompt_index = static_cast<uint32_t>(i);
    seq.prompt = std::move((*prepared)[i]);
    seq.max_new = max_new;
    seq.sampling = sampling;
    seq.max_tokens = seq.prompt.ids.size() + static_cast<uint64_t>(max_new);
    seq.want_logits = s.getWantLogits();
    const auto& head = prefix.head;
    seq.use_prefix = !head.empty() && seq.prompt.ids.size() > head.size() &&
                     std::equal(head.begin(), head.end(), seq.prompt.ids.begin());
    req.sequences.push_back(seq.id);
    queue.push_back(seq.id);
    sequences.emplace(seq.id, std::move(seq));
  }
  spdlog::info("request {} (client {} #{}): {} prompt(s), {} image(s), queued", rid, peer, client_id, prepared->size(),
               images.size());
  SendAccepted(peer, client_id, 0, 0, prepared->size());
}

StatusOr<std::vector<PreparedPrompt>> Coordinator::Impl::PreparePretokenized(proto::Submit::Reader s) const {
  PreparedPrompt p;
  const int64_t vocab = edge->spec().llm.vocab;
  for (int64_t id : s.getTokenIds()) {
    if (id < -1 || id >= vocab) {
      return InvalidArgumentError("token id " + std::to_string(id) + " is outside the vocabulary; expected 0.." +
                                  std::to_string(vocab - 1) + " or -1 for an image row");
    }
    p.ids.push_back(id);
  }
  if (static_cast<int64_t>(p.ids.size()) > edge->limits().max_prompt_tokens) {
    return InvalidArgumentError("prompt of " + std::to_string(p.ids.size()) + " tokens; at most " +
                                std::to_string(edge->limits().max_prompt_tokens) + " are allowed");
  }
  auto mask = s.getImMask();
  if (mask.size() != p.ids.size()) {
    return InvalidArgumentError("imMask has " + std::to_string(mask.size()) + " bytes for " +
                                std::to_string(p.ids.size()) + " tokens; expected one byte per token");
  }
  p.im_mask.assign(mask.begin(), mask.end());
  int64_t slots = 0;
  for (int64_t id : p.ids) slots += id < 0;
  int64_t rows = 0;
  for (auto img : s.getPixelImages()) {
    PreparedImage out;
    out.channels = img.getChannels();
    out.height = img.getHeight();
    out.width = img.getWidth();
    out.grid_h = std::max<uint32_t>(1, img.getGridH());
    out.grid_w = std::max<uint32_t>(1, img.getGridW());
    const uint64_t n = uint64_t(out.channels) * out.height * out.width;
    if (out.channels != 3 || n == 0 || img.getPixels().size() != n * sizeof(float)) {
      return InvalidArgumentError("pixel image of " + std::to_string(img.getPixels().size()) +
                                  " bytes does not match a 3 x height x width float32 image");
    }
    out.pixels.resize(n);
    std::memcpy(out.pixels.data(), img.getPixels().begin(), n * sizeof(float));
    out.rows = edge->spec().ImageTokens(out.grid_h, out.grid_w);
    rows += out.rows;
    p.images.push_back(std::move(out));
  }
  if (rows != slots) {
    return InvalidArgumentError("the prompt has " + std::to_string(slots) + " image rows but its images fill " +
                                std::to_string(rows));
  }
  for (int64_t t : s.getPenaltyContext()) p.penalty_context.push_back(t);
  if (p.penalty_context.empty()) p.penalty_context = {edge->spec().llm.bos_id};
  return std::vector<PreparedPrompt>{std::move(p)};
}

void Coordinator::Impl::Admit() {
  if (state != ClusterState::kServing) return;
  int64_t active = 0;
  for (const auto& [id, s] : sequences) active += s.state == SeqState::kReady || s.state == SeqState::kInFlight;
  while (!queue.empty() && active < opt.max_sequences) {
    Sequence& seq = sequences.at(queue.front());
    if (seq.use_prefix && !prefix.ready) {
      // The shared head's KV is not on the stages yet: its holder goes first (once per plan),
      // and sequences that copy from it wait for its prefill to complete.
      if (prefix.holder != 0) break;
      Sequence holder;
      holder.id = next_sequence++;
      holder.is_prefix = true;
      holder.prompt.ids = prefix.head;
      holder.prompt.im_mask.assign(prefix.head.size(), 0);
      holder.prompt.penalty_context = {edge->spec().llm.bos_id};
      holder.max_new = 1;
      holder.max_tokens = prefix.head.size();
      prefix.holder = holder.id;
      queue.push_front(holder.id);
      sequences.emplace(holder.id, std::move(holder));
      continue;
    }
    bool room = true;
    for (const auto& st : stages)
      if (st.kv_per_token > 0 && st.kv_reserved + seq.max_tokens * st.kv_per_token > st.kv_budget) room = false;
    if (!room) {
      bool fits_ever = true;
      for (const auto& st : stages)
        if (st.kv_per_token > 0 && seq.max_tokens * st.kv_per_token > st.kv_budget) fits_ever = false;
      if (!fits_ever && seq.is_prefix) {
        DropSharedPrefix("its " + std::to_string(seq.max_tokens) + " tokens do not fit a stage's KV cache");
        continue;
      }
      if (!fits_ever) {
        queue.pop_front();
        FailRequest(seq.request, ResourceExhaustedError("the prompt plus max_new_tokens (" + std::to_string(seq.max_tokens) +
                                                        " tokens) exceeds a stage's whole KV cache"));
        continue;
      }
      break;  // wait for room
    }
    queue.pop_front();
    for (auto& st : stages) st.kv_reserved += seq.max_tokens * st.kv_per_token;
    for (const auto& st : stages) {
      capnp::MallocMessageBuilder m;
      auto a = m.initRoot<proto::Envelope>().initAdmitSequence();
      a.setEpoch(epoch);
      a.setSequenceId(seq.id);
      a.setMaxTokens(static_cast<uint32_t>(seq.max_tokens));
      auto sp = a.initSampling();
      sp.setGreedy(seq.sampling.greedy);
      sp.setTemperature(seq.sampling.temperature);
      sp.setTopK(seq.sampling.top_k);
      sp.setTopP(seq.sampling.top_p);
      sp.setRepetitionPenalty(seq.sampling.repetition_penalty);
      sp.setSeed(seq.sampling.seed);
      sp.setMinNewTokens(static_cast<uint32_t>(seq.sampling.min_new_tokens));
      sp.setIgnoreEos(seq.sampling.ignore_eos);
      if (seq.sampling.min_new_tokens > static_cast<int64_t>(seq.generated.size())) {
        auto stops = a.initStopIds(static_cast<unsigned>(edge->stop_ids().size()));
        for (size_t j = 0; j < edge->stop_ids().size(); ++j) stops.set(static_cast<unsigned>(j), edge->stop_ids()[j]);
      }
      a.setGeneratedTokens(static_cast<uint32_t>(seq.generated.size()));
      a.setPrefillRows(static_cast<uint32_t>(seq.prompt.ids.size() + seq.generated.size()));
      auto ctx = a.initPenaltyContext(seq.prompt.penalty_context.size() + seq.generated.size());
      size_t k = 0;
      for (int64_t t : seq.prompt.penalty_context) ctx.set(k++, t);
      for (int64_t t : seq.generated) ctx.set(k++, t);
      if (seq.use_prefix) {
        a.setPrefixSequenceId(prefix.holder);
        a.setPrefixRows(static_cast<uint32_t>(prefix.head.size()));
      }
      Send(m, st.peer);
    }
    if (seq.use_prefix) {
      seq.cached = static_cast<int64_t>(prefix.head.size());
      ++prefix.hits;
      prefix.rows_saved += prefix.head.size();
    }
    seq.state = SeqState::kReady;
    seq.admitted_at = Clock::now();
    ++active;
  }
}

SeqState Coordinator::Impl::RemoveHolder(bool release_on_stages) {
  SeqState was = SeqState::kDone;
  if (prefix.holder == 0) return was;
  queue.erase(std::remove(queue.begin(), queue.end(), prefix.holder), queue.end());
  if (auto it = sequences.find(prefix.holder); it != sequences.end()) {
    was = it->second.state;
    if (release_on_stages && was != SeqState::kQueued) ReleaseOnStages(it->second);
    sequences.erase(it);
  }
  prefix.holder = 0;
  prefix.ready = false;
  return was;
}

void Coordinator::Impl::DropSharedPrefix(const std::string& why) {
  spdlog::error("shared prompt head turned off: {}", why);
  RemoveHolder(/*release_on_stages=*/true);
  prefix = SharedPrefix{};
  for (auto& [id, seq] : sequences)
    if (seq.state == SeqState::kQueued) seq.use_prefix = false;
}

void Coordinator::Impl::Schedule() {
  if (state != ClusterState::kServing || stages.empty()) return;
  std::vector<uint64_t> ready;
  int64_t active = 0;
  for (const auto& [id, s] : sequences) {
    if (s.state == SeqState::kReady) ready.push_back(id);
    active += s.state == SeqState::kReady || s.state == SeqState::kInFlight;
  }
  // Up to one micro-batch per stage in flight; each about active/stages sequences, so the
  // groups rotate through the pipeline and every stage has work.
  const size_t target = std::max<size_t>(1, (active + stages.size() - 1) / stages.size());
  // A prompt with more than prefill_chunk_rows left to prefill goes in pieces, one such prompt
  // at a time: the others wait until it is through (stage 0 keeps its image rows meanwhile).
  const int64_t piece = opt.prefill_chunk_rows;
  uint64_t in_pieces = 0;
  for (const auto& [id, s] : sequences)
    if (s.in_pieces) in_pieces = id;
  size_t next = 0;
  while (next < ready.size() && in_flight.size() < stages.size()) {
    std::vector<uint64_t> members;
    std::vector<std::pair<uint64_t, int64_t>> member_rows;
    int64_t rows = 0;
    while (next < ready.size() && members.size() < target) {
      Sequence& s = sequences.at(ready[next]);
      int64_t r = static_cast<int64_t>(s.prompt.ids.size() + s.generated.size()) - s.cached;
      if (piece > 0 && r > piece) {
        if (in_pieces != 0 && in_pieces != s.id) {  // another long prompt goes first
          ++next;
          continue;
        }
        r = piece;
        in_pieces = s.id;
        s.in_pieces = true;
      }
      if (!members.empty() && rows + r > StepRowLimit(edge->spec())) break;
      members.push_back(ready[next++]);
      member_rows.emplace_back(s.id, r);
      rows += r;
    }
    if (members.empty()) break;
    capnp::MallocMessageBuilder m;
    auto f = m.initRoot<proto::Envelope>().initForward();
    const uint64_t mb = next_micro_batch++;
    f.setEpoch(epoch);
    f.setMicroBatchId(mb);
    f.setStep(++step_counter);
    auto segs = f.initSegments(members.size());
    auto ids = f.initTokenIds(rows);
    std::vector<uint8_t> mask(rows, 0);
    std::vector<const PreparedImage*> images;
    int64_t row = 0;
    for (size_t i = 0; i < members.size(); ++i) {
      Sequence& s = sequences.at(members[i]);
      // Every position not in the stages' caches yet (or the next piece of them): a prompt
      // (after the shared head when it was copied) and, for a replayed sequence, every token it
      // already generated; in decode, the last token.
      const auto prompt_len = static_cast<int64_t>(s.prompt.ids.size());
      const int64_t r = member_rows[i].second;
      segs[i].setSequenceId(s.id);
      segs[i].setRows(static_cast<uint32_t>(r));
      segs[i].setStartPos(static_cast<uint32_t>(s.cached));
      for (int64_t p = s.cached; p < s.cached + r; ++p, ++row) {
        if (p < prompt_len) {
          ids.set(row, s.prompt.ids[p]);
          mask[row] = s.prompt.im_mask[p];
        } else {
          ids.set(row, s.generated[p - prompt_len]);
        }
      }
      // Each image goes with the step that holds its first row; stage 0 encodes it then and
      // keeps its rows for the pieces that follow.
      if (s.cached < prompt_len && !s.prompt.images.empty()) {
        const std::vector<int64_t> first = ImageFirstRows(s.prompt);
        for (size_t k = 0; k < first.size(); ++k)
          if (first[k] >= s.cached && first[k] < s.cached + r) images.push_back(&s.prompt.images[k]);
      }
      s.state = SeqState::kInFlight;
    }
    f.setImMask(kj::arrayPtr(mask.data(), mask.size()));
    bool want_logits = false;
    for (uint64_t id : members) want_logits |= sequences.at(id).want_logits;
    f.setWantLogits(want_logits);
    auto imgs = f.initImages(images.size());
    for (size_t i = 0; i < images.size(); ++i) {
      imgs[i].setChannels(static_cast<uint32_t>(images[i]->channels));
      imgs[i].setHeight(static_cast<uint32_t>(images[i]->height));
      imgs[i].setWidth(static_cast<uint32_t>(images[i]->width));
      imgs[i].setGridH(static_cast<uint32_t>(images[i]->grid_h));
      imgs[i].setGridW(static_cast<uint32_t>(images[i]->grid_w));
      imgs[i].setPixels(kj::arrayPtr(reinterpret_cast<const kj::byte*>(images[i]->pixels.data()),
                                     images[i]->pixels.size() * sizeof(float)));
    }
    in_flight[mb] = member_rows;
    const auto sent = Clock::now();
    step_deadlines[mb] = {sent, sent + kStepDeadline};
    Send(m, stages[0].peer);
  }
}

void Coordinator::Impl::SendAccepted(const std::string& peer, uint64_t client_id, uint32_t prompt_index,
                                     uint32_t offset, size_t prompt_count) {
  capnp::MallocMessageBuilder m;
  auto e = m.initRoot<proto::Envelope>().initTokenEvent();
  e.setRequestId(client_id);
  e.setPromptIndex(prompt_index);
  e.setOffset(offset);
  e.setPromptCount(static_cast<uint32_t>(prompt_count));
  e.setAccepted(true);
  (void)socket->Send(m, peer, 0ms);
}

void Coordinator::Impl::SendFinal(const std::string& peer, uint64_t client_id, const FinalEvent& f,
                                  size_t prompt_count) {
  capnp::MallocMessageBuilder m;
  auto e = m.initRoot<proto::Envelope>().initTokenEvent();
  e.setRequestId(client_id);
  e.setPromptIndex(f.prompt_index);
  e.setPromptCount(static_cast<uint32_t>(prompt_count));
  e.setOffset(static_cast<uint32_t>(f.tokens.size()));
  e.setDone(true);
  e.setFinishReason(f.finish_reason);
  if (!f.error.empty()) e.setError(f.error);
  auto all = e.initAllTokens(f.tokens.size());
  for (size_t i = 0; i < f.tokens.size(); ++i) all.set(i, f.tokens[i]);
  e.setAllText(f.text);
  e.setPromptTokens(f.prompt_tokens);
  (void)socket->Send(m, peer, 0ms);
}

bool Coordinator::Impl::AnswerRepeatedSubmit(const std::string& peer, uint64_t client_id) {
  for (const auto& [rid, r] : requests) {
    if (r.peer != peer || r.client_id != client_id) continue;
    for (const FinalEvent& f : r.finals) SendFinal(peer, client_id, f, r.sequences.size());
    for (uint64_t id : r.sequences) {
      auto sit = sequences.find(id);
      if (sit == sequences.end() || sit->second.state == SeqState::kDone) continue;
      SendAccepted(peer, client_id, sit->second.prompt_index, static_cast<uint32_t>(sit->second.generated.size()),
                   r.sequences.size());
    }
    spdlog::info("request {}: submit repeated by its client; answered with its progress", rid);
    return true;
  }
  auto f = finished.find({peer, client_id});
  if (f == finished.end()) return false;
  for (const FinalEvent& e : f->second) SendFinal(peer, client_id, e, f->second.size());
  spdlog::info("client {} #{}: submit repeated after the request finished; final events sent again", peer, client_id);
  return true;
}

void Coordinator::Impl::StreamTokens(Sequence& seq, const std::vector<int64_t>& tokens, bool done,
                                     const std::string& finish, kj::ArrayPtr<const kj::byte> logits) {
  auto rit = requests.find(seq.request);
  if (rit == requests.end()) return;
  capnp::MallocMessageBuilder m;
  auto e = m.initRoot<proto::Envelope>().initTokenEvent();
  e.setRequestId(rit->second.client_id);
  e.setPromptIndex(seq.prompt_index);
  auto t = e.initTokens(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) t.set(i, tokens[i]);
  e.setOffset(static_cast<uint32_t>(seq.generated.size() - std::min(seq.generated.size(), tokens.size())));
  e.setPromptCount(static_cast<uint32_t>(rit->second.sequences.size()));
  auto text = edge->DecodeResponse(seq.generated);
  if (done) {
    FinalEvent f;
    f.prompt_index = seq.prompt_index;
    f.tokens = seq.generated;
    f.text = text.ok() ? *text : std::string();
    f.finish_reason = finish;
    f.prompt_tokens = static_cast<uint32_t>(seq.prompt.ids.size());
    auto all = e.initAllTokens(f.tokens.size());
    for (size_t i = 0; i < f.tokens.size(); ++i) all.set(i, f.tokens[i]);
    e.setAllText(f.text);
    rit->second.finals.push_back(std::move(f));
  }
  if (text.ok()) {
    // Stream only whole UTF-8 characters: hold back a trailing partial sequence.
    size_t end = text->size();
    if (!done) {
      size_t k = end;
      while (k > 0 && (static_cast<unsigned char>((*text)[k - 1]) & 0xC0) == 0x80) --k;
      if (k > 0 && static_cast<unsigned char>((*text)[k - 1]) >= 0xC0) end = k - 1;
    }
    if (end > seq.text_sent && text->compare(0, seq.text_sent, *text, 0, seq.text_sent) == 0) {
      e.setText(text->substr(seq.text_sent, end - seq.text_sent));
      seq.text_sent = end;
    }
  }
  if (seq.want_logits && logits.size() > 0) e.setLogits(logits);
  e.setDone(done);
  e.setFinishReason(finish);
  e.setPromptTokens(static_cast<uint32_t>(seq.prompt.ids.size()));
  e.setTtftMicros(static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - seq.admitted_at).count()));
  if (!seq.first_token_at && !tokens.empty()) {
    seq.first_token_at = Clock::now();
    live.ttft_seconds.Observe(std::chrono::duration<double>(*seq.first_token_at - rit->second.received).count());
  }
  // Never block the actor on a client: one that is gone, or that stopped reading until its
  // queue reached the high-water mark, loses its own request and nobody else's time.
  if (Status st = socket->Send(m, rit->second.peer, 0ms); !st.ok()) {
    spdlog::info("client {} unreachable ({}): cancelling request {}", rit->second.peer, st.message(), seq.request);
    FailRequest(seq.request, CancelledError("client disconnected or not reading"));
  }
}

void Coordinator::Impl::ReleaseOnStages(const Sequence& seq) {
  for (auto& st : stages) {
    st.kv_reserved -= std::min(st.kv_reserved, seq.max_tokens * st.kv_per_token);
    capnp::MallocMessageBuilder m;
    auto r = m.initRoot<proto::Envelope>().initReleaseSequences();
    r.setEpoch(epoch);
    r.initSequenceIds(1).set(0, seq.id);
    Send(m, st.peer);
  }
}

void Coordinator::Impl::FinishSequence(Sequence& seq, const std::string& reason) {
  seq.state = SeqState::kDone;
  if (seq.first_token_at && seq.generated.size() > 1) {
    const double s = std::chrono::duration<double>(Clock::now() - *seq.first_token_at).count();
    if (s > 0) live.tokens_per_second.Observe(static_cast<double>(seq.generated.size() - 1) / s);
  }
  ReleaseOnStages(seq);
  auto rit = requests.find(seq.request);
  if (rit != requests.end() && ++rit->second.done == rit->second.sequences.size()) {
    ++completed;
    spdlog::info("request {} completed ({})", seq.request, reason);
    RememberFinished(rit->second);
    for (uint64_t id : rit->second.sequences) sequences.erase(id);
    requests.erase(rit);
  }
}

void Coordinator::Impl::FailRequest(uint64_t request_id, const Status& reason) {
  auto rit = requests.find(request_id);
  if (rit == requests.end()) return;
  ++failed;
  ++live.failed_by_reason[std::string(StatusCodeName(reason.code()))];
  spdlog::warn("request {} failed: {}", request_id, reason.ToString());
  for (uint64_t id : rit->second.sequences) {
    auto sit = sequences.find(id);
    if (sit == sequences.end()) continue;
    Sequence& seq = sit->second;
    if (seq.state != SeqState::kQueued && seq.state != SeqState::kDone) ReleaseOnStages(seq);
    queue.erase(std::remove(queue.begin(), queue.end(), id), queue.end());
    for (auto& [mb, members] : in_flight) {
      members.erase(std::remove_if(members.begin(), members.end(), [id](const auto& m) { return m.first == id; }),
                    members.end());
    }
    if (reason.code() != StatusCode::kCancelled && seq.state != SeqState::kDone) {
      capnp::MallocMessageBuilder m;
      auto e = m.initRoot<proto::Envelope>().initTokenEvent();
      e.setRequestId(rit->second.client_id);
      e.setPromptIndex(seq.prompt_index);
      e.setDone(true);
      e.setFinishReason(std::string(StatusCodeName(reason.code())));
      e.setError(reason.message());
      e.setPromptCount(static_cast<uint32_t>(rit->second.sequences.size()));
      (void)socket->Send(m, rit->second.peer, 0ms);
      FinalEvent f;
      f.prompt_index = seq.prompt_index;
      f.tokens = seq.generated;
      f.finish_reason = std::string(StatusCodeName(reason.code()));
      f.error = reason.message();
      rit->second.finals.push_back(std::move(f));
    }
    sequences.erase(sit);
  }
  if (reason.code() != StatusCode::kCancelled) RememberFinished(rit->second);
  requests.erase(rit);
}

void Coordinator::Impl::OnStepResult(proto::StepResult::Reader r) {
  auto mb = in_flight.find(r.getMicroBatchId());
  if (r.getEpoch() != epoch || mb == in_flight.end()) return;  // stale or cancelled
  std::map<uint64_t, int64_t> rows_of(mb->second.begin(), mb->second.end());
  if (auto sent = step_deadlines.find(mb->first); sent != step_deadlines.end()) {
    live.step_round_trip_seconds.Observe(std::chrono::duration<double>(Clock::now() - sent->second.sent).count());
    uint64_t micros = 0;
    for (uint32_t m : r.getStageMicros()) micros += m;
    live.step_compute_seconds += static_cast<double>(micros) * 1e-6;
  }
  step_deadlines.erase(mb->first);
  in_flight.erase(mb);
  if (recovering) {
    recovering = false;
    last_recover_ms = std::chrono::duration<double, std::milli>(Clock::now() - fault_detected_at).count();
    spdlog::info("recovered: first step of epoch {} completed {:.0f} ms after the fault was detected", epoch,
                 last_recover_ms);
  }
  auto ids = r.getSequenceIds();
  auto tokens = r.getTokens();
  for (size_t i = 0; i < ids.size() && i < tokens.size(); ++i) {
    auto it = sequences.find(ids[i]);
    if (it == sequences.end()) continue;
    Sequence& seq = it->second;
    const int64_t token = tokens[i];
    auto rows = rows_of.find(seq.id);
    if (rows == rows_of.end()) continue;  // not in this micro-batch (stale)
    seq.cached += rows->second;
    if (seq.cached < static_cast<int64_t>(seq.prompt.ids.size() + seq.generated.size())) {
      seq.state = SeqState::kReady;  // a piece of a long prompt: the next piece follows; no token yet
      continue;
    }
    seq.in_pieces = false;
    if (seq.is_prefix) {  // the shared head is on every stage now; its token is not wanted
      seq.state = SeqState::kHeld;
      prefix.ready = true;
      spdlog::info("shared prompt head of {} tokens computed; prompts that start with it copy its KV", seq.cached);
      continue;
    }
    seq.generated.push_back(token);
    const std::string_view finish = FinishReasonAfter(seq.generated, seq.max_new, edge->stop_ids(), seq.sampling);
    const bool done = !finish.empty();
    const uint64_t request = seq.request;
    kj::ArrayPtr<const kj::byte> row;
    const size_t vocab_bytes = static_cast<size_t>(edge->spec().llm.vocab) * sizeof(float);
    if (r.hasLogits() && r.getLogits().size() >= (i + 1) * vocab_bytes) {
      row = r.getLogits().slice(i * vocab_bytes, (i + 1) * vocab_bytes);
    }
    StreamTokens(seq, {token}, done, std::string(finish), row);
    if (!requests.count(request)) continue;  // the client went away
    if (done) FinishSequence(seq, std::string(finish));
    else seq.state = SeqState::kReady;
  }
}

void Coordinator::Impl::OnWorkerError(const std::string& peer, proto::Error::Reader e) {
  const Status st(wire::FromWire(e.getCode()), e.getMessage().cStr());
  auto w = workers.find(peer);
  const std::string who = w != workers.end() ? w->second.id : peer;
  spdlog::error("worker {}: {}", who, st.ToString());
  if (state == ClusterState::kLoading && w != workers.end() && w->second.state == WorkerState::kLoading) {
    if (!planned_once_served) {
      spdlog::error("stage {} could not load; stopping", w->second.stage);
      exit_code = ExitCodeFor(st);  // a corrupt checkpoint exits 4: no restart loop under systemd
      stop.store(true);
      return;
    }
    // During recovery a neighbour may be dead but not yet detected: plan again (the dead one
    // drops out when its heartbeats stop).
    Recover("stage " + std::to_string(w->second.stage) + " could not start: " + st.message());
    return;
  }
  // A step that broke in the pipeline (a neighbour unreachable, a hand-off cut short) is a
  // fault, not the requests' fault: re-plan and replay them. Other errors fail the requests of
  // the micro-batch with the stated reason.
  auto mb = in_flight.find(e.getRequestId());
  if (mb != in_flight.end() && state == ClusterState::kServing &&
      (st.code() == StatusCode::kAborted || st.code() == StatusCode::kUnavailable ||
       st.code() == StatusCode::kDeadlineExceeded)) {
    Recover("a step failed on worker " + who + ": " + st.message());
    return;
  }
  if (mb != in_flight.end()) {
    std::set<uint64_t> reqs;
    for (const auto& [id, rows] : mb->second) {
      if (id == prefix.holder && prefix.holder != 0) DropSharedPrefix("its step failed on worker " + who + ": " + st.message());
      if (sequences.count(id)) reqs.insert(sequences.at(id).request);
    }
    step_deadlines.erase(mb->first);
    in_flight.erase(mb);
    for (uint64_t r : reqs) FailRequest(r, st.WithContext("worker " + who));
  }
}

MetricsSnapshot Coordinator::Impl::Snapshot() const {
  MetricsSnapshot snap = live;
  snap.state = ClusterStateName(state);
  snap.serving = state == ClusterState::kServing && !draining;
  snap.epoch = epoch;
  snap.queue_depth = static_cast<uint32_t>(queue.size());
  for (const auto& [id, seq] : sequences) snap.in_flight += seq.state == SeqState::kReady || seq.state == SeqState::kInFlight;
  snap.faults = faults;
  snap.replays = replays;
  snap.prefix_hits = prefix.hits;
  snap.prefix_rows_saved = prefix.rows_saved;
  snap.prefix_head_tokens = prefix.ready ? static_cast<uint32_t>(prefix.head.size()) : 0;
  snap.completed = completed;
  const auto now = Clock::now();
  for (const auto& [peer_id, w] : workers) {  // in the order OnStatus lists them
    WorkerFigures f = w.figures;
    f.id = w.id;
    f.host = w.host;
    f.device = w.device;
    f.state = WorkerStateName(w.state);
    f.stage = w.stage;
    f.up = w.state != WorkerState::kLost;
    if (f.capacity_bytes == 0) f.capacity_bytes = w.memory;
    if (w.stage >= 0 && w.stage < static_cast<int>(stages.size())) {
      f.planned = PlannedCategories(stages[w.stage].predicted);
    } else {
      f.planned = {};
    }
    f.heartbeat_age_s = std::chrono::duration<double>(now - w.last_seen).count();
    snap.workers.push_back(std::move(f));
  }
  return snap;
}

void Coordinator::Impl::PublishMetrics() {
  const auto now = Clock::now();
  const bool serving = state == ClusterState::kServing && !draining;
  // Often enough for a scrape to see fresh figures; at once when readiness changes.
  if (now < next_publish && serving == published_serving) return;
  next_publish = now + 200ms;
  published_serving = serving;
  board->Publish(std::make_shared<const MetricsSnapshot>(Snapshot()));
}

void Coordinator::Impl::OnStatus(const std::string& peer) {
  const MetricsSnapshot snap = Snapshot();
  capnp::MallocMessageBuilder m;
  auto r = m.initRoot<proto::Envelope>().initStatusReply();
  FillRequestMonitoring(snap, r);
  if (metrics_http) r.setMetricsAddress(metrics_http->address());
  r.setEpoch(epoch);
  r.setState(ClusterStateName(state));
  r.setModel(opt.model_dir.string());
  r.setStages(static_cast<uint32_t>(stages.size()));
  r.setQueueDepth(static_cast<uint32_t>(queue.size()));
  uint32_t inflight = 0;
  for (const auto& [id, s] : sequences) inflight += s.state == SeqState::kReady || s.state == SeqState::kInFlight;
  r.setInFlight(inflight);
  r.setCompleted(completed);
  r.setFailed(failed);
  r.setFaults(static_cast<uint32_t>(faults));
  r.setReplays(replays);
  r.setRebalances(rebalances);
  r.setLastRebalance(last_rebalance);
  r.setDataPlane(planned_once ? data_plane.kind : "");
  r.setDtype(planned_once ? plan_dtype : "");
  r.setDataPlaneReason(planned_once ? data_plane.reason : "");
  r.setLastDetectMs(last_detect_ms);
  r.setLastRecoverMs(last_recover_ms);
  auto list = r.initWorkers(workers.size());
  size_t i = 0;
  const auto now = Clock::now();
  for (const auto& [peer_id, w] : workers) {
    auto x = list[i++];
    x.setWorkerId(w.id);
    x.setHost(w.host);
    x.setPid(w.pid);
    x.setDevice(w.device);
    x.setDtype(w.dtype);
    x.setKernels(w.kernels);
    x.setState(WorkerStateName(w.state));
    x.setStageIndex(w.stage);
    x.setPlannedBytes(w.planned);
    x.setUsedBytes(w.resident);
    if (w.stage >= 0 && w.stage < static_cast<int>(stages.size())) {
      const auto& st = stages[w.stage];
      x.setBlocks(std::to_string(st.first) + ".." + std::to_string(st.end - 1));
      x.setPredictedStepMs(st.predicted_step_ms);
      x.setWeightsKept(w.weights_kept);
    }
    x.setStepsCompleted(w.steps);
    x.setLastHeartbeatMsAgo(static_cast<uint32_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(now - w.last_seen).count()));
    x.setMemoryBytes(w.memory);
    FillWorkerMonitoring(snap.workers.at(i - 1), x);
  }
  Send(m, peer);
}

void Coordinator::Impl::Dispatch(const std::string& peer, const proto::Envelope::Reader& env) {
  auto w = workers.find(peer);
  if (w != workers.end()) w->second.last_seen = Clock::now();
  if (w == workers.end()) {
    // A worker's compute watchdog: its heartbeats keep the worker alive through a long step,
    // its error says the step is stuck (the worker cannot say so itself).
    const std::string_view suffix = control::ControlTimings::kWatchdogIdentitySuffix;
    if (peer.size() > suffix.size() && peer.compare(peer.size() - suffix.size(), suffix.size(), suffix) == 0) {
      auto owner = workers.find(peer.substr(0, peer.size() - suffix.size()));
      if (owner == workers.end() || owner->second.state == WorkerState::kLost) return;
      if (env.which() == proto::Envelope::HEARTBEAT) {
        owner->second.last_seen = Clock::now();
        ExtendStepDeadline(env.getHeartbeat().getMicroBatch());
      } else if (env.which() == proto::Envelope::ERROR) {
        WorkerInfo& stuck = owner->second;
        spdlog::error("worker {} (stage {}): {}", stuck.id, stuck.stage, env.getError().getMessage().cStr());
        stuck.state = WorkerState::kLost;
        workers_changed = true;
        // detect_ms: from the step's last progress to this report.
        stuck.last_seen = Clock::now() - std::chrono::milliseconds(env.getError().getStalledMs());
        if (stuck.stage >= 0) OnStageLost(stuck, env.getError().getMessage().cStr());
      }
      return;
    }
  }
  switch (env.which()) {
    case proto::Envelope::HELLO: return OnHello(peer, env.getHello());
    case proto::Envelope::HEARTBEAT:
      if (w != workers.end()) {
        w->second.steps = env.getHeartbeat().getStepsCompleted();
        ExtendStepDeadline(env.getHeartbeat().getMicroBatch());
        w->second.resident = env.getHeartbeat().getResidentBytes();
        if (env.getHeartbeat().hasResources()) {
          UpdateFromHeartbeat(env.getHeartbeat().getResources(), w->second.steps, w->second.figures);
        }
      }
      return;
    case proto::Envelope::LOAD_PROGRESS:
      if (w != workers.end()) {
        w->second.load_done = env.getLoadProgress().getBytesDone();
        w->second.load_total = env.getLoadProgress().getBytesTotal();
        if (w->second.stage >= 0 && static_cast<size_t>(w->second.stage) < stages.size()) {
          stages[w->second.stage].last_load_news = Clock::now();
        }
        spdlog::info("stage {} loading: {} / {} MiB", w->second.stage, w->second.load_done >> 20,
                     w->second.load_total >> 20);
      }
      return;
    case proto::Envelope::STAGE_READY: {
      auto r = env.getStageReady();
      if (w == workers.end() || r.getEpoch() != epoch || r.getStageIndex() >= stages.size()) return;
      auto& st = stages[r.getStageIndex()];
      st.ready = true;
      st.kv_per_token = r.getKvBytesPerToken();
      st.weight_bytes = r.getWeightBytes();
      w->second.state = WorkerState::kReady;
      w->second.resident = r.getResidentBytes();
      w->second.weights_kept = r.getWeightsKept();
      w->second.dtype = r.getDtype().cStr();
      spdlog::info("stage {} ready in {} ms ({} MiB weights, {}, {} on {})", r.getStageIndex(), r.getLoadMs(),
                   st.weight_bytes >> 20, r.getWeightsKept() ? "kept" : "loaded", r.getDtype().cStr(),
                   r.getDevice().cStr());
      if (std::all_of(stages.begin(), stages.end(), [](const StageInfo& s) { return s.ready; })) {
        state = ClusterState::kServing;
        planned_once_served = true;
        for (const auto& s : stages) workers[s.peer].state = WorkerState::kServing;
        spdlog::info("serving on {}", bound);
        PublishMetrics();  // /readyz says ready before anyone is told so
        if (opt.on_ready) opt.on_ready(bound);
      }
      return;
    }
    case proto::Envelope::STEP_RESULT: return OnStepResult(env.getStepResult());
    case proto::Envelope::ERROR:
      if (w != workers.end()) return OnWorkerError(peer, env.getError());
      return;
    case proto::Envelope::SUBMIT:
      // A client that said hello to a previous coordinator (this one restarted) goes on
      // submitting on the same connection: the submit itself introduces it.
      if (!clients.count(peer)) {
        if (workers.count(peer)) {
          return SendError(peer, FailedPreconditionError("workers may not submit requests"),
                           env.getSubmit().getRequestId());
        }
        clients.insert(peer);
      }
      if (draining || (state != ClusterState::kServing && (!planned_once || capacity_lost))) {
        ++live.submitted;
        ++live.refused_by_reason["Unavailable"];
        capnp::MallocMessageBuilder m;
        auto e = m.initRoot<proto::Envelope>().initTokenEvent();
        e.setRequestId(env.getSubmit().getRequestId());
        e.setDone(true);
        e.setFinishReason("Unavailable");
        e.setError(draining ? std::string("the coordinator is shutting down; submit to another cluster or retry later")
                   : capacity_lost ? std::string("the cluster lost a stage and the remaining workers cannot hold the model; "
                                               "retry when a worker has been restarted")
                                 : std::string("the cluster is not serving yet (") + ClusterStateName(state) +
                                       "); retry shortly");
        if (!draining) e.setRetryAfterMs(static_cast<uint32_t>(kRetryAfterWhenNotServing.count()));
        Send(m, peer);
        return;
      }
      return OnSubmit(peer, env.getSubmit());
    case proto::Envelope::STATUS_REQUEST: return OnStatus(peer);
    case proto::Envelope::WELCOME:
    case proto::Envelope::ASSIGN_STAGE:
    case proto::Envelope::ADMIT_SEQUENCE:
    case proto::Envelope::RELEASE_SEQUENCES:
    case proto::Envelope::FORWARD:
    case proto::Envelope::DRAIN:
    case proto::Envelope::SHUTDOWN:
    case proto::Envelope::TOKEN_EVENT:
    case proto::Envelope::STATUS_REPLY:
      return SendError(peer, InvalidArgumentError("a coordinator does not accept this message"), 0);
  }
  SendError(peer, InvalidArgumentError("unknown message type"), 0);
}

void Coordinator::Impl::Heartbeats() {
  const auto now = Clock::now();
  if (now < next_heartbeat) return;
  next_heartbeat = now + control::ControlTimings::kHeartbeatInterval;
  for (auto& [peer, w] : workers) {
    if (w.state == WorkerState::kLost) continue;
    if (now - w.last_seen > control::ControlTimings::kHeartbeatTimeout) {
      spdlog::error("worker {} (stage {}) lost: silent for {} ms", w.id, w.stage,
                    std::chrono::duration_cast<std::chrono::milliseconds>(now - w.last_seen).count());
      w.state = WorkerState::kLost;
      workers_changed = true;
      if (w.stage >= 0) OnStageLost(w, "silent for " + std::to_string(
          std::chrono::duration_cast<std::chrono::milliseconds>(now - w.last_seen).count()) + " ms");
      continue;
    }
    capnp::MallocMessageBuilder m;
    auto hb = m.initRoot<proto::Envelope>().initHeartbeat();
    hb.setEpoch(epoch);
    Send(m, peer);
  }
}

void Coordinator::Impl::CheckRequestDeadlines() {
  const auto now = Clock::now();
  if (now < next_request_deadline_check) return;
  next_request_deadline_check = now + 100ms;
  std::vector<uint64_t> late;
  for (const auto& [id, r] : requests)
    if (now > r.deadline) late.push_back(id);
  for (uint64_t id : late) {
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(now - requests.at(id).received).count();
    FailRequest(id, DeadlineExceededError("the request did not finish within its deadline (" + std::to_string(took) +
                                          " ms since it was received)"));
  }
}

void Coordinator::Impl::CheckStepDeadlines() {
  if (state != ClusterState::kServing || step_deadlines.empty()) return;
  const auto now = Clock::now();
  for (const auto& [mb, times] : step_deadlines) {
    if (now < times.deadline) continue;
    ++faults;
    fault_detected_at = now;
    last_detect_ms = std::chrono::duration<double, std::milli>(now - times.sent).count();
    Recover("micro-batch " + std::to_string(mb) + " did not come back by its deadline (a message lost or a stage stuck)");
    return;  // Recover cleared every deadline
  }
}

void Coordinator::Impl::OnStageLost(WorkerInfo& lost, const std::string& why) {
  ++faults;
  fault_detected_at = Clock::now();
  last_detect_ms = std::chrono::duration<double, std::milli>(fault_detected_at - lost.last_seen).count();
  spdlog::error("stage {} (worker {}) lost ({}): re-planning on the remaining workers and replaying", lost.stage,
                lost.id, why);
  lost.stage = -1;
  Recover(why);
}

void Coordinator::Impl::Recover(const std::string& why) { Replan(why, /*fault=*/true); }

void Coordinator::Impl::CheckRebalance() {
  if (!opt.rebalance || state != ClusterState::kServing || stages.size() < 2) return;
  const auto now = Clock::now();
  auto restart_window = [&] {
    window_base.clear();
    for (const auto& st : stages) window_base[st.peer] = workers[st.peer].figures;
    window_started = now;
  };
  if (window_base.empty()) return restart_window();
  if (now - window_started < opt.rebalance_window) return;
  // Per stage over the window: compute per step (what the pipeline waits for) and the time of
  // one decoder layer (what compares the workers: every decoder layer costs the same).
  std::vector<double> ms_per_step(stages.size(), 0), layer_us(stages.size(), 0);
  for (size_t i = 0; i < stages.size(); ++i) {
    const WorkerFigures& f = workers[stages[i].peer].figures;
    auto base = window_base.find(stages[i].peer);
    if (base == window_base.end()) return restart_window();
    const WorkerFigures& b = base->second;
    const uint64_t steps = f.steps_total - std::min(f.steps_total, b.steps_total);
    if (steps < kRebalanceMinSteps) return restart_window();  // not enough traffic to judge
    ms_per_step[i] = static_cast<double>(f.busy_micros_total - std::min(f.busy_micros_total, b.busy_micros_total)) /
                     1000.0 / static_cast<double>(steps);
    const uint64_t layers = f.decoder_layers_timed - std::min(f.decoder_layers_timed, b.decoder_layers_timed);
    if (layers > 0) {
      layer_us[i] = static_cast<double>(f.decoder_layer_micros_total -
                                        std::min(f.decoder_layer_micros_total, b.decoder_layer_micros_total)) /
                    static_cast<double>(layers);
    }
  }
  const double mean = std::accumulate(ms_per_step.begin(), ms_per_step.end(), 0.0) / static_cast<double>(stages.size());
  const auto slowest_it = std::max_element(ms_per_step.begin(), ms_per_step.end());
  const double slowest = *slowest_it;
  if (mean < kRebalanceMinStepMs || slowest <= mean * (1.0 + opt.rebalance_threshold)) return restart_window();
  // Each worker's speed: its decoder-layer time against the median worker's (the unit).
  std::vector<double> measured;
  for (double us : layer_us)
    if (us > 0) measured.push_back(us);
  if (measured.size() < 2) return restart_window();
  std::nth_element(measured.begin(), measured.begin() + measured.size() / 2, measured.end());
  const double unit = measured[measured.size() / 2];
  bool changed = false;
  std::map<std::string, double> next = slowdown;
  for (size_t i = 0; i < stages.size(); ++i) {
    if (layer_us[i] <= 0) continue;  // holds no decoder layer: its speed was not measured
    const double sd = std::clamp(layer_us[i] / unit, 1.0 / kRebalanceMaxSlowdown, kRebalanceMaxSlowdown);
    const double before = slowdown.count(stages[i].peer) ? slowdown[stages[i].peer] : 1.0;
    if (std::abs(sd / before - 1.0) > kRebalanceSpeedChange) changed = true;
    next[stages[i].peer] = sd;
  }
  std::string before;
  for (size_t i = 0; i < stages.size(); ++i) {
    char line[200];
    std::snprintf(line, sizeof line, "%s%s [%zu, %zu) %.2f ms/step, %.0f us/layer (speed 1/%.2f)", i ? ", " : "",
                  workers[stages[i].peer].id.c_str(), stages[i].first, stages[i].end, ms_per_step[i], layer_us[i],
                  next.count(stages[i].peer) ? next[stages[i].peer] : 1.0);
    before += line;
  }
  if (!changed) {
    // The plan already uses these speeds: what imbalance is left is the granularity of blocks
    // or the cost model, which moving blocks again would not fix.
    spdlog::info("stages unbalanced ({:.0f}% above the mean) but the workers' speeds are as planned; keeping the plan: {}",
                 100.0 * (slowest / mean - 1.0), before);
    return restart_window();
  }
  slowdown = std::move(next);
  ++rebalances;
  char head[160];
  std::snprintf(head, sizeof head, "stage %zu at %.2f ms/step is %.0f%% above the mean %.2f ms; before: ",
                static_cast<size_t>(slowest_it - ms_per_step.begin()), slowest, 100.0 * (slowest / mean - 1.0), mean);
  last_rebalance = head + before;
  spdlog::warn("rebalancing: {}", last_rebalance);
  rebalance_pending = true;
  Replan("rebalancing: measured stage times are unbalanced", /*fault=*/false);
}

void Coordinator::Impl::Replan(const std::string& why, bool fault) {
  if (fault && !recovering) fault_detected_at = Clock::now();
  if (fault) spdlog::warn("recovering: {}", why);
  window_base.clear();
  ++epoch;  // anything still in flight under the old epoch is ignored from now on
  workers_changed = true;
  // Every admitted sequence goes back to the front of the queue, keeping its generated tokens:
  // it will be re-admitted under the new plan and prefill its prompt plus those tokens.
  std::vector<uint64_t> replay;
  std::set<uint64_t> over_budget;  // requests whose sequences faults have replayed too often
  // The new plan starts with empty caches (no release messages needed): the shared head's
  // holder goes; the first admission that needs it makes a new one.
  const SeqState holder_was = RemoveHolder(/*release_on_stages=*/false);
  // The fault hit the head's prefill, which queued sequences wait for.
  const bool holder_knocked_back = holder_was == SeqState::kReady || holder_was == SeqState::kInFlight;
  for (auto& [id, seq] : sequences) {
    if (seq.state == SeqState::kReady || seq.state == SeqState::kInFlight) {
      seq.state = SeqState::kQueued;
      seq.cached = 0;
      seq.in_pieces = false;
      replay.push_back(id);
      if (fault && ++seq.fault_replays > kMaxFaultReplays) over_budget.insert(seq.request);
    } else if (seq.state == SeqState::kQueued && seq.use_prefix && holder_knocked_back) {
      // Its progress was the head's prefill: that counts against its budget too, or a fault
      // that repeats on the head would keep it waiting forever.
      if (fault && ++seq.fault_replays > kMaxFaultReplays) over_budget.insert(seq.request);
    }
  }
  replays += replay.size();
  for (auto it = replay.rbegin(); it != replay.rend(); ++it) queue.push_front(*it);
  in_flight.clear();
  step_deadlines.clear();
  stages.clear();
  for (auto& [peer, w] : workers) {
    if (w.state != WorkerState::kLost) {
      w.state = WorkerState::kIdle;
      w.stage = -1;
    }
  }
  state = ClusterState::kWaiting;
  if (fault) recovering = true;
  // The retry budget: a request that faults keep knocking back (a poison input, a flapping
  // worker) ends with the reason instead of cycling forever.
  for (uint64_t request : over_budget) {
    FailRequest(request, AbortedError("replayed after " + std::to_string(kMaxFaultReplays) +
                                      " faults; giving up on this request (last fault: " + why + ")"));
  }
}

Coordinator::Coordinator(CoordinatorOptions options) : impl_(std::make_unique<Impl>()) { impl_->opt = std::move(options); }
Coordinator::~Coordinator() = default;
void Coordinator::RequestStop() { impl_->stop.store(true); }

void Coordinator::RequestDrain() { impl_->drain_requested.store(true); }

std::string Coordinator::metrics_address() const {
  return impl_->metrics_http ? impl_->metrics_http->address() : std::string();
}

StatusOr<std::string> Coordinator::Bind() {
  Impl& s = *impl_;
  if (s.socket) return s.bound;
  std::filesystem::path tok = s.opt.tokenizer;
  if (tok.empty()) {
    auto found = FindTokenizer(s.opt.model_dir);
    if (!found.ok()) return found.status();
    tok = *found;
  }
  if (s.opt.data_plane != "auto" && s.opt.data_plane != "tcp" && s.opt.data_plane != "nccl") {
    return InvalidArgumentError("data plane '" + s.opt.data_plane + "' is unknown; expected auto, tcp or nccl");
  }
  if (!planner::ParseStrategy(s.opt.strategy)) {
    return InvalidArgumentError("strategy '" + s.opt.strategy + "' is unknown; expected balanced, even or greedy-memory");
  }
  if (s.opt.max_sequences < 1 || s.opt.max_context < 16) {
    return InvalidArgumentError("max_sequences must be >= 1 and max_context >= 16 (got " +
                                std::to_string(s.opt.max_sequences) + " and " + std::to_string(s.opt.max_context) + ")");
  }
  auto edge = RequestPreparer::Create(s.opt.model_dir, tok, s.opt.edge);
  if (!edge.ok()) return edge.status().WithContext("model " + s.opt.model_dir.string());
  s.edge = std::move(edge).value();
  if (s.opt.prefix_cache) {
    s.prefix.head = s.edge->shared_head();
    if (!s.prefix.head.empty()) {
      spdlog::info("shared prompt head: {} tokens of the chat template computed once per plan and copied", s.prefix.head.size());
    }
  }
  if (!s.opt.metrics_listen.empty() && !s.metrics_http) {
    s.board->Publish(std::make_shared<const MetricsSnapshot>(s.Snapshot()));
    auto http = MetricsHttpServer::Start(s.opt.metrics_listen, s.board);
    if (!http.ok()) return http.status().WithContext("--metrics-listen");
    s.metrics_http = std::move(http).value();
  }
  auto socket = control::ControlSocket::BindRouter(s.context, s.opt.listen, s.opt.allow_wildcard_bind, s.opt.curve);
  if (!socket.ok()) return socket.status();
  s.socket = std::move(socket).value();
  s.bound = s.socket->last_endpoint();
  if (s.opt.curve.enabled()) {
    spdlog::info("control: CURVE on {}: coordinator key {}..., {} allowed public key(s)", s.bound,
                 control::KeyFingerprint(s.opt.curve.public_key), s.opt.curve.allowed_keys.size());
  } else if (!control::IsLoopbackEndpoint(s.bound)) {
    spdlog::warn("control traffic on {} is unauthenticated and unencrypted: anyone who reaches it can submit "
                 "requests or pose as a worker; configure CURVE keys (--secret-key, --allow; see `xcpipe keys`)",
                 s.bound);
  }
  return s.bound;
}

int Coordinator::Run() {
  Impl& s = *impl_;
  auto bound = Bind();
  if (!bound.ok()) {
    spdlog::error("{}", bound.status().ToString());
    return ExitCodeFor(bound.status());
  }
  s.started = Clock::now();
  spdlog::info("coordinator listening on {} for {} worker(s); model {} ({})", s.bound, s.opt.expect_workers,
               s.opt.model_dir.string(), checkpoint::ArchName(s.edge->spec().arch));
  while (!s.stop.load()) {
    if (s.drain_requested.load() && !s.draining) {
      s.draining = true;
      s.drain_deadline = Clock::now() + s.opt.drain_timeout;
      spdlog::info("drain requested: draining ({} request(s) in progress, at most {} s)", s.requests.size(),
                   std::chrono::duration_cast<std::chrono::seconds>(s.opt.drain_timeout).count());
      if (s.opt.on_drain) s.opt.on_drain();
    }
    if (s.draining && (s.requests.empty() || Clock::now() > s.drain_deadline)) {
      if (!s.requests.empty()) spdlog::warn("drain: stopping with {} request(s) unfinished", s.requests.size());
      break;
    }
    if (s.opt.on_tick) s.opt.on_tick();
    auto in = s.socket->Receive(s.in_flight.empty() ? 50ms : 5ms);
    while (true) {
      if (!in.ok()) {
        spdlog::warn("{}", in.status().ToString());
      } else if (in->has_value()) {
        try {
          s.Dispatch((*in)->peer, (*in)->message->envelope());
        } catch (const std::exception& e) {
          s.SendError((*in)->peer, InternalError(std::string("coordinator: ") + e.what()), 0);
        }
      } else {
        break;
      }
      in = s.socket->Receive(0ms);
    }
    s.MaybePlan();
    s.Admit();
    s.Schedule();
    s.Heartbeats();
    s.CheckStepDeadlines();
    s.CheckRequestDeadlines();
    s.CheckRebalance();
    s.ResendLostAssignments();
    s.PublishMetrics();
  }
  spdlog::info("coordinator stopping: telling {} worker(s) to shut down", s.workers.size());
  for (auto& [peer, w] : s.workers) {
    if (w.state == WorkerState::kLost) continue;
    capnp::MallocMessageBuilder m;
    m.initRoot<proto::Envelope>().initShutdown().setReason("coordinator stopping");
    (void)s.socket->Send(m, peer, 200ms);
  }
  return s.exit_code;
}

}  // namespace xcpipe::coordinator
