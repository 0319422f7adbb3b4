// ComputeWatchdog: keeps a worker visibly alive while its actor thread is inside a long
// compute step, and reports the step as stuck when it stops making progress.
//
// The actor thread cannot answer the control plane while one layer's GEMM runs (a long
// prefill on a CPU can take seconds per layer), and a wedged step looks exactly like that from
// outside. So the actor marks layer boundaries here and a watchdog thread, with a control socket
// of its own (identity: the worker's routing identity + "/watchdog"), decides. Before the first
// message about a step it says hello with role `watchdog`, naming the worker's identity in
// `Hello.watches`, so the coordinator credits what follows to the worker (and a restarted
// coordinator learns it at the next step):
//
//   actor idle ............................ nothing (the actor heartbeats itself)
//   in a step, progress within the window . heartbeat on the worker's behalf, every interval
//   in a step, no progress past the window  one `error` (DeadlineExceeded, "compute stuck ...")
//                                           and then silence: the coordinator re-plans at once
//
// The window adapts to the work: max(kMinWindow, kWindowFactor x the slowest time per row seen
// for one layer x this step's rows); before any step has been measured it is kFirstStepWindow.
// Image encodes (the vision tower's layers) are work of another kind: their unit is an image's
// tile, not a step's row, and they keep an estimate of their own. A tower layer says nothing of
// how long a decoder layer of a long prompt takes, so the first step after an encode still
// gets kFirstStepWindow.
// So a tiny model's hang is reported within about a second, a big prefill is never mistaken for
// one, and a frozen process (SIGSTOP: both threads stop) goes silent as before.
//
// Thread-safety: BeginStep/EndStep are called by the actor thread only, Progress by the thread
// computing (the actor's, or a vision worker's encode thread while the actor waits for it);
// all three are lock-free atomics. The socket lives and dies on the watchdog thread. Stops and joins in the destructor
// (bounded by one poll interval). Not copyable or movable.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include <zmq.hpp>

#include "xcpipe/base/clock.h"
#include "xcpipe/control/curve.h"

namespace xcpipe::worker {

struct ComputeWatchdogTimings {
  static constexpr std::chrono::milliseconds kMinWindow{1000};
  static constexpr std::chrono::milliseconds kFirstStepWindow{60000};
  static constexpr double kWindowFactor = 10.0;
};

// Within one long step the hello is repeated every this many messages (2 s at the heartbeat
// interval, less than the heartbeat timeout).
inline constexpr int kMessagesPerHello = 8;

class ComputeWatchdog {
 public:
  // Connects its own DEALER to `coordinator` from its thread, as `routing_id` (the worker's own
  // control identity) + "/watchdog". `epoch` is read for the messages. Progress and stalls are
  // timed on `clock` (which outlives the watchdog); the thread wakes every heartbeat interval
  // of real time to look.
  ComputeWatchdog(zmq::context_t& context, std::string coordinator, std::string routing_id, control::CurveConfig curve,
                  const std::atomic<uint64_t>& epoch, const std::atomic<uint64_t>& steps_completed,
                  Clock& clock = SteadyClock::Instance());
  ~ComputeWatchdog();
  ComputeWatchdog(const ComputeWatchdog&) = delete;
  ComputeWatchdog& operator=(const ComputeWatchdog&) = delete;

  // What a step computes: decoder layers over rows, or the vision tower over image tiles.
  enum class Work { kLayers, kEncode };

  // Actor thread: a step of `rows` rows (an encode: `rows` tiles) starts / crossed a layer
  // boundary / ended.
  void BeginStep(int64_t rows, uint64_t micro_batch, Work work = Work::kLayers);
  void Progress();
  void EndStep();

  // The window the current step must show progress within (for logs and tests).
  std::chrono::microseconds CurrentWindow() const;

 private:
  void Loop(std::string coordinator, std::string routing_id, control::CurveConfig curve);

  int64_t NowMicros() const;

  zmq::context_t& context_;
  Clock& clock_;
  const std::atomic<uint64_t>& epoch_;
  const std::atomic<uint64_t>& steps_completed_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> step_started_us_{0};  // 0: not in a step
  std::atomic<int64_t> last_progress_us_{0};
  std::atomic<int64_t> step_rows_{1};
  std::atomic<uint64_t> micro_batch_{0};
  std::atomic<int> work_{0};                         // Work of the current step
  std::atomic<double> slowest_us_per_row_[2]{0, 0};  // per layer interval, by Work; 0 until measured
  std::thread thread_;
};

}  // namespace xcpipe::worker
