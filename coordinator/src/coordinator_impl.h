// The coordinator's state and its parts (private to coordinator/src). One actor thread owns all
// of it; the parts are the member functions of Coordinator::Impl, grouped into files by
// responsibility. Each part's header holds its types and its contract (what it owns, its entry
// points, what it guarantees):
//   worker_registry.h/.cpp  membership: hello, the one live process per worker id, heartbeats,
//                           liveness, lost workers and their errors
//   placement.h/.cpp        plans from the registered workers, the dtype and the data plane,
//                           stage assignments, epochs, recovery and re-planning
//   request_table.h/.cpp    intake (edge checks), deduplication of repeated submits, deadlines,
//                           exactly-once delivery of tokens and outcomes to clients; images are
//                           prepared on a thread of their own (prepare_thread.h)
//   sequences.h, batch_scheduler.cpp
//                           KV admission, the shared prompt head, prefill pieces, micro-batches
//                           and their results, step deadlines (its rules as value functions:
//                           xcpipe/coordinator/batch_scheduler.h)
//   vision_pool.h/.cpp      vision workers apart from the pipeline: images encoded at intake,
//                           their rows handed to stage 0, re-encoded after a loss
//   rebalancer.h/.cpp       re-planning when measured stage speeds drift from the plan (its rule
//                           as a value function: xcpipe/coordinator/rebalance_rule.h)
//   cluster_status.cpp      the status reply and the metrics snapshot
//   coordinator.cpp         the loop, message dispatch and the public Coordinator methods
// Architecture: docs/architecture.md.
#pragma once

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
#include "xcpipe/control/transport.h"
#ifdef XCPIPE_HAVE_CUDA
#include "xcpipe/cuda/nccl.h"
#endif
#include "monitoring.h"
#include "placement.h"
#include "prepare_thread.h"
#include "rebalancer.h"
#include "request_table.h"
#include "sequences.h"
#include "vision_pool.h"
#include "worker_registry.h"
#include "xcpipe/coordinator/metrics_http.h"
#include "xcpipe/planner/planner.h"
#include "xcpipe/planner/planning_model.h"

namespace xcpipe::coordinator {
namespace detail {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

}  // namespace detail

using namespace detail;  // the parts' files are all inside this namespace

struct Coordinator::Impl {
  CoordinatorOptions opt;
  std::atomic<bool> stop{false};
  std::atomic<bool> drain_requested{false};  // RequestDrain()
  zmq::context_t context;
  // The control plane: opt.transport when given, else the ZeroMQ ROUTER made in Bind (owned here).
  std::unique_ptr<control::ControlTransport> own_transport;
  control::ControlTransport* transport = nullptr;
  // Every time the coordinator reads is opt.clock's (a SimulatedClock in the simulator).
  Clock::time_point Now() const { return opt.clock->now(); }
  std::unique_ptr<RequestPreparer> edge;
  // Prepares submits with images off this thread (after `edge`: it is stopped before `edge` goes).
  std::unique_ptr<PrepareThread> prepare_thread;
  std::set<std::pair<std::string, uint64_t>> preparing;  // (client peer, client's id) posted to it
  std::string bound;

  ClusterState state = ClusterState::kWaiting;
  uint64_t epoch = 1;
  std::map<std::string, WorkerInfo> workers;  // by peer identity
  std::set<std::string> clients;
  // Compute watchdogs (hello role watchdog): their peer -> the worker peer they speak for.
  std::map<std::string, std::string> watchdogs;
  void OnWatchdog(const std::string& worker_peer, const proto::Envelope::Reader& env);
  std::vector<StageInfo> stages;
  DataPlaneChoice data_plane;  // of the current plan
  // Vision workers (vision_pool.h).
  std::string vision_mode;    // of the current plan: "first" or "separate" (empty before one)
  std::string vision_reason;  // why
  std::vector<VisionWorker> vision;
  std::map<uint64_t, ImageJob> image_jobs;  // by image id
  uint64_t images_encoded_total = 0;
  std::set<uint64_t> vision_requeued;  // a lost vision worker's images, until encoded again
  bool vision_separate() const { return vision_mode == "separate"; }
  void SendVisionAssignment(size_t k);
  void PumpVision();
  void OnImageEncoded(const std::string& peer, proto::ImageEncoded::Reader r);
  void OnVisionError(WorkerInfo& w, uint64_t image_id, const Status& st);
  void OnVisionWorkerLost(WorkerInfo& w, const std::string& why);
  // Whether every image whose first row falls in [from, from + rows) of the sequence's prompt
  // is encoded and waiting at stage 0; their ids go to `ids` (in prompt order).
  bool ImagesReadyForStep(const Sequence& seq, int64_t from, int64_t rows, std::vector<uint64_t>& ids) const;
  // A new plan: every job goes (stage 0 starts with an empty inbox) and is made again.
  void ForgetImageJobs();
  // Which data plane a plan on these stage workers (in stage order) uses, with fresh NCCL ids;
  // FailedPrecondition, naming the worker or the reason, when "nccl" was asked for and cannot be had.
  StatusOr<DataPlaneChoice> ChooseDataPlane(const std::vector<const WorkerInfo*>& stage_workers) const;
  Clock::time_point started{};  // set when the options are (Coordinator's constructor)
  Clock::time_point next_heartbeat{};

