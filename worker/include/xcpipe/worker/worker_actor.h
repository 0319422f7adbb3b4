// WorkerActor: one worker process = one actor that owns a device, its control socket, its data
// plane links and the StageModel of the blocks it holds. One thread of control: it reacts to
// control messages (assign stage, admit/release sequences, forward, drain, shutdown) and to
// activations arriving from the previous stage, and sends messages. The only other thread is
// the data-plane receiver, which hands complete, validated frames to the actor through a queue
// and wakes it over an inproc ZeroMQ socket.
// Architecture: docs/architecture.md, "The cluster lifecycle" (worker states) and "Planes".
//
// Lifecycle:
//
//            hello/welcome                assignStage                loaded + data plane up
//   (start) --------------> [idle] --------------------> [loading] ------------------------------> [ready]
//                             ^                            |  load failed, or links did not        |
//                             +----------------------------+  join: error reported                | first forward
//                                                                                                  v
//   [draining] <--------------------------- drain -------------------------------------------- [serving]
//       | nothing in flight: exit 0         (assignStage with a newer epoch from ready/serving: back to loading,
//       v                                    keeping the model when the block range is unchanged)
//     (exit)
//
// Data plane (worker/transport): the assignment says which one. One TCP listener lives as long
// as the process (the data address in hello); each assignment builds a new DataPlane around it:
//   * "tcp": frames with their bytes; after the load the stage connects to the next one.
//   * "nccl" (CUDA builds on a CUDA device): headers over the same listener and sender pair,
//     tensor bytes with ncclSend/ncclRecv. The communicators start when the assignment
//     arrives, before the load, and join on NCCL's threads while both neighbours load; the
//     actor polls them (never blocks: heartbeats go on) and answers stageReady once both links
//     have joined, or an error naming the stage and the link when one has not joined within
//     30 s of the assignment. A repeat of the same assignment keeps the links (ids are
//     single-use); a new epoch tears them down (ncclCommAbort, off the actor thread) and
//     starts over with the new ids. The receiver thread moves received tensors to the worker's
//     device (they stay in host memory on a CPU worker).
//
// Failure: every libtorch/zmq error is caught in the dispatch and answered with an `error`
// message naming the step; the actor keeps serving other sequences. Messages of an older epoch
// are refused (a worker that was declared dead cannot act on stale work). When the coordinator
// goes silent past the heartbeat timeout the worker keeps its weights and says hello again
// until it is welcomed back.
//
// Stopping: RequestStop() (from any thread, or a signal handler) drains as the `drain` message
// does: the actor finishes what it holds and Run() returns 0. This class installs no signal
// handlers; xcpipe-worker's main() turns SIGTERM/SIGINT into RequestStop().
//
// Not copyable or movable. Run() returns the process exit code.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "xcpipe/base/clock.h"
#include "xcpipe/control/curve.h"
#include "xcpipe/model/compute.h"
#include "xcpipe/worker/device_probe.h"

namespace xcpipe::control {
class ControlTransport;
}

namespace xcpipe::worker {

struct WorkerOptions {
  std::string coordinator;  // "tcp://host:port"
  // The control plane, when not a DEALER connected to `coordinator`: tests join a real
  // coordinator and real actors in one process (control::LoopbackHub). It outlives the actor.
  // No compute watchdog runs then (it needs a connection of its own).
  control::ControlTransport* transport = nullptr;
  control::CurveConfig curve;           // CURVE client keys + the coordinator's public key; empty: plain TCP
  std::string worker_id;                // stable name; also the control socket identity
  std::string data_host = "127.0.0.1";  // where the previous stage reaches this worker's data plane
  uint16_t data_port = 0;               // 0 = any free port (announced in hello)
  // "host:port" announced in hello instead of the bound address (a proxy or NAT in between); empty:
  // the bound address.
  std::string data_advertise;
  // The image inbox (a ZeroMQ PULL socket on data_host): where vision workers send the embeddings
  // of the images they encode when this worker holds the embed block. 0 = any free port
  // (announced in hello as Capabilities.imageAddress).
  uint16_t image_port = 0;
  DeviceChoice device;
  // CPU fast paths or the generic op sequence (--generic); a CUDA device always runs generic.
  model::KernelPath kernels = model::KernelPath::kCpuFast;
  int threads = 1;
  uint64_t memory_limit_bytes = 0;  // 0 = the device's total
  // The nice value (0 to 19) of the thread a vision worker encodes images on. Above 0 an encode
  // takes only the cores the language stages sharing the host leave idle; 0: the same priority.
  int encode_nice = 10;
  // Called on the actor thread with the new state's name ("idle", "loading", "ready", "serving",
  // "draining") each time it changes; worker_main sends READY=1 to systemd on "ready".
  std::function<void(std::string_view state)> on_state_change;
  // Called on the actor thread at least every 100 ms while it runs, and between tensors while a
  // stage loads (service watchdog). Must be cheap.
  std::function<void()> on_tick;
  // Where the actor, its step execution, its links and its compute watchdog read the time and
  // wait (heartbeats, deadlines, step timings, the test hooks' sleeps); never null, outlives the
  // actor. Socket waits run in real time whatever the clock.
  Clock* clock = &SteadyClock::Instance();
  // Test hooks (fault injection), off by default.
  std::chrono::milliseconds step_delay{0};    // sleep (on `clock`) before each forward step
  std::chrono::milliseconds encode_delay{0};  // sleep (on `clock`) before each image a vision worker encodes
  uint64_t hang_at_step = 0;                  // 1-based: hang forever inside that step's compute (0: never)
  double slowdown_factor = 1.0;  // > 1: every decoder layer takes this many times its compute (a slower device)
};

class WorkerActor {
 public:
  explicit WorkerActor(WorkerOptions options);
  ~WorkerActor();
  WorkerActor(const WorkerActor&) = delete;
  WorkerActor& operator=(const WorkerActor&) = delete;

  // Runs until shutdown, drain completion or a fatal error; returns the exit code.
  int Run();
  // Asks Run() to drain and return 0 (it notices within one poll interval, at most 100 ms).
  // Thread-safe and async-signal-safe (one lock-free atomic store); may come before Run().
  void RequestStop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace xcpipe::worker
