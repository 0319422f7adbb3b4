// EncodeThread: the thread a vision worker encodes images on, at a lower CPU priority than the
// thread that runs the language stages' steps.
//
// Why: a vision worker may share a host with language stages (CPU workers, or the host threads
// that feed GPUs). An encode is long (hundreds of ms of a core for one image) and nobody waits for
// it token by token, while every decode step of every request waits for the stages. At a higher
// nice value the encode takes the cores the stages leave idle and yields them when a step needs
// them, so an arriving image does not stretch the gaps between other requests' tokens. On a host
// of its own the value changes nothing: there is nothing to yield to.
//
// Why a thread of its own: an unprivileged process can raise its nice value but never lower it
// again (RLIMIT_NICE is 0 by default), and a worker that encodes today may hold a language stage
// after a re-plan. Linux keeps a nice value per thread, so the worker's actor thread keeps its
// priority and only this thread (and the OpenMP team it starts for libtorch's own operators) runs
// lower. OpenBLAS's pool threads, used when --threads > 1, keep the priority they started with.
//
// Contract:
//   * Run(work, while_waiting) runs `work` on the encode thread and returns when it is done;
//     meanwhile the caller's thread calls `while_waiting` about every `period` (the actor sends
//     its heartbeats from there: its sockets never leave its thread). One Run at a time.
//   * `work` runs to completion: there is no cancel. It must not touch the caller's sockets.
//   * The destructor joins the thread (after the Run in progress, if any).
//   * nice_status() says whether the thread got its nice value (it still runs at the old one if
//     setpriority refused); nice() is the value it runs at, read back from the kernel.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "xcpipe/base/status.h"

namespace xcpipe::worker {

class EncodeThread {
 public:
  // `nice`: the nice value the thread asks for (0 to 19; 0: the priority of the thread that made it).
  explicit EncodeThread(int nice);
  ~EncodeThread();
  EncodeThread(const EncodeThread&) = delete;
  EncodeThread& operator=(const EncodeThread&) = delete;

  void Run(const std::function<void()>& work, const std::function<void()>& while_waiting,
           std::chrono::milliseconds period = std::chrono::milliseconds(50));

  int nice() const;
  Status nice_status() const;

 private:
  void Loop(int nice);

  mutable std::mutex mu_;
  std::condition_variable cv_;
  const std::function<void()>* work_ = nullptr;  // set by Run, cleared by the thread when done
  bool started_ = false, stop_ = false;
  int nice_ = 0;
  Status nice_status_;
  std::thread thread_;
};

}  // namespace xcpipe::worker
