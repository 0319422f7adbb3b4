// The cluster simulator (see sim.h).
//
// Why stand-in workers and not the real model: a seed must run in milliseconds so that
// thousands of fault schedules fit in minutes on two cores, and what is under test here is the
// coordinator's protocol logic (membership, epochs, admission, scheduling, replay, exactly-once
// delivery), not the numbers a stage computes. The real stage's compute, its KV cache and the
// real data plane are covered by the fault suite (tests/fault/, coordinator_fault_test) with
// real worker processes. The stand-in keeps everything of the worker the coordinator can
// observe: the control protocol, its epoch rule, its own KV accounting (refusing admissions
// over the budget, as StageModel::ReserveSequence does), steps that wait for their sequences'
// admission, hand-offs between stages, and a last stage whose token is a deterministic function
// of the sequence's tokens so far (a hash), so a greedy request's fault-free tokens are known.
// Its last stage also keeps what the real one keeps per sequence: a seeded request's draws (a
// hash of the tokens, the seed and the draw's index, which starts at the admission's
// generatedTokens, as a real sampler skips a replay's earlier draws), and the prefill rows
// before which a step samples nothing (a piece of a long prompt). Each stage copies the shared
// prompt head from its holder when an admission asks for it (StageModel::CopyPrefix) and
// refuses the admission when the holder does not hold that many rows.
//
// Per seed, besides the faults, the coordinator's serving features are drawn (from a generator
// of their own, so that adding them left every earlier seed's schedule as it was): the shared
// prompt head (half the seeds; then 60% of prompts start with it), prompts in pieces of 4..12
// rows (a third), and seeded sampling (30% of requests).
//
// One simulation step: every timer that is due fires (the processes' heartbeats, hellos,
// computes and resubmits, the coordinator's Poll, the fault schedule); then the seeded RNG
// picks one deliverable message (reordering) and delivers it. When nothing is deliverable,
// simulated time jumps to the next event.
//
// Invariants (checked after every run; each violation names the seed):
//   outcome     every submitted request reaches exactly one terminal outcome at its client
//               (completed, or failed with a stated reason), unless the client disconnected,
//               and a failure's reason is one a fault explains (Unavailable, Aborted,
//               DeadlineExceeded, ResourceExhausted, Cancelled);
//   once        one coordinator runs a request as one sequence, however often it is submitted;
//   tokens      tokens a client received never change (two events disagreeing about a
//               position) and a done event's allTokens extends what was streamed;
//   greedy      a completed request (greedy, or sampled with a seed) has the tokens of the
//               fault-free run;
//   epochs      one epoch number names one plan (no assignment reuses an epoch for a
//               different stage layout), and a worker never accepts an older epoch;
//   dead        no forward or admitSequence is sent to a worker the coordinator declared lost;
//   kv          KV reservations on every worker holding a stage of the current plan are back
//               to zero once the cluster is idle (the shared head's holder excepted: it keeps
//               the head's rows by design);
//   progress    in a run that loses nothing and kills, pauses or restarts nothing (reordering,
//               duplicates, delays and slow stages only), every request completes;
//   quiesce     every run is idle before its simulated deadline.
#include "sim.h"

#include <capnp/message.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <sstream>

#include "xcpipe/base/clock.h"
#include "xcpipe/control/transport.h"
#include "xcpipe/coordinator/coordinator.h"
#include "xcpipe/coordinator/edge.h"
#include "xcpipe/schemas/wire.h"

namespace xcpipe::sim {
namespace {

using namespace std::chrono_literals;
using TimePoint = Clock::time_point;
using Ms = std::chrono::milliseconds;
using Us = std::chrono::microseconds;

constexpr const char* kCoordinator = "sim://coordinator";
constexpr uint64_t kKvPerToken = 1024;     // every stand-in stage's KV bytes per token
constexpr uint64_t kKvBudgetTokens = 160;  // tokens of KV room per stage
constexpr Ms kHeartbeat = 250ms;
constexpr Ms kSilence = 2500ms;
constexpr Ms kSettle = 4000ms;          // idle time after the last outcome before checking
constexpr Ms kClientTimeout = 90000ms;  // Submit.deadlineMs

// The model facts the stand-ins and the expected tokens need, read once per process.
struct ModelFacts {
  std::vector<int64_t> stop_ids;
  int64_t vocab = 0;
  std::vector<int64_t> shared_head;  // the chat template's head (RequestPreparer::shared_head)
};

const ModelFacts& Facts(const std::filesystem::path& model_dir) {
  static std::map<std::filesystem::path, ModelFacts> cache;
  auto it = cache.find(model_dir);
  if (it != cache.end()) return it->second;
  ModelFacts f;
  auto tok = coordinator::FindTokenizer(model_dir);
  if (tok.ok()) {
    auto edge = coordinator::RequestPreparer::Create(model_dir, *tok, {});
    if (edge.ok()) {
      f.stop_ids = (*edge)->stop_ids();
      f.vocab = (*edge)->spec().llm.vocab;
      f.shared_head = (*edge)->shared_head();
    }
  }
  return cache.emplace(model_dir, f).first->second;
}

// The stand-in's "model": the next token after `history`.
int64_t NextToken(const std::vector<int64_t>& history, const ModelFacts& facts) {
  uint64_t h = 1469598103934665603ull;
  for (int64_t t : history) {
    h ^= static_cast<uint64_t>(t);
    h *= 1099511628211ull;
    h ^= h >> 29;
  }
  if (h % 5 == 0 && !facts.stop_ids.empty()) return facts.stop_ids[0];
  const int64_t range = std::max<int64_t>(1000, facts.vocab - 200);
  return 100 + static_cast<int64_t>((h >> 8) % static_cast<uint64_t>(range));
}

// The stand-in's sampler: a seeded request's `draw`-th sampled token after `history`. It
// depends on the draw count, as a real seeded sampler's random stream does: a replay that
// did not skip the draws of its earlier tokens (AdmitSequence.generatedTokens) gives other
// tokens.
int64_t SampledToken(const std::vector<int64_t>& history, uint64_t seed, uint64_t draw, const ModelFacts& facts) {
  std::vector<int64_t> salted = history;
  salted.push_back(static_cast<int64_t>(seed % 1000003));
  salted.push_back(static_cast<int64_t>(draw));
  return NextToken(salted, facts);
}

// The fault-free tokens of a greedy request, or of a seeded sampled one (sampled_seed set).
std::vector<int64_t> ExpectedTokens(const std::vector<int64_t>& prompt, uint32_t max_new, const ModelFacts& facts,
                                    std::optional<uint64_t> sampled_seed = std::nullopt) {
  std::vector<int64_t> history = prompt, generated;
  coordinator::Sampling sampling;
  while (true) {
    const int64_t t =
        sampled_seed ? SampledToken(history, *sampled_seed, generated.size(), facts) : NextToken(history, facts);
    history.push_back(t);
    generated.push_back(t);
    if (!coordinator::FinishReasonAfter(generated, max_new, facts.stop_ids, sampling).empty()) break;
  }
  return generated;
}

std::string EnvelopeName(proto::Envelope::Which w) {
  switch (w) {
    case proto::Envelope::HELLO:
      return "hello";
    case proto::Envelope::WELCOME:
      return "welcome";
    case proto::Envelope::HEARTBEAT:
      return "heartbeat";
    case proto::Envelope::ERROR:
      return "error";
    case proto::Envelope::ASSIGN_STAGE:
      return "assignStage";
    case proto::Envelope::LOAD_PROGRESS:
      return "loadProgress";
    case proto::Envelope::STAGE_READY:
      return "stageReady";
    case proto::Envelope::ADMIT_SEQUENCE:
      return "admitSequence";
    case proto::Envelope::RELEASE_SEQUENCES:
      return "releaseSequences";
    case proto::Envelope::FORWARD:
      return "forward";
    case proto::Envelope::STEP_RESULT:
      return "stepResult";
    case proto::Envelope::DRAIN:
      return "drain";
    case proto::Envelope::SHUTDOWN:
      return "shutdown";
    case proto::Envelope::SUBMIT:
      return "submit";
    case proto::Envelope::TOKEN_EVENT:
      return "tokenEvent";
    case proto::Envelope::STATUS_REQUEST:
      return "statusRequest";
    case proto::Envelope::STATUS_REPLY:
      return "statusReply";
    case proto::Envelope::ENCODE_IMAGE:
      return "encodeImage";
    case proto::Envelope::IMAGE_ENCODED:
      return "imageEncoded";
  }
  return "?";
}

// One step's work as it travels the data plane (the real plane carries hidden states, which
// are a function of these token ids).
struct Segment {
  uint64_t sequence = 0;
  uint32_t rows = 0, start = 0;
};
struct Step {
  uint64_t epoch = 0, micro_batch = 0, step = 0;
  std::vector<Segment> segments;
  std::vector<int64_t> tokens;  // one per row, in segment order
};

struct Message {
  uint64_t serial = 0;
  std::string from, to;               // control: routing ids (kCoordinator for the coordinator); data: worker addresses
  std::string bytes;                  // control: an encoded Envelope
  std::shared_ptr<const Step> frame;  // data plane
  TimePoint at;                       // deliverable from
};

class Simulation;

// The coordinator's side of the simulated control plane.
class SimTransport final : public control::ControlTransport {
 public:
  explicit SimTransport(Simulation& sim) : sim_(sim) {}
  Status Send(capnp::MessageBuilder& message, const std::string& peer, std::chrono::milliseconds timeout) override;
  StatusOr<std::optional<control::Incoming>> Receive(std::chrono::milliseconds) override {
    if (inbox.empty()) return std::optional<control::Incoming>();
    control::Incoming in = std::move(inbox.front());
    inbox.pop_front();
    return std::optional<control::Incoming>(std::move(in));
  }
  std::string address() const override { return kCoordinator; }
  std::deque<control::Incoming> inbox;

