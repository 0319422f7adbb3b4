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
// Where vision goes (VisionPlacement):
//   first          vision with the embeddings on stage 0, the official layout.
//   separate       vision alone on stage 0. The runtime runs it on vision workers beside the
//                  language pipeline (stages 1..), asynchronously: stages[0] is the first
//                  vision worker, and every device the pipeline leaves unused whose usable
//                  memory holds the vision block becomes another (Plan::extra_vision). Vision
//                  workers only encode images; they hold no KV cache and no language layer.
//   auto           plan both ways with the same strategy and keep one (ChooseVisionPlacement):
//                  separate when only it fits, or when both fit and it predicts a shorter step
//                  by more than kVisionApartMinGain; otherwise first. The plan records the
//                  choice (Plan::vision, never kAuto) and why (Plan::vision_reason).
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
// How much shorter (as a fraction) the step of a plan with vision apart must be for auto to
// give vision a device of its own: a gain inside the cost model's error is not worth a device.
inline constexpr double kVisionApartMinGain = 0.05;

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
  // Stages with the vision block: encoding ONE image at the worst tile grid on this device
  // (ResolvedLimits::vision_passes tower passes; PredictImageEncodeMs). 0 elsewhere.
  double encode_ms_per_image = 0;
  double step_ms() const { return compute_ms + transfer_ms; }
  bool fits() const { return bytes.total() <= usable_bytes; }
  // capacity - total: negative when over.
  int64_t headroom_bytes() const { return static_cast<int64_t>(capacity_bytes) - static_cast<int64_t>(bytes.total()); }
};

struct Plan {
  Strategy strategy = Strategy::kBalanced;
  VisionPlacement vision = VisionPlacement::kFirstStage;  // as planned: first or separate
  // Set when auto chose `vision`: one sentence saying why, for the user.
  std::string vision_reason;
  double headroom_fraction = kDefaultHeadroomFraction;
  bool feasible = false;
  double bottleneck_ms = 0;
  size_t bottleneck_stage = 0;
  int cross_host_hops = 0;
  ModelCost cost;
  std::vector<StagePlan> stages;
  // Separate vision only: more vision workers, on the devices no stage uses whose usable
  // memory holds the vision block (weights, activations at the most tiles, workspace); in the
  // cluster's device order. Each does stages[0]'s work: it only encodes images and sends the
  // embeddings to stages[1] (index 0, blocks {vision}; transfer_ms is that hop). Not part of
  // the pipeline: they count in neither `feasible`, the bottleneck nor the hops.
  std::vector<StagePlan> extra_vision;
  std::map<std::string, size_t> device_map;  // every tensor name -> stage index
  // Infeasible plans: by how much and where; then changes checked to make it fit.
  std::string infeasible_reason;
  std::vector<std::string> suggestions;
  std::vector<std::string> notes;  // observations about the limits (context capped, ...)
};

// options.vision (or the cluster file's) may be kAuto: resolved by ChooseVisionPlacement.
StatusOr<Plan> MakePlan(const PlanningModel& model, const ClusterSpec& cluster, const PlanOptions& options = {});

// What auto resolves to, and why. Plans with vision first and with vision separate, with
// options.strategy (options.vision is not read), and compares them: separate when the first
// layout does not fit and the separate one does, or when both fit and the separate plan's step
// is shorter by more than kVisionApartMinGain. A separate plan's step is the language stages'
// bottleneck (stages 1..), or the vision stage's own step when that is longer (the vision
// stage runs apart but must keep up); extra vision workers are not counted. First otherwise,
// including when neither fits, with fewer than 2 devices, or for a model without a vision
// block. Errors as MakePlan's.
struct VisionChoice {
  VisionPlacement placement = VisionPlacement::kFirstStage;  // first or separate, never auto
  // One sentence for the user: "vision apart: ..." or "vision on stage 0: ...", with the
  // figures compared.
  std::string reason;
};
StatusOr<VisionChoice> ChooseVisionPlacement(const PlanningModel& model, const ClusterSpec& cluster,
                                             const PlanOptions& options = {});

// Evaluates a given placement with the same cost model: `stages` lists, in pipeline order,
// each stage's device and block range; the ranges must tile [0, blocks) and keep the rules.
// With options.vision kAuto, the placement says which: vision alone on the first stage is
// separate.
// Used by the baselines, by tests and for "what if" questions.
struct StageAssignment {
  DeviceRef device;
  size_t first_block = 0;
  size_t end_block = 0;
};
StatusOr<Plan> EvaluatePlacement(const PlanningModel& model, const ClusterSpec& cluster,
                                 const std::vector<StageAssignment>& stages, const PlanOptions& options = {});

}  // namespace xcpipe::planner
