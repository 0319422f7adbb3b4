// Placement: the part of the coordinator that turns the registered workers into a plan.
// Coordinator-private; one actor thread owns its state. Architecture: docs/architecture.md,
// "The cluster lifecycle" and "Planes".
//
// Owns (members of Coordinator::Impl): `state`, `epoch`, `stages`, `data_plane`, `plan_dtype`,
// the recovery flags (`recovering`, `planned_once`, `planned_once_served`, `capacity_lost`,
// `workers_changed`) and the fault figures (`faults`, `replays`, `last_detect_ms`,
// `last_recover_ms`). Entry points (placement.cpp): MaybePlan, PlanPlacement, ChooseDataPlane, SendAssignment,
// ResendLostAssignments, Recover, Replan.
//
// Contract:
//   * Epochs only grow, and one epoch names one plan: every assignment of a plan carries the
//     epoch it raised, and no later plan reuses it.
//   * A plan is made only from live workers, and only when the set of live workers changed
//     (or a recovery or rebalance asks for one); the cluster serves once every stage of the
//     plan said stageReady for this epoch from the worker the plan gave it.
//   * When no feasible plan exists after a fault, submits are refused as Unavailable
//     (`capacity_lost`) until a worker comes back.
//   * Recover and Replan free every stage's KV (a new assignment does) and send every admitted
//     sequence back to the queue to replay from its prompt and the tokens already generated;
//     a sequence replayed more than kMaxFaultReplays times fails with the reason.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "worker_registry.h"
#include "xcpipe/checkpoint/tensor_table.h"
#include "xcpipe/planner/cost_model.h"
#include "xcpipe/planner/planner.h"

namespace xcpipe::coordinator::detail {

using Clock = std::chrono::steady_clock;

// A stage that neither reports load progress nor says ready this long after its assignment is
// sent the assignment again (workers report progress at least every few hundred ms).
constexpr std::chrono::milliseconds kAssignmentResend{3000};

// The retry budget: how many faults may send one sequence back to prefill before its request
// fails with the reason.
constexpr int kMaxFaultReplays = 8;

struct StageInfo {
  std::string peer;
  size_t first = 0, end = 0;
  uint64_t kv_budget = 0, kv_per_token = 0, kv_reserved = 0, weight_bytes = 0, planned_bytes = 0;
  planner::StageBytes predicted;                         // the plan's memory by category
  double predicted_step_ms = 0;                          // the plan's step time for this stage
  std::chrono::steady_clock::time_point last_load_news;  // assignment sent or load progress heard
  bool ready = false;
};

// The data plane of one plan (see CoordinatorOptions::data_plane).
struct DataPlaneChoice {
  std::string kind = "tcp";           // "tcp" or "nccl"
  std::string reason;                 // why: shown in the log and the status
  std::vector<std::string> nccl_ids;  // "nccl": one 128-byte ncclUniqueId per stage link (k -> k+1)
};

// A plan mapped onto the workers that will hold it (Coordinator::Impl::PlanPlacement).
struct Placement {
  planner::Plan plan;
  std::string dtype;                             // ResolveDtype's answer for the pool
  bool separate = false;                         // the vision block on vision workers of its own
  std::string vision_why;                        // why vision goes where it goes, for the log and the status
  std::vector<const WorkerInfo*> stage_workers;  // the language stages' workers, in stage order
  std::vector<std::pair<const WorkerInfo*, planner::StagePlan>> vision_workers;  // when separate
};

enum class ClusterState { kWaiting, kLoading, kServing };
// The dtype every stage of a plan computes in. "auto" (the default): the checkpoint's 16-bit
// dtype when every worker is a CUDA device (bf16 for a float32 checkpoint), else float32,
// which the CPU computes fast and which matches the official float32 outputs exactly.
std::string ResolveDtype(const std::string& asked, const std::vector<WorkerInfo*>& pool,
                         const checkpoint::TensorTable& tensors);

inline const char* ClusterStateName(ClusterState s) {
  switch (s) {
    case ClusterState::kWaiting:
      return "waiting-for-workers";
    case ClusterState::kLoading:
      return "loading";
    case ClusterState::kServing:
      return "serving";
  }
  return "?";
}

// Planner ordinals for the second and later workers sharing one GPU (no host has this many).
constexpr size_t kSharedGpuOrdinal = 1000;

}  // namespace xcpipe::coordinator::detail