 private:
  Simulation& sim_;
};

struct Worker {
  int index = 0;
  std::string id, peer;  // worker id; routing id of the current process
  int incarnation = 0;
  bool alive = true;
  TimePoint paused_until;
  double slow = 1.0;  // compute time factor
  // Process state (lost with the process).
  bool welcomed = false;
  uint64_t epoch = 0;  // the epoch it last accepted
  TimePoint last_from_coordinator, next_hello, next_heartbeat;
  std::optional<TimePoint> refused_since;
  uint64_t heartbeats = 0, steps = 0;
  bool assigned = false;
  uint64_t assigned_epoch = 0;
  uint32_t stage = 0, stage_count = 0, block_begin = 0, block_end = 0;
  std::string next_address;
  uint64_t kv_budget = 0, kv_reserved = 0;
  uint32_t kept_begin = UINT32_MAX, kept_end = UINT32_MAX;  // weights held
  std::optional<TimePoint> ready_at;                        // loading until then
  bool weights_kept = false;
  std::map<uint64_t, std::string> layouts;  // epoch -> the assignment it accepted under it
  // What a stage holds of one admitted sequence.
  struct Held {
    uint64_t bytes = 0;            // KV room reserved
    std::vector<int64_t> cached;   // tokens whose KV it holds
    uint32_t prefill_rows = 0;     // last stage: no token for a step ending before these rows
    bool greedy = true;            // last stage: its sampler
    uint64_t seed = 0, draws = 0;  // a sampled sequence's seed; draws skipped at admission
  };
  std::map<uint64_t, Held> seqs;
  std::deque<Step> pending;
  std::optional<Step> computing;
  TimePoint compute_done;
  std::string address() const { return "sim-data://" + id + "#" + std::to_string(incarnation); }
  bool paused(TimePoint now) const { return now < paused_until; }
};

struct ClientRequest {
  uint64_t id = 0;
  std::vector<int64_t> prompt;
  uint32_t max_new = 0;
  TimePoint submit_at, last_heard;
  bool submitted = false, accepted = false, done = false, abandoned = false, gap = false;
  std::optional<TimePoint> retry_at;
  int unavailable_retries = 0;
  std::vector<int64_t> have;
  std::string finish, error;
  std::vector<int64_t> final_tokens;
  std::optional<uint64_t> sampled_seed;  // a seeded sampled request; greedy when unset
};

struct Client {
  int index = 0;
  std::string peer;
  bool connected = true;
  std::optional<TimePoint> disconnect_at;
  std::vector<ClientRequest> requests;
};

class Simulation {
 public:
  explicit Simulation(const SimOptions& o) : opt_(o), rng_(o.seed), facts_(Facts(o.model_dir)) {}

  SimResult Run();

  // Called by SimTransport::Send on the coordinator's thread (inside Poll).
  Status CoordinatorSend(capnp::MessageBuilder& message, const std::string& peer) {
    if (!Connected(peer)) return NotFoundError("peer " + peer + " is not connected");
    auto env = message.getRoot<proto::Envelope>().asReader();
    const auto which = env.which();
    if (which == proto::Envelope::FORWARD || which == proto::Envelope::ADMIT_SEQUENCE) {
      const std::string state = coordinator_->worker_state(peer);
      if (state == "lost") {
        Violation("dead: " + EnvelopeName(which) + " sent to " + peer + ", which the coordinator declared lost");
      }
    }
    Post(kCoordinator, peer, wire::Encode(message));
    return OkStatus();
  }

 private:
  // ---- randomness ------------------------------------------------------------------------
  double Uniform() { return std::uniform_real_distribution<double>(0, 1)(rng_); }
  bool Chance(double p) { return Uniform() < p; }
  int64_t Between(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng_); }
  Ms BetweenMs(int64_t lo, int64_t hi) { return Ms(Between(lo, hi)); }

  TimePoint Now() const { return clock_.now(); }
  double SimSeconds() const { return std::chrono::duration<double>(Now() - start_).count(); }

  void Log(const std::string& line) {
    if (opt_.verbose) std::printf("[%9.3f] %s\n", SimSeconds(), line.c_str());
  }
  void Violation(const std::string& what) {
    std::ostringstream s;
    s << "seed " << opt_.seed << " t=" << SimSeconds() << "s: " << what;
    if (result_.violations.size() < 20) result_.violations.push_back(s.str());
    Log("VIOLATION " + what);
  }

