// Coordinator: the control process of an xcpipe cluster. One actor on one thread owns the
// ROUTER socket, the worker registry, the plan and every request.
// Architecture: docs/architecture.md, "The cluster lifecycle" and "The request lifecycle".
//
// Cluster lifecycle:
//
//   [waiting] --expected workers registered--> plan --> [loading] --every stage ready--> [serving]
//       ^                                                   |  a stage fails to load:       |
//       |                                                   v  reported, cluster waits      |
//       +--------------------- a worker is lost (heartbeat timeout) <------------------------+
//                              (re-plan on the workers left; admitted sequences are replayed
//                               from their prompt and the tokens already sent; see faults)
//
// Request lifecycle (one sequence per prompt of a request):
//
//   [queued] --KV room on every stage--> [admitted] --prefill step--> [decoding] --stop id or
//   max tokens--> [done]; any state --client gone / fault / deadline--> [failed, reason sent]
//
// Scheduling: continuous batching. Admitted sequences are grouped into micro-batches; up to
// one micro-batch per stage is in flight, so every stage has work when there are enough
// sequences. A sequence is admitted only when every stage has KV room for its prompt plus its
// maximum new tokens, so no stage runs out of memory at run time.
//
// Not copyable or movable. Run() returns the process exit code: 0 after a stop, 5 when the
// expected workers did not register in time (the log names who is missing), 3 when no plan
// fits them (or --data-plane nccl cannot be used on them, the log says why), the load error's
// code (4 for a bad checkpoint) when the first load fails.
// RequestStop() (any thread) stops at once; RequestDrain() drains first: new requests are
// refused as unavailable, admitted ones finish (bounded by drain_timeout), then it stops. This
// class installs no signal handlers: the binaries' main() (xcpipe-coordinator, the xcpipe CLI's
// local clusters) turn SIGTERM/SIGINT into RequestDrain().
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "xcpipe/base/clock.h"
#include "xcpipe/control/curve.h"
#include "xcpipe/coordinator/edge.h"

namespace xcpipe::control {
class ControlTransport;  // control/transport.h
}  // namespace xcpipe::control

