// The placement planner: which device runs which contiguous range of blocks, with predicted
// memory per category and predicted step time per stage (cost_model.h).
//
// Strategies:
//   balanced       (default) minimises the slowest stage's predicted step time subject to
//                  every device's memory minus headroom. For a given device order, a dynamic
//                  program over (device in order, first block of its stage) finds the exact
//                  optimum; it may skip devices, so a slow or small device is left out when
//                  that is faster. Ties go to fewer cross-host hops, then to a shorter sum of
//                  stage times; a hop's time is part of the sending stage's time.
//                  Orders tried: the file's own order, then every host-contiguous order (hosts
//                  permuted, each host's devices in every distinct sequence of kinds; identical
//                  devices and hosts are interchangeable) while there are at most
//                  kMaxDeviceOrders of them within the search's work budget, which makes the
//                  result exact over all host-contiguous orders (every cluster in configs/ is
//                  such a case); beyond that, orders that group each host's devices by kind,
//                  with hosts and kind priorities permuted.
//   even           layer counting as the official XComposer utils do (auto_configure_device_map:
//                  vision + embeddings weigh 3 layers on the first device, (L + 6) / N layers
//                  per device, head on the last), devices in file order.
//   greedy-memory  fill devices in file order until the next block would not fit, as
//                  accelerate's infer_auto_device_map does (with this cost model's memory).
// Rules every strategy keeps: vision and embeddings on the first stage (or vision alone on
// it with VisionPlacement::kSeparateStage), the head on the last, a block never split.
//
// A plan that cannot fit is still returned (feasible = false) with the least-overflowing
// split, a sentence saying by how much and where, and suggestions that were each checked by
// planning again (shorter context, fewer sequences, fewer images or tiles, vision on its own
// device, another device, a smaller dtype).
//
// Stateless functions; thread-safe. Errors (bad limits, a cluster with no devices) are
// InvalidArgument; infeasibility is a value, not an error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "xcpipe/base/status.h"
#include "xcpipe/planner/cluster.h"
#include "xcpipe/planner/cost_model.h"
#include "xcpipe/planner/planning_model.h"

namespace xcpipe::planner {

enum class Strategy : uint8_t { kBalanced, kEven, kGreedyMemory };
std::string_view StrategyName(Strategy strategy);  // "balanced", "even", "greedy-memory"
std::optional<Strategy> ParseStrategy(std::string_view name);

// Device orders the balanced search tries at most (the file's order is always first).
inline constexpr size_t kMaxDeviceOrders = 256;

struct PlanOptions {
  Strategy strategy = Strategy::kBalanced;
  // nullopt: the cluster file's [planner] values.
  std::optional<VisionPlacement> vision;
  std::optional<double> headroom_fraction;
  // Whether an infeasible plan searches for changes that would make it fit.
  bool suggest_fixes = true;
};

struct StagePlan {
  size_t index = 0;
  DeviceRef device_ref;
  std::string host;
  std::string device;
  size_t first_block = 0;  // blocks [first_block, end_block) of the spec
  size_t end_block = 0;
  std::vector<std::string> blocks;
  StageBytes bytes;
  uint64_t capacity_bytes = 0;  // the device's memory
  uint64_t usable_bytes = 0;    // capacity minus headroom: what a plan may fill
  double compute_ms = 0;        // the stage's blocks
  double transfer_ms = 0;       // sending the step's activations to the next stage
  bool crosses_host = false;    // the next stage is on another host
  double step_ms() const { return compute_ms + transfer_ms; }
  bool fits() const { return bytes.total() <= usable_bytes; }
  // capacity - total: negative when over.
  int64_t headroom_bytes() const { return static_cast<int64_t>(capacity_bytes) - static_cast<int64_t>(bytes.total()); }
};

struct Plan {
  Strategy strategy = Strategy::kBalanced;
  VisionPlacement vision = VisionPlacement::kFirstStage;
  double headroom_fraction = kDefaultHeadroomFraction;
  bool feasible = false;
  double bottleneck_ms = 0;
  size_t bottleneck_stage = 0;
  int cross_host_hops = 0;
  ModelCost cost;
  std::vector<StagePlan> stages;
  std::map<std::string, size_t> device_map;  // every tensor name -> stage index
  // Infeasible plans: by how much and where; then changes checked to make it fit.
  std::string infeasible_reason;
  std::vector<std::string> suggestions;
  std::vector<std::string> notes;  // observations about the limits (context capped, ...)
};

StatusOr<Plan> MakePlan(const PlanningModel& model, const ClusterSpec& cluster, const PlanOptions& options = {});

// Evaluates a given placement with the same cost model: `stages` lists, in pipeline order,
// each stage's device and block range; the ranges must tile [0, blocks) and keep the rules.
// Used by the baselines, by tests and for "what if" questions.
struct StageAssignment {
  DeviceRef device;
  size_t first_block = 0;
  size_t end_block = 0;
};
StatusOr<Plan> EvaluatePlacement(const PlanningModel& model, const ClusterSpec& cluster,
                                 const std::vector<StageAssignment>& stages, const PlanOptions& options = {});

}  // namespace xcpipe::planner