  // ---- the network -------------------------------------------------------------------------
  bool Connected(const std::string& peer) const {
    for (const auto& w : workers_)
      if (w.alive && w.peer == peer) return true;
    for (const auto& c : clients_)
      if (c.connected && c.peer == peer) return true;
    return false;
  }

  void Post(const std::string& from, const std::string& to, std::string bytes,
            std::shared_ptr<const Step> frame = nullptr) {
    Message m;
    m.from = from;
    m.to = to;
    m.bytes = std::move(bytes);
    m.frame = std::move(frame);
    if (faults_ && Chance(loss_)) {
      ++result_.lost;
      return;
    }
    int copies = faults_ && Chance(duplicate_) ? 2 : 1;
    if (copies == 2) ++result_.duplicated;
    for (int i = 0; i < copies; ++i) {
      Message c = m;
      c.serial = next_serial_++;
      Us latency(Between(50, 1500));
      if (faults_ && Chance(delay_)) latency += BetweenMs(5, max_delay_ms_);
      c.at = Now() + latency;
      net_.push_back(std::move(c));
    }
  }

  void PostEnvelope(const std::string& from, const std::string& to,
                    const std::function<void(proto::Envelope::Builder)>& fill) {
    capnp::MallocMessageBuilder m;
    fill(m.initRoot<proto::Envelope>());
    Post(from, to, wire::Encode(m));
  }

  // Whether `m` can be delivered now, and whether it is to be dropped (its receiver is gone).
  enum class Fate { kWait, kDeliver, kDrop };
  Fate FateOf(const Message& m) {
    if (m.at > Now()) return Fate::kWait;
    if (m.frame) {
      for (const auto& w : workers_) {
        if (w.address() != m.to) continue;
        if (!w.alive) return Fate::kDrop;
        return w.paused(Now()) ? Fate::kWait : Fate::kDeliver;
      }
      return Fate::kDrop;
    }
    if (m.to == kCoordinator) return coordinator_ ? Fate::kDeliver : Fate::kWait;
    for (const auto& w : workers_) {
      if (w.peer != m.to) continue;
      if (!w.alive) return Fate::kDrop;
      return w.paused(Now()) ? Fate::kWait : Fate::kDeliver;
    }
    for (const auto& c : clients_)
      if (c.peer == m.to) return c.connected ? Fate::kDeliver : Fate::kDrop;
    return Fate::kDrop;
  }

  void Deliver(Message m) {
    ++result_.delivered;
    if (m.frame) {
      last_activity_ = Now();
      for (auto& w : workers_)
        if (w.address() == m.to) return OnFrame(w, *m.frame);
      return;
    }
    auto decoded = wire::Decode(std::as_bytes(std::span(m.bytes.data(), m.bytes.size())));
    if (!decoded.ok()) return Violation("undecodable message from " + m.from + ": " + decoded.status().ToString());
    switch ((*decoded)->envelope().which()) {
      case proto::Envelope::HEARTBEAT:
      case proto::Envelope::HELLO:
      case proto::Envelope::WELCOME:
        break;
      default:
        last_activity_ = Now();  // the cluster is not idle yet
    }
    if (m.to == kCoordinator) {
      control::Incoming in;
      in.peer = m.from;
      in.message = std::move(decoded).value();
      transport_->inbox.push_back(std::move(in));
      coordinator_->Poll(0ms);
      return;
    }
    auto env = (*decoded)->envelope();
    for (auto& w : workers_)
      if (w.peer == m.to) return OnWorkerMessage(w, env);
    for (auto& c : clients_)
      if (c.peer == m.to) return OnClientMessage(c, env);
  }

  // ---- the coordinator ---------------------------------------------------------------------
  void StartCoordinator() {
    coordinator::CoordinatorOptions o;
    o.model_dir = opt_.model_dir;
    o.listen = kCoordinator;
    o.expect_workers = static_cast<int>(workers_.size());
    o.strategy = "even";
    o.data_plane = "tcp";
    o.vision_stage = "first";  // the stand-in stages do not encode images (the simulator has none)
    // With the shared head, room for its holder and for prompts that start with it.
    o.kv_budget_bytes = kKvPerToken * (kKvBudgetTokens + (prefix_cache_ ? 2 * facts_.shared_head.size() : 0));
    o.max_sequences = 8;
    o.max_context = 512;
    o.prefix_cache = prefix_cache_;
    o.prefill_chunk_rows = prefill_chunk_rows_;
    o.rebalance = false;
    o.clock = &clock_;
    o.transport = transport_.get();
    coordinator_ = std::make_unique<coordinator::Coordinator>(o);
    ++coordinator_incarnation_;
    auto bound = coordinator_->Bind();
    if (!bound.ok()) Violation("coordinator bind: " + bound.status().ToString());
    next_poll_ = Now();
  }

  // ---- stand-in workers ----------------------------------------------------------------------
  void StartWorkerProcess(Worker& w) {
    const int index = w.index;
    const std::string id = w.id;
    const int incarnation = w.incarnation + 1;
    const double slow = w.slow;
    w = Worker{};
    w.index = index;
    w.id = id;
    w.incarnation = incarnation;
    w.slow = slow;
    w.peer = id + "@" + std::to_string(incarnation);
    w.alive = true;
    w.next_hello = Now();
    w.next_heartbeat = Now();
    w.last_from_coordinator = Now();
  }

  void SendHello(Worker& w) {
    PostEnvelope(w.peer, kCoordinator, [&](proto::Envelope::Builder e) {
      auto h = e.initHello();
      h.setProtocolVersion(proto::K_PROTOCOL_VERSION);
      h.setRole(proto::Role::WORKER);
      h.setWorkerId(w.id);
      h.setEpoch(w.epoch);
      auto caps = h.initCapabilities();
      caps.setHost("sim-host-" + std::to_string(w.index));
      caps.setPid(static_cast<uint32_t>(1000 + w.index * 100 + w.incarnation));
      caps.setDevice("cpu");
      caps.setDeviceName("simulated");
      caps.setMemoryBytes(uint64_t{16} << 30);
      caps.setFreeMemoryBytes(uint64_t{16} << 30);
      caps.initDataPlanes(1).set(0, "tcp");
      caps.setDataAddress(w.address());
      caps.setThreads(4);
      caps.setBuildVersion("sim");
      caps.setKernels("generic");
    });
    w.next_hello = Now() + 1000ms;
  }

  // An error about a step (micro_batch; 0: about nothing in particular), as the real worker's
  // SendError, or about one sequence's admission, as its SendSequenceError.
  void SendWorkerError(Worker& w, proto::ErrorCode code, const std::string& message, uint64_t micro_batch) {
    PostEnvelope(w.peer, kCoordinator, [&](proto::Envelope::Builder e) {
      auto err = e.initError();
      err.setCode(code);
      err.setMessage(message);
      err.setMicroBatchId(micro_batch);
    });
  }
  void SendSequenceError(Worker& w, proto::ErrorCode code, const std::string& message, uint64_t sequence) {
    PostEnvelope(w.peer, kCoordinator, [&](proto::Envelope::Builder e) {
      auto err = e.initError();
      err.setCode(code);
      err.setMessage(message);
      err.setSequenceId(sequence);
    });
  }