namespace xcpipe::coordinator {

// How long a signalled coordinator lets admitted requests finish before it stops anyway. The
// systemd unit's TimeoutStopSec must be longer.
inline constexpr std::chrono::seconds kDefaultDrainTimeout{30};

struct CoordinatorOptions {
  std::filesystem::path model_dir;
  std::filesystem::path tokenizer;   // empty: FindTokenizer(model_dir)
  std::string listen;                // "tcp://127.0.0.1:7000"; "tcp://127.0.0.1:*" picks a port
  bool allow_wildcard_bind = false;  // permit listen on every interface (tcp://*:P, tcp://0.0.0.0:P)
  // CURVE (control/curve.h): when enabled, only peers whose public key is in
  // curve.allowed_keys get through the handshake; without it, plain TCP (a warning when the
  // address is not loopback).
  control::CurveConfig curve;
  int expect_workers = 1;
  // Compute dtype on workers: f32, bf16, f16, or auto (f32 unless every worker is a CUDA
  // device, then the checkpoint's 16-bit dtype). One dtype per plan.
  std::string dtype = "auto";
  std::string spec_overrides;         // JSON handed to workers (tiny towers' head counts)
  uint64_t kv_budget_bytes = 0;       // per stage; 0 = from the plan
  int64_t max_sequences = 64;         // sequences in the pipeline at once (and the plan's KV room)
  int64_t max_context = 4096;         // prompt + new tokens of one sequence; capped at the model's limit
  std::string strategy = "balanced";  // planner strategy: balanced, even or greedy-memory
  // How activations travel between stages, chosen again with every plan:
  //   "auto" NCCL when this coordinator is a CUDA build and every stage's worker offered "nccl"
  //          on a CUDA device; otherwise TCP, with one info line saying why;
  //   "tcp"  always TCP;
  //   "nccl" NCCL, or planning fails naming the worker or the reason it cannot be used.
  // With NCCL the coordinator creates one fresh ncclUniqueId per stage link and plan (its
  // bootstrap listener lives in this process, so workers must reach this host).
  std::string data_plane = "auto";
  // Where the vision block runs, chosen again with every plan:
  //   "first"    on stage 0 with the embeddings (the official layout): stage 0 encodes each image
  //              when the step holding its first row arrives;
  //   "separate" on vision workers of their own, apart from the language pipeline: the planner's
  //              vision stage, plus every live worker the pipeline leaves unused that holds the
  //              vision block. An image is encoded as soon as its request is accepted (while it
  //              waits for KV admission), its rows go to stage 0's image inbox, and the step
  //              holding its first row is sent once they are there; the language stages never
  //              run the vision tower. Falls back to "first" (saying why) when fewer than two
  //              workers are live or no separate plan fits;
  //   "auto"     separate when the planner predicts it is faster or stage 0 does not fit
  //              otherwise, else first (the reason is logged and in the status).
  std::string vision_stage = "auto";
  // Dynamic load balancing: when, over a window of serving, the slowest stage's measured compute
  // per step stays more than `rebalance_threshold` above the mean, re-plan with each worker's
  // measured speed in place of the predicted one and move the blocks (between steps; every
  // sequence is replayed, so no request is lost and greedy tokens do not change).
  bool rebalance = true;
  double rebalance_threshold = 0.2;
  std::chrono::milliseconds rebalance_window{30000};  // measured over this much serving
  int64_t max_queue = 256;                            // requests waiting for admission before "busy"
  int64_t max_requests_per_client = 64;               // requests one client connection may have in progress
  // A request not finished by its deadline fails with DeadlineExceeded (its KV room is freed).
  // The client may ask for less (Submit.deadlineMs), never for more than max_deadline.
  std::chrono::milliseconds default_deadline{std::chrono::minutes(10)};
  std::chrono::milliseconds max_deadline{std::chrono::hours(1)};
  int64_t max_batch_rows = 4096;  // rows one micro-batch may carry (bounds a step's time)
  // When > 0, a prompt with more rows than this to prefill goes through in pieces of this many
  // rows, one long prompt at a time, so the decode steps of the other sequences run between its
  // pieces instead of waiting behind all of it (an image alone is 1225 rows on XComposer2), and
  // a step carries at most this many rows (the plan sizes activations for it). 0: whole prompts.
  // Off by default: the plan's stage-0 estimate is then ruled by the vision tower's, which is
  // short of the measured peak (README, Pipeline speed).
  int64_t prefill_chunk_rows = 0;
  // Compute the chat template's system text once per plan and copy its KV into every prompt
  // that starts with it, instead of prefilling it for each (see SharedPrefix in coordinator.cpp).
  bool prefix_cache = true;
  std::chrono::milliseconds worker_wait{120000};  // give up waiting for workers after this (exit 5)
  // Worker ids expected to register (optional): the count to wait for is the larger of this
  // list's size and expect_workers; on a wait timeout the message names who is missing.
  std::vector<std::string> expect_worker_ids;
  // RequestDrain() (SIGTERM/SIGINT in the binaries): stop admitting, let admitted requests finish
  // for at most this long, then tell the workers to shut down and return 0 (RequestStop() stops
  // at once).
  std::chrono::milliseconds drain_timeout{kDefaultDrainTimeout};
  EdgeLimits edge;
  // "HOST:PORT" of the HTTP monitoring endpoint (/metrics, /healthz, /readyz; see
  // metrics_http.h); empty: none. Port 0 picks a free one. Bound by Bind().
  std::string metrics_listen;
  // Called once with the bound address when the cluster starts serving.
  std::function<void(const std::string&)> on_ready;
  // Called from the actor's loop at least every 50 ms while it runs (service watchdog).
  std::function<void()> on_tick;
  // Called once when RequestDrain() starts the graceful drain.
  std::function<void()> on_drain;
  // Where every time the coordinator reads comes from (tests: a SimulatedClock). Not owned.
  xcpipe::Clock* clock = &SteadyClock::Instance();
  // The control plane (tests: a simulated network; control/transport.h). Not owned; null: Bind
  // binds a ZeroMQ ROUTER on `listen`.
  control::ControlTransport* transport = nullptr;
};

class Coordinator {
 public:
  explicit Coordinator(CoordinatorOptions options);
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // Loads the model description and binds the control socket; returns the bound address
  // (with the real port when the endpoint asked for "*"). Run() calls it when not done yet.
  StatusOr<std::string> Bind();
  // "host:port" the metrics endpoint is bound to after Bind(); empty when none was asked for.
  std::string metrics_address() const;
  int Run();
  // One turn of Run's loop without the signal handling and the drain (a test drives the
  // coordinator this way on its own thread and clock): handles every message that has arrived,
  // waiting up to `wait` for the first, then runs the periodic work once (planning, admission,
  // scheduling, heartbeats, deadlines, rebalancing, assignment resends, metrics). Bind first.
  void Poll(std::chrono::milliseconds wait);
  // The coordinator's view of the worker process whose routing id is `peer`: "idle", "loading",
  // "ready", "serving" or "lost"; empty when unknown. Tests (the simulator checks that nothing
  // is sent to a worker declared lost); call it from the thread that runs Poll.
  std::string worker_state(const std::string& peer) const;
  // Thread-safe: makes Run() tell the workers to shut down and return.
  void RequestStop();
  // Thread-safe and async-signal-safe (one lock-free atomic store): makes Run() drain (see
  // CoordinatorOptions::drain_timeout), then tell the workers to shut down and return 0.
  void RequestDrain();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace xcpipe::coordinator