  // Sequence and micro-batch ids come from one counter (next_id), so no id names both in a log
  // line; a worker's error carries them in fields of their own (Error.sequenceId for an
  // admission it refused, Error.microBatchId for a step that failed).
  uint64_t next_request = 1, next_id = 1, step_counter = 0;
  std::map<uint64_t, Request> requests;
  std::map<uint64_t, Sequence> sequences;
  SharedPrefix prefix;
  std::deque<uint64_t> queue;  // sequences waiting for admission, in arrival order
  // micro-batch -> its sequences and the rows each contributed
  std::map<uint64_t, std::vector<std::pair<uint64_t, int64_t>>> in_flight;
  struct StepTimes {
    Clock::time_point sent, deadline;  // the deadline: when the micro-batch counts as lost
  };
  std::map<uint64_t, StepTimes> step_deadlines;  // by micro-batch
  void CheckStepDeadlines();
  void CheckRequestDeadlines();
  Clock::time_point next_request_deadline_check{};
  // Dynamic load balancing (see CoordinatorOptions::rebalance).
  std::map<std::string, WorkerSpeed> speeds;         // worker peer -> its measured speed (rebalance_rule.h)
  std::map<std::string, WorkerFigures> window_base;  // peer -> its figures when the window started
  Clock::time_point window_started;
  uint64_t rebalances = 0;
  std::string last_rebalance;
  bool rebalance_pending = false;  // the next plan is a rebalance: log it as such
  void CheckRebalance();
  static std::map<std::string, double> PlannedSlowdowns(const std::map<std::string, WorkerSpeed>& s);
  // Whether `p` gives every block to the worker that holds it now (language stages and vision).
  bool SameLayout(const Placement& p) const;
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
      it->second.deadline = std::max(it->second.deadline, Now() + kStepDeadline);
    }
  }
  // Fault handling: a stage was lost; re-plan on the workers that are left (or that come back)
  // and replay every admitted sequence from its prompt and the tokens already generated.
  bool recovering = false;
  bool planned_once = false;
  std::string plan_dtype = "f32";    // the dtype of the current plan (ResolveDtype)
  bool planned_once_served = false;  // the cluster has served at least once
  bool capacity_lost = false;        // recovery found no feasible plan: refuse until a worker returns
  bool workers_changed = true;       // re-plan only when the set of live workers changed
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
    Status st = transport->Send(m, peer, 1000ms);
    if (st.ok()) return;
    spdlog::warn("send to {}: {}", peer, st.ToString());
    // A worker whose connection is gone (its process exited: the kernel closed the socket) is
    // declared lost at the end of this turn, not after the heartbeat timeout.
    if (st.code() == StatusCode::kNotFound && workers.count(peer)) unreachable.insert(peer);
  }
  std::set<std::string> unreachable;  // worker peers a send found not connected
  void DeclareUnreachableLost();
  void SendError(const std::string& peer, const Status& st, uint64_t request_id) {
    capnp::MallocMessageBuilder m;
    wire::SetError(m.initRoot<proto::Envelope>(), st).setRequestId(request_id);
    Send(m, peer);
  }

  void Dispatch(const std::string& peer, const proto::Envelope::Reader& env);
  // One turn of the loop: every message that has arrived (waiting up to `wait` for the first),
  // then the periodic work once.
  void Poll(std::chrono::milliseconds wait);
  void OnHello(const std::string& peer, proto::Hello::Reader h);
  bool ClaimWorkerId(const std::string& peer, const std::string& id, const std::string& host, uint32_t pid);
  void OnSubmit(const std::string& peer, proto::Submit::Reader s);
  // The rest of OnSubmit once the prompt is prepared (at once, or from prepare_thread): the
  // checks that need the prepared prompt, then the request is queued and accepted.
  void FinishSubmit(SubmitIntake in);
  // Carries on with every submit prepare_thread has finished (each Poll turn).
  void TakePreparedSubmits();
  void RefuseSubmit(const std::string& peer, uint64_t client_id, const Status& st);
  StatusOr<std::vector<PreparedPrompt>> PreparePretokenized(proto::Submit::Reader s) const;
  void OnStepResult(proto::StepResult::Reader r);
  // A beam group's share of a step result: `rows` the rows the step gave it (the prompt piece's,
  // or 1 per beam), `candidates` each beam row's, by sequence id.
  void OnBeamStepResult(Sequence& seq, int64_t rows,
                        const std::map<uint64_t, std::vector<beam::BeamCandidate>>& candidates);
  void OnStatus(const std::string& peer);
  void OnWorkerError(const std::string& peer, proto::Error::Reader e);
  void MaybePlan();
  // The workers not lost, sorted by id: what a plan is made on.
  std::vector<WorkerInfo*> LiveWorkers();
  // The plan for the live workers `pool` (sorted by id) with each worker's measured speed in
  // `speeds` (peer -> slowdown; absent: as predicted), mapped onto the workers. Changes nothing.
  // FailedPrecondition with the planner's reason when no plan fits; Internal when the plan
  // names a device no worker holds.
  StatusOr<Placement> PlanPlacement(const std::vector<WorkerInfo*>& pool, const planner::PlanningModel& model,
                                    const std::map<std::string, double>& speeds) const;
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
  // Sequences released under the current plan -> heartbeats left that repeat the release
  // (kReleaseRepeats); a new plan clears it (its assignments free every stage's KV).
  std::map<uint64_t, int> releases_to_repeat;
  void RepeatReleases();
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

}  // namespace xcpipe::coordinator