  void SendStageReady(Worker& w) {
    PostEnvelope(w.peer, kCoordinator, [&](proto::Envelope::Builder e) {
      auto r = e.initStageReady();
      r.setEpoch(w.assigned_epoch);  // the assignment it answers (a welcome may have raised w.epoch)
      r.setStageIndex(w.stage);
      r.setWeightBytes(uint64_t{1} << 20);
      r.setKvBytesPerToken(kKvPerToken);
      r.setResidentBytes(uint64_t{2} << 20);
      r.setLoadMs(1);
      r.setWeightsKept(w.weights_kept);
      r.setDtype("f32");
      r.setDevice("cpu");
    });
  }

  void OnWorkerMessage(Worker& w, proto::Envelope::Reader env) {
    w.last_from_coordinator = Now();
    switch (env.which()) {
      case proto::Envelope::WELCOME:
        w.welcomed = true;
        w.refused_since.reset();
        w.epoch = std::max(w.epoch, env.getWelcome().getEpoch());
        return;
      case proto::Envelope::ERROR:
        if (!w.welcomed && env.getError().getCode() == proto::ErrorCode::ALREADY_EXISTS) {
          if (!w.refused_since) w.refused_since = Now();
          if (Now() - *w.refused_since > 2 * kSilence) {
            Log("worker " + w.peer + " gives up: its id is held");
            w.alive = false;  // exit 4; the fault schedule may start it again
          }
        }
        return;
      case proto::Envelope::ASSIGN_STAGE: {
        auto a = env.getAssignStage();
        if (a.getEpoch() < w.epoch) {
          return SendWorkerError(
              w, proto::ErrorCode::FAILED_PRECONDITION,
              "assignment of epoch " + std::to_string(a.getEpoch()) + " is older than epoch " + std::to_string(w.epoch),
              0);
        }
        // One epoch names one plan: a process never takes two layouts under one epoch, and the
        // live workers holding one epoch hold distinct stages of one plan.
        std::ostringstream layout;
        layout << "stage " << a.getStageIndex() << " of " << a.getStageCount() << " blocks [" << a.getBlockBegin()
               << "," << a.getBlockEnd() << ")";
        auto [it, fresh] = w.layouts.emplace(a.getEpoch(), layout.str());
        if (!fresh && it->second != layout.str()) {
          Violation("epochs: " + w.peer + " was assigned epoch " + std::to_string(a.getEpoch()) +
                    " twice: " + it->second + ", then " + layout.str());
        }
        for (const auto& other : workers_) {
          if (&other == &w || !other.alive || !other.assigned || other.assigned_epoch != a.getEpoch()) continue;
          if (other.stage_count != a.getStageCount() || other.stage == a.getStageIndex()) {
            Violation("epochs: epoch " + std::to_string(a.getEpoch()) + " names two plans: " + other.peer +
                      " holds stage " + std::to_string(other.stage) + " of " + std::to_string(other.stage_count) +
                      ", " + w.peer + " is assigned " + layout.str());
          }
        }
        if (w.assigned && a.getEpoch() == w.epoch && w.stage == a.getStageIndex() && w.ready_at) {
          return;  // a resend of the assignment being loaded
        }
        w.epoch = a.getEpoch();
        w.assigned_epoch = a.getEpoch();
        w.assigned = true;
        w.stage = a.getStageIndex();
        w.stage_count = a.getStageCount();
        w.block_begin = a.getBlockBegin();
        w.block_end = a.getBlockEnd();
        w.next_address = a.getNextDataAddress().cStr();
        w.kv_budget = a.getKvBudgetBytes();
        w.seqs.clear();
        w.kv_reserved = 0;
        w.pending.clear();
        w.computing.reset();
        w.weights_kept = w.kept_begin == w.block_begin && w.kept_end == w.block_end;
        w.kept_begin = w.block_begin;
        w.kept_end = w.block_end;
        w.ready_at = Now() + (w.weights_kept ? Ms(2) : BetweenMs(20, 300));
        return;
      }
      case proto::Envelope::ADMIT_SEQUENCE: {
        auto a = env.getAdmitSequence();
        const uint64_t id = a.getSequenceId();
        if (a.getEpoch() != w.epoch) return;  // of an older plan: dropped, as the real worker does
        if (!w.assigned) return SendSequenceError(w, proto::ErrorCode::FAILED_PRECONDITION, "no stage assigned", id);
        if (w.seqs.count(id)) {
          return SendSequenceError(w, proto::ErrorCode::ALREADY_EXISTS,
                                   "sequence " + std::to_string(id) + " already holds KV room on this stage", id);
        }
        const uint64_t bytes = kKvPerToken * a.getMaxTokens();
        if (w.kv_reserved + bytes > w.kv_budget) {
          return SendSequenceError(w, proto::ErrorCode::RESOURCE_EXHAUSTED,
                                   "KV cache budget of " + std::to_string(w.kv_budget) + " bytes is full (" +
                                       std::to_string(w.kv_reserved) + " reserved, " + std::to_string(bytes) +
                                       " more needed)",
                                   id);
        }
        Worker::Held held;
        held.bytes = bytes;
        held.prefill_rows = a.getPrefillRows();
        held.greedy = a.getSampling().getGreedy();
        held.seed = a.getSampling().getSeed();
        held.draws = a.getGeneratedTokens();  // a replay skips the draws of its earlier tokens
        if (a.getPrefixRows() > 0) {
          // The shared prompt head: a copy of the holder's first rows (StageModel::CopyPrefix).
          auto from = w.seqs.find(a.getPrefixSequenceId());
          if (from == w.seqs.end() || from->second.cached.size() < a.getPrefixRows() ||
              a.getPrefixRows() > a.getMaxTokens()) {
            return SendSequenceError(w, proto::ErrorCode::ABORTED,
                                     "prefix copy from sequence " + std::to_string(a.getPrefixSequenceId()) +
                                         ": the prefix is not held or has not stepped " +
                                         std::to_string(a.getPrefixRows()) + " positions",
                                     id);
          }
          held.cached.assign(from->second.cached.begin(), from->second.cached.begin() + a.getPrefixRows());
        }
        w.kv_reserved += bytes;
        w.seqs[id] = std::move(held);
        return TryCompute(w);
      }
      case proto::Envelope::RELEASE_SEQUENCES:
        for (uint64_t id : env.getReleaseSequences().getSequenceIds()) {
          auto it = w.seqs.find(id);
          if (it == w.seqs.end()) continue;
          w.kv_reserved -= it->second.bytes;
          w.seqs.erase(it);
        }
        return;
      case proto::Envelope::FORWARD: {
        auto f = env.getForward();
        if (f.getEpoch() != w.epoch || !w.assigned || w.stage != 0) {
          return SendWorkerError(w, proto::ErrorCode::FAILED_PRECONDITION,
                                 "forward of epoch " + std::to_string(f.getEpoch()) + " refused: current epoch is " +
                                     std::to_string(w.epoch),
                                 f.getMicroBatchId());
        }
        Step s;
        s.epoch = f.getEpoch();
        s.micro_batch = f.getMicroBatchId();
        s.step = f.getStep();
        for (auto seg : f.getSegments()) s.segments.push_back({seg.getSequenceId(), seg.getRows(), seg.getStartPos()});
        for (int64_t t : f.getTokenIds()) s.tokens.push_back(t);
        w.pending.push_back(std::move(s));
        return TryCompute(w);
      }
      case proto::Envelope::SHUTDOWN:
        w.alive = false;
        return;
      default:
        return;
    }
  }

