// The worker registry: the part of the coordinator that knows who is in the cluster.
// Coordinator-private; one actor thread (Coordinator::Impl) owns its state. Architecture:
// docs/architecture.md, "Identities", "Heartbeats" and "The fault model".
//
// Owns (members of Coordinator::Impl): `workers` (by routing identity), `clients`, `watchdogs`
// (a compute watchdog's peer -> the worker it speaks for), `unreachable`, `next_heartbeat`.
// Entry points (worker_registry.cpp): OnHello, ClaimWorkerId, OnWatchdog, OnWorkerError,
// Heartbeats, DeclareUnreachableLost, OnStageLost.
//
// Contract:
//   * One live registration per worker id (`Hello.workerId`). A second live process with the
//     id is refused with AlreadyExists; a holder whose connection is gone is declared lost at
//     once and the newcomer registers (ClaimWorkerId).
//   * A worker is `lost` after kHeartbeatTimeout without any message from it or its watchdog,
//     when a send finds its connection gone (at the end of the loop's turn), or when its
//     watchdog reports a stuck step. Lost is final for that process: it rejoins only by a new
//     hello, as an idle worker.
//   * Losing a worker that holds a stage calls OnStageLost, which hands over to placement
//     (Recover); the registry itself never plans.
//   * A worker's error is routed by the field it names: a refused admission (sequenceId), a
//     failed step (microBatchId), or a load failure (neither); OnWorkerError decides between
//     ignoring it (a repeat, a straggler of the previous plan), failing one request
//     (InvalidArgument) and re-planning (anything else).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "xcpipe/coordinator/metrics.h"

namespace xcpipe::coordinator::detail {

using Clock = std::chrono::steady_clock;

enum class WorkerState { kIdle, kLoading, kReady, kServing, kLost };
inline const char* WorkerStateName(WorkerState s) {
  switch (s) {
    case WorkerState::kIdle:
      return "idle";
    case WorkerState::kLoading:
      return "loading";
    case WorkerState::kReady:
      return "ready";
    case WorkerState::kServing:
      return "serving";
    case WorkerState::kLost:
      return "lost";
  }
  return "?";
}

struct WorkerInfo {
  std::string peer, id, host, device, device_name, data_address;
  std::vector<std::string> data_planes;  // what its hello offered ("tcp", "nccl")
  uint32_t pid = 0, threads = 1;
  uint64_t memory = 0;
  std::string kernels;                 // "cpu-fast" or "generic" (hello)
  std::string dtype;                   // the dtype its stage computes in (stageReady)
  uint64_t bandwidth_bytes_per_s = 0;  // CUDA: measured device copy rate (hello); 0 unknown
  double matmul_tflops = 0;            // CUDA: measured bf16 matrix-product rate (hello); 0 unknown
  WorkerState state = WorkerState::kIdle;
  int stage = -1;
  bool vision = false;            // a vision worker of the current plan (stage stays -1)
  std::string image_address;      // its image inbox (hello), where vision workers send rows
  bool weights_kept = false;      // its last stageReady reused loaded weights
  Clock::time_point last_seen{};  // set on hello (Impl::OnHello)
  uint64_t steps = 0, resident = 0, planned = 0, load_done = 0, load_total = 0;
  WorkerFigures figures;  // the latest heartbeat's resource sample (monitoring)
};

}  // namespace xcpipe::coordinator::detail