  void OnFrame(Worker& w, const Step& s) {
    if (!w.assigned || s.epoch != w.epoch) return;  // frames of another epoch are dropped
    w.pending.push_back(s);
    TryCompute(w);
  }

  bool Loaded(const Worker& w) const { return w.assigned && !w.ready_at; }

  void TryCompute(Worker& w) {
    if (!Loaded(w) || w.computing || !w.alive) return;
    for (auto it = w.pending.begin(); it != w.pending.end(); ++it) {
      const bool admitted = std::all_of(it->segments.begin(), it->segments.end(),
                                        [&](const Segment& s) { return w.seqs.count(s.sequence) > 0; });
      if (!admitted) continue;  // waits for its admission (a step may overtake its admitSequence)
      w.computing = std::move(*it);
      w.pending.erase(it);
      const double rows = static_cast<double>(w.computing->tokens.size());
      w.compute_done = Now() + Us(static_cast<int64_t>((300 + 20 * rows) * w.slow));
      return;
    }
  }

  void FinishCompute(Worker& w) {
    Step s = std::move(*w.computing);
    w.computing.reset();
    ++w.steps;
    size_t row = 0;
    std::vector<uint64_t> ids;
    std::vector<int64_t> tokens;
    bool broken = false;
    for (const auto& seg : s.segments) {
      auto it = w.seqs.find(seg.sequence);
      if (it == w.seqs.end()) {  // released while queued: the real stage fails the step
        broken = true;
        break;
      }
      Worker::Held& held = it->second;
      auto& cached = held.cached;
      if (cached.size() < seg.start) {
        broken = true;
        break;
      }
      // A repeated step (the network duplicated it) writes its positions again and leaves the
      // later ones, as a real cache does; its token depends on the positions up to its end.
      for (uint32_t r = 0; r < seg.rows; ++r, ++row) {
        const size_t pos = seg.start + r;
        if (pos < cached.size()) {
          cached[pos] = s.tokens[row];
        } else {
          cached.push_back(s.tokens[row]);
        }
      }
      if (cached.size() * kKvPerToken > held.bytes) {
        Violation("kv: sequence " + std::to_string(seg.sequence) + " on " + w.id + " holds " +
                  std::to_string(cached.size()) + " tokens, more than its admitted room");
      }
      const std::vector<int64_t> upto(cached.begin(), cached.begin() + seg.start + seg.rows);
      if (w.stage == 0 && seg.start == 0) CheckRunsOnce(seg.sequence, upto);
      ids.push_back(seg.sequence);
      if (w.stage + 1 < w.stage_count) {
        tokens.push_back(-1);  // only the last stage's tokens are used
      } else if (upto.size() < held.prefill_rows) {
        tokens.push_back(-1);  // a piece of a long prompt: no token, no draw
      } else if (held.greedy) {
        tokens.push_back(NextToken(upto, facts_));
      } else {
        // Draw k of the stream after the admission's skipped ones: by position, so a step
        // the network repeated draws nothing twice (no real plane repeats one).
        tokens.push_back(SampledToken(upto, held.seed, held.draws + (upto.size() - held.prefill_rows), facts_));
      }
    }
    if (broken) {
      SendWorkerError(w, proto::ErrorCode::ABORTED,
                      "micro-batch " + std::to_string(s.micro_batch) + ": a sequence's cache does not hold the step",
                      s.micro_batch);
    } else if (w.stage + 1 < w.stage_count) {
      Post(w.address(), w.next_address, {}, std::make_shared<const Step>(s));
    } else {
      PostEnvelope(w.peer, kCoordinator, [&](proto::Envelope::Builder e) {
        auto r = e.initStepResult();
        r.setEpoch(s.epoch);
        r.setMicroBatchId(s.micro_batch);
        r.setStep(s.step);
        auto l = r.initSequenceIds(static_cast<unsigned>(ids.size()));
        auto t = r.initTokens(static_cast<unsigned>(tokens.size()));
        for (size_t i = 0; i < ids.size(); ++i) {
          l.set(static_cast<unsigned>(i), ids[i]);
          t.set(static_cast<unsigned>(i), tokens[i]);
        }
        auto m = r.initStageMicros(w.stage_count);
        for (uint32_t i = 0; i < w.stage_count; ++i) m.set(i, 300);
      });
    }
    TryCompute(w);
  }

  // Exactly once: one coordinator runs one request (client, request id) as one sequence, however
  // often its client repeats the submit (a replay keeps the sequence id).
  void CheckRunsOnce(uint64_t sequence, const std::vector<int64_t>& prefill) {
    for (const auto& c : clients_) {
      for (const auto& r : c.requests) {
        if (prefill.size() < r.prompt.size() || !std::equal(r.prompt.begin(), r.prompt.end(), prefill.begin()))
          continue;
        auto& seen = runs_[{coordinator_incarnation_, c.peer + "#" + std::to_string(r.id)}];
        seen.insert(sequence);
        if (seen.size() == 2) {
          Violation("outcome: client " + c.peer + " request " + std::to_string(r.id) +
                    " runs twice in one coordinator (sequences " + std::to_string(*seen.begin()) + " and " +
                    std::to_string(*seen.rbegin()) + ")");
        }
        return;
      }
    }
  }

  void TickWorker(Worker& w) {
    if (!w.alive || w.paused(Now())) return;
    const auto now = Now();
    if (w.ready_at && now >= *w.ready_at) {
      w.ready_at.reset();
      SendStageReady(w);
      TryCompute(w);
    }
    if (w.computing && now >= w.compute_done) FinishCompute(w);
    if (w.welcomed && now - w.last_from_coordinator > kSilence) {
      w.welcomed = false;  // the coordinator went silent: say hello again, keeping the weights
      w.next_hello = now;
    }
    if (!w.welcomed && now >= w.next_hello) SendHello(w);
    if (w.welcomed && now >= w.next_heartbeat) {
      w.next_heartbeat = now + kHeartbeat;
      PostEnvelope(w.peer, kCoordinator, [&](proto::Envelope::Builder e) {
        auto hb = e.initHeartbeat();
        hb.setSequence(++w.heartbeats);
        hb.setEpoch(w.epoch);
        hb.setStepsCompleted(w.steps);
        hb.setResidentBytes(uint64_t{2} << 20);
        hb.setMicroBatch(w.computing ? w.computing->micro_batch : 0);
      });
    }
  }

  TimePoint WorkerWakeup(const Worker& w) const {
    TimePoint t = TimePoint::max();
    if (!w.alive) return t;
    if (w.paused(Now())) return w.paused_until;
    if (w.ready_at) t = std::min(t, *w.ready_at);
    if (w.computing) t = std::min(t, w.compute_done);
    if (w.welcomed) {
      t = std::min(t, w.next_heartbeat);
      t = std::min(t, w.last_from_coordinator + kSilence + 1ms);
    } else {
      t = std::min(t, w.next_hello);
    }
    return t;
  }

  // ---- clients -----------------------------------------------------------------------------
  void Submit(Client& c, ClientRequest& r) {
    PostEnvelope(c.peer, kCoordinator, [&](proto::Envelope::Builder e) {
      auto s = e.initSubmit();
      s.setRequestId(r.id);
      s.setMaxNewTokens(r.max_new);
      s.setDeadlineMs(static_cast<uint32_t>(kClientTimeout.count()));
      auto sampling = s.initSampling();
      sampling.setGreedy(!r.sampled_seed);
      if (r.sampled_seed) {
        sampling.setTemperature(0.8);
        sampling.setSeed(*r.sampled_seed);
      }
      auto ids = s.initTokenIds(static_cast<unsigned>(r.prompt.size()));
      for (size_t i = 0; i < r.prompt.size(); ++i) ids.set(static_cast<unsigned>(i), r.prompt[i]);
      std::vector<uint8_t> mask(r.prompt.size(), 0);
      s.setImMask(kj::arrayPtr(mask.data(), mask.size()));
    });
    r.submitted = true;
    r.last_heard = Now();
  }

  void OnClientMessage(Client& c, proto::Envelope::Reader env) {
    if (env.which() == proto::Envelope::ERROR) {
      for (auto& r : c.requests) {
        if (r.done || r.abandoned || !r.submitted || env.getError().getRequestId() != r.id) continue;
        r.done = true;
        r.finish = "error";
        r.error = env.getError().getMessage().cStr();
      }
      return;
    }
    if (env.which() != proto::Envelope::TOKEN_EVENT) return;
    auto e = env.getTokenEvent();
    ClientRequest* found = nullptr;
    for (auto& r : c.requests)
      if (r.id == e.getRequestId()) found = &r;
    if (!found || !found->submitted || found->abandoned) return;
    ClientRequest& r = *found;
    r.last_heard = Now();
    r.accepted = true;
    if (e.getAccepted()) return;
    const std::string where = "client " + c.peer + " request " + std::to_string(r.id);
    // Tokens never change: every token of this event at a position already received agrees.
    const size_t offset = e.getOffset();
    auto toks = e.getTokens();
    for (size_t i = 0; i < toks.size(); ++i) {
      const size_t pos = offset + i;
      if (pos < r.have.size() && r.have[pos] != toks[i]) {
        Violation("tokens: " + where + " position " + std::to_string(pos) + " was " + std::to_string(r.have[pos]) +
                  ", now " + std::to_string(toks[i]));
      }
    }
    if (r.done) {
      // A repeated final (the client resubmitted): it must be the outcome already received.
      if (e.getDone() && e.getRetryAfterMs() == 0) {
        std::vector<int64_t> all;
        for (int64_t t : e.getAllTokens()) all.push_back(t);
        if (e.getFinishReason().cStr() != r.finish || (e.hasAllTokens() && all != r.final_tokens && r.error.empty())) {
          Violation("outcome: " + where + " ended twice differently: " + r.finish + " " +
                    std::to_string(r.final_tokens.size()) + " tokens, then " + e.getFinishReason().cStr() + " " +
                    std::to_string(all.size()) + " tokens");
        }
      }
      return;
    }
    if (offset > r.have.size()) {
      r.gap = true;
    } else if (!r.gap) {
      for (size_t i = r.have.size() - offset; i < toks.size(); ++i) r.have.push_back(toks[i]);
    }
    if (!e.getDone()) return;
    if (e.getRetryAfterMs() > 0 && r.unavailable_retries < 60) {
      ++r.unavailable_retries;
      r.retry_at = Now() + std::min<Ms>(Ms(e.getRetryAfterMs()), 2000ms);
      return;
    }
    r.done = true;
    r.finish = e.getFinishReason().cStr();
    if (e.hasError()) r.error = e.getError().cStr();
    Log(where + " ended: " + r.finish + (r.error.empty() ? "" : ": " + r.error));
    if (r.finish != "stop" && r.finish != "length" && r.error.empty()) {
      Violation("outcome: " + where + " failed (" + r.finish + ") without a stated reason");
    }
    // The faults here justify only these reasons (not serving, the deadline, the replay budget
    // or the KV room, a client gone); any other (FailedPrecondition, InvalidArgument, Internal)
    // blames a well-formed request for the coordinator's or a worker's confusion.
    static const std::set<std::string> kFaultReasons = {
        "stop", "length", "Unavailable", "Aborted", "DeadlineExceeded", "ResourceExhausted", "Cancelled"};
    if (!kFaultReasons.count(r.finish)) {
      Violation("outcome: " + where + " failed with " + r.finish + ", which no fault explains: " + r.error);
    }
    std::vector<int64_t> all;
    for (int64_t t : e.getAllTokens()) all.push_back(t);
    r.final_tokens = all;
    if (r.error.empty()) {
      if (!r.gap && (all.size() < r.have.size() || !std::equal(r.have.begin(), r.have.end(), all.begin()))) {
        Violation("tokens: " + where + " final allTokens do not extend the " + std::to_string(r.have.size()) +
                  " streamed tokens");
      }
      const auto expected = ExpectedTokens(r.prompt, r.max_new, facts_, r.sampled_seed);
      if (all != expected) {
        std::ostringstream s;
        s << "greedy: " << where << (r.sampled_seed ? " (sampled, seed " + std::to_string(*r.sampled_seed) + ")" : "")
          << " completed with " << all.size() << " tokens";
        for (size_t i = 0; i < all.size() && i < 12; ++i) s << (i ? "," : " [") << all[i];
        s << "], the fault-free run gives " << expected.size() << " [";
        for (size_t i = 0; i < expected.size() && i < 12; ++i) s << (i ? "," : "") << expected[i];
        s << "]";
        Violation(s.str());
      }
    }
  }

  void TickClient(Client& c) {
    const auto now = Now();
    if (!c.connected) return;
    if (c.disconnect_at && now >= *c.disconnect_at) {
      c.connected = false;
      ++result_.client_disconnects;
      Log("client " + c.peer + " disconnects");
      for (auto& r : c.requests)
        if (!r.done) r.abandoned = true;
      return;
    }
    for (auto& r : c.requests) {
      if (r.done || r.abandoned) continue;
      if (!r.submitted) {
        if (now >= r.submit_at) Submit(c, r);
        continue;
      }
      if (now - r.submit_at > kClientTimeout + 10000ms) {
        r.abandoned = true;  // the client gave up; the quiesce check reports it
        Violation("outcome: client " + c.peer + " request " + std::to_string(r.id) + " had no outcome within " +
                  std::to_string(kClientTimeout.count()) + " ms");
        continue;
      }
      if (r.retry_at) {
        if (now >= *r.retry_at) {
          r.retry_at.reset();
          Submit(c, r);
        }
        continue;
      }
      if (now - r.last_heard > (r.accepted ? 4000ms : 1000ms)) Submit(c, r);
    }
  }

  TimePoint ClientWakeup(const Client& c) const {
    TimePoint t = TimePoint::max();
    if (!c.connected) return t;
    if (c.disconnect_at) t = std::min(t, *c.disconnect_at);
    for (const auto& r : c.requests) {
      if (r.done || r.abandoned) continue;
      if (!r.submitted) {
        t = std::min(t, r.submit_at);
      } else if (r.retry_at) {
        t = std::min(t, *r.retry_at);
      } else {
        t = std::min(t, r.last_heard + (r.accepted ? 4000ms : 1000ms) + 1ms);
      }
    }
    return t;
  }

  bool ClientsFinished() const {
    for (const auto& c : clients_)
      for (const auto& r : c.requests)
        if (!r.done && !r.abandoned) return false;
    return true;
  }

  // ---- the fault schedule ------------------------------------------------------------------
  struct Event {
    TimePoint at;
    std::string what;
    std::function<void()> run;
  };

  void Schedule(Ms at, std::string what, std::function<void()> run) {
    events_.push_back({start_ + at, std::move(what), std::move(run)});
  }

  void PlanSeed() {
    std::ostringstream s;
    const int n_workers = static_cast<int>(Between(2, 3));
    const int n_clients = static_cast<int>(Between(1, 3));
    s << n_workers << " workers, " << n_clients << " clients";
    for (int i = 0; i < n_workers; ++i) {
      Worker w;
      w.index = i;
      w.id = "w" + std::to_string(i);
      w.incarnation = 0;
      workers_.push_back(w);
    }
    uint64_t next_token_seed = rng_();
    std::mt19937_64 prompts(next_token_seed);
    // The serving features a seed exercises, from a generator of their own (the draws above
    // and below stay what they were before these were added, so earlier seeds keep their
    // schedules): the shared prompt head, prompts in pieces, seeded sampling.
    std::mt19937_64 features(opt_.seed * 0x9E3779B97F4A7C15ull + 0x51ED);
    auto feature = [&features](double p) { return std::uniform_real_distribution<double>(0, 1)(features) < p; };
    prefix_cache_ = feature(0.5) && !facts_.shared_head.empty();
    prefill_chunk_rows_ = feature(0.35) ? static_cast<int64_t>(4 + features() % 9) : 0;
    if (prefix_cache_) s << ", shared head of " << facts_.shared_head.size() << " tokens";
    if (prefill_chunk_rows_ > 0) s << ", prompts in pieces of " << prefill_chunk_rows_ << " rows";
    for (int i = 0; i < n_clients; ++i) {
      Client c;
      c.index = i;
      c.peer = "client-" + std::to_string(i);
      const int n_requests = static_cast<int>(Between(1, 3));
      for (int k = 0; k < n_requests; ++k) {
        ClientRequest r;
        r.id = static_cast<uint64_t>(k + 1);
        const int64_t len = Between(3, 40);
        for (int64_t j = 0; j < len; ++j) r.prompt.push_back(1000 + static_cast<int64_t>(prompts() % 5000));
        if (prefix_cache_ && feature(0.6))
          r.prompt.insert(r.prompt.begin(), facts_.shared_head.begin(), facts_.shared_head.end());
        if (feature(0.3)) r.sampled_seed = features() % 100000;
        r.max_new = static_cast<uint32_t>(Between(1, 16));
        r.submit_at = start_ + BetweenMs(0, 4000);
        c.requests.push_back(std::move(r));
      }
      clients_.push_back(std::move(c));
    }
    int sampled = 0, with_head = 0, requests = 0;
    for (const auto& c : clients_) {
      for (const auto& r : c.requests) {
        ++requests;
        sampled += r.sampled_seed.has_value();
        with_head += prefix_cache_ && r.prompt.size() > facts_.shared_head.size() &&
                     std::equal(facts_.shared_head.begin(), facts_.shared_head.end(), r.prompt.begin());
      }
    }
    s << "; " << requests << " requests (" << sampled << " sampled with a seed" << (prefix_cache_ ? ", " : "")
      << (prefix_cache_ ? std::to_string(with_head) + " starting with the head" : "") << ")";
    // The faults (drawn even when faults are off, so the workload is the same either way).
    loss_ = Chance(0.5) ? Uniform() * 0.04 : 0;
    duplicate_ = Chance(0.3) ? Uniform() * 0.03 : 0;
    delay_ = Chance(0.4) ? Uniform() * 0.1 : 0;
    max_delay_ms_ = Between(10, 600);
    s << "; loss " << loss_ << ", duplication " << duplicate_ << ", delay " << delay_ << " up to " << max_delay_ms_
      << " ms";
    struct Planned {
      Ms at;
      std::string what;
      std::function<void()> run;
    };
    std::vector<Planned> planned;
    const int kills = static_cast<int>(Between(0, 2));
    for (int k = 0; k < kills; ++k) {
      const int victim = static_cast<int>(Between(0, n_workers - 1));
      const Ms at = BetweenMs(300, 12000);
      const bool restart = Chance(0.8);
      const Ms down = BetweenMs(50, 4000);
      planned.push_back({at, "kill worker w" + std::to_string(victim), [this, victim] {
                           if (!workers_[victim].alive) return;
                           workers_[victim].alive = false;
                           ++result_.worker_kills;
                         }});
      if (restart) {
        planned.push_back({at + down, "restart worker w" + std::to_string(victim), [this, victim] {
                             if (workers_[victim].alive) return;
                             StartWorkerProcess(workers_[victim]);
                           }});
      }
    }
    if (Chance(0.3)) {
      const int victim = static_cast<int>(Between(0, n_workers - 1));
      const Ms at = BetweenMs(300, 12000), len = BetweenMs(100, 5000);
      planned.push_back({at, "pause worker w" + std::to_string(victim) + " for " + std::to_string(len.count()) + " ms",
                         [this, victim, len] {
                           workers_[victim].paused_until = Now() + len;
                           ++result_.worker_pauses;
                         }});
    }
    if (Chance(0.25)) {
      const Ms at = BetweenMs(300, 12000), down = BetweenMs(10, 3000);
      planned.push_back({at, "stop the coordinator", [this] {
                           coordinator_.reset();
                           transport_->inbox.clear();
                           // What the dead process had not sent yet is gone with it.
                           std::erase_if(net_, [](const Message& m) { return m.from == kCoordinator; });
                           ++result_.coordinator_restarts;
                         }});
      planned.push_back({at + down, "start a new coordinator", [this] {
                           if (!coordinator_) StartCoordinator();
                         }});
    }
    for (auto& c : clients_) {
      if (Chance(0.15)) {
        const Ms at = BetweenMs(0, 8000);
        c.disconnect_at = start_ + at;
      }
    }
    if (Chance(0.3)) {
      const int victim = static_cast<int>(Between(0, n_workers - 1));
      workers_[victim].slow = 10 + Uniform() * 200;
      s << "; w" << victim << " slow x" << static_cast<int>(workers_[victim].slow);
    }
    // Without lost messages, dead, paused or restarted processes and disconnects (reordering,
    // duplicates, delays and slow stages remain), every request must complete.
    benign_ = !faults_ ||
              (loss_ == 0 && planned.empty() && std::none_of(clients_.begin(), clients_.end(), [](const Client& c) {
                 return c.disconnect_at.has_value();
               }));
    std::sort(planned.begin(), planned.end(), [](const auto& a, const auto& b) { return a.at < b.at; });
    for (auto& p : planned) {
      s << "; " << p.what << " at " << p.at.count() << " ms";
      if (faults_) Schedule(p.at, p.what, std::move(p.run));
    }
    for (auto& c : clients_) {
      if (c.disconnect_at) {
        s << "; " << c.peer << " disconnects at " << std::chrono::duration_cast<Ms>(*c.disconnect_at - start_).count()
          << " ms";
        if (!faults_) c.disconnect_at.reset();
      }
    }
    if (!faults_) {
      for (auto& w : workers_) w.slow = 1.0;
    }
    result_.schedule = s.str();
  }

  const SimOptions opt_;
  std::mt19937_64 rng_;
  const ModelFacts& facts_;
  SimulatedClock clock_;
  TimePoint start_ = clock_.now();
  bool faults_ = true;
  bool benign_ = false;  // no fault of this run explains a failed request
  bool prefix_cache_ = false;
  int64_t prefill_chunk_rows_ = 0;
  double loss_ = 0, duplicate_ = 0, delay_ = 0;
  int64_t max_delay_ms_ = 0;
  std::unique_ptr<SimTransport> transport_;
  std::unique_ptr<coordinator::Coordinator> coordinator_;
  TimePoint next_poll_, last_activity_;
  int coordinator_incarnation_ = 0;
  std::map<std::pair<int, std::string>, std::set<uint64_t>> runs_;  // (coordinator, request) -> sequences
  std::vector<Worker> workers_;
  std::vector<Client> clients_;
  std::vector<Message> net_;
  uint64_t next_serial_ = 1;
  std::vector<Event> events_;
  SimResult result_;
};

Status SimTransport::Send(capnp::MessageBuilder& message, const std::string& peer, std::chrono::milliseconds) {
  return sim_.CoordinatorSend(message, peer);
}

SimResult Simulation::Run() {
  faults_ = opt_.faults;
  if (!opt_.verbose) spdlog::set_level(spdlog::level::off);
  if (facts_.vocab == 0) {
    result_.violations.push_back("seed " + std::to_string(opt_.seed) + ": the model at " + opt_.model_dir.string() +
                                 " could not be described");
    return result_;
  }
  PlanSeed();
  Log("schedule: " + result_.schedule);
  transport_ = std::make_unique<SimTransport>(*this);
  StartCoordinator();
  for (auto& w : workers_) StartWorkerProcess(w);
  const TimePoint deadline = start_ + opt_.deadline;
  std::optional<TimePoint> idle_since;
  size_t next_event = 0;
  while (true) {
    const auto now = Now();
    while (next_event < events_.size() && events_[next_event].at <= now) {
      Log(events_[next_event].what);
      events_[next_event].run();
      ++next_event;
    }
    if (coordinator_ && now >= next_poll_) {
      coordinator_->Poll(0ms);
      next_poll_ = now + 10ms;
    }
    for (auto& w : workers_) TickWorker(w);
    for (auto& c : clients_) TickClient(c);
    // Quiescence: every request has its outcome, the faults are over, and nothing but
    // heartbeats has moved for kSettle.
    if (ClientsFinished() && next_event == events_.size()) {
      if (now - last_activity_ >= kSettle) break;
      idle_since = last_activity_;
    } else {
      idle_since.reset();
    }
    if (now >= deadline) {
      Violation("quiesce: not idle after " + std::to_string(opt_.deadline.count()) + " ms of simulated time");
      break;
    }
    // Deliver one message chosen at random among the deliverable ones.
    std::vector<size_t> ready;
    for (size_t i = 0; i < net_.size();) {
      const Fate f = FateOf(net_[i]);
      if (f == Fate::kDrop) {
        net_[i] = std::move(net_.back());
        net_.pop_back();
        continue;
      }
      if (f == Fate::kDeliver) ready.push_back(i);
      ++i;
    }
    if (!ready.empty()) {
      const size_t pick = ready[static_cast<size_t>(Between(0, static_cast<int64_t>(ready.size()) - 1))];
      Message m = std::move(net_[pick]);
      net_[pick] = std::move(net_.back());
      net_.pop_back();
      Deliver(std::move(m));
      continue;
    }
    TimePoint next = deadline;
    if (idle_since) next = std::min(next, *idle_since + kSettle);
    if (next_event < events_.size()) next = std::min(next, events_[next_event].at);
    if (coordinator_) next = std::min(next, next_poll_);
    for (const auto& m : net_) next = std::min(next, std::max(m.at, now + 1ms));
    for (const auto& w : workers_) next = std::min(next, WorkerWakeup(w));
    for (const auto& c : clients_) next = std::min(next, ClientWakeup(c));
    clock_.AdvanceTo(std::max(next, now + 1us));
  }
  // Invariants at rest. KV: on the workers serving the current coordinator's plan (a worker
  // outside it keeps what an earlier plan or coordinator reserved until its next assignment).
  for (const auto& w : workers_) {
    if (!w.alive || !w.assigned || !coordinator_ || coordinator_->worker_state(w.peer) != "serving") continue;
    // The shared head's holder keeps its KV by design (copied into later prompts): one
    // sequence holding exactly the head is not a leak.
    uint64_t held_head = 0;
    for (const auto& [id, h] : w.seqs) {
      if (prefix_cache_ && held_head == 0 && h.cached == facts_.shared_head) held_head = h.bytes;
    }
    if (w.kv_reserved != held_head) {
      std::ostringstream s;
      s << "kv: worker " << w.id << " (stage " << w.stage << ", epoch " << w.epoch << ") still reserves "
        << w.kv_reserved << " bytes for sequences";
      for (const auto& [id, v] : w.seqs) s << " " << id;
      s << " with the cluster idle";
      Violation(s.str());
    }
  }
  for (const auto& c : clients_) {
    for (const auto& r : c.requests) {
      if (r.abandoned)
        ++result_.abandoned;
      else if (r.done && r.error.empty())
        ++result_.completed;
      else if (r.done)
        ++result_.failed;
      if (benign_ && !(r.done && r.error.empty())) {
        Violation("progress: client " + c.peer + " request " + std::to_string(r.id) + " did not complete in a run " +
                  "without faults that explain it: " + (r.done ? r.finish + ": " + r.error : "no outcome"));
      }
    }
  }
  result_.simulated_s = SimSeconds();
  coordinator_.reset();
  return result_;
}

}  // namespace

SimResult RunSeed(const SimOptions& options) {
  Simulation sim(options);
  return sim.Run();
}

}  // namespace xcpipe::sim
