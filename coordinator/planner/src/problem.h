// Internal to the planner: one planning problem (model costs x cluster devices x rules) in the
// flat arrays the search runs over, and the searches themselves.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "xcpipe/planner/planner.h"

namespace xcpipe::planner::internal {

struct DeviceInfo {
  DeviceRef ref;
  const GpuSpec* gpu = nullptr;
  const HostSpec* host = nullptr;
  uint64_t capacity = 0;
  uint64_t usable = 0;
  uint64_t workspace = 0;         // reserved + stage buffers
  std::vector<double> prefix_ms;  // prefix sums of per-block step ms on this device
};

class Problem {
 public:
  // `cost` must outlive the problem; so must `cluster`. `vision` is first or separate (auto is
  // resolved by the caller); a model without a vision block always plans as first.
  Problem(const ModelCost& cost, const ClusterSpec& cluster, VisionPlacement vision, double headroom_fraction);

  const ModelCost& cost() const { return *cost_; }
  const ClusterSpec& cluster() const { return *cluster_; }
  size_t blocks() const { return cost_->blocks.size(); }
  size_t devices() const { return devices_.size(); }
  size_t hosts() const { return cluster_->hosts.size(); }
  const DeviceInfo& device(size_t id) const { return devices_[id]; }
  // Flat id of a device reference; nullopt when out of range.
  std::optional<size_t> DeviceId(const DeviceRef& ref) const;
  VisionPlacement vision() const { return vision_; }
  double headroom_fraction() const { return headroom_; }

  // Whether the first stage may be blocks [0, end).
  bool ValidFirstEnd(size_t end) const { return vision_ == VisionPlacement::kSeparateStage ? end == 1 : end >= lead_; }
  size_t lead() const { return lead_; }
  uint64_t StaticBytes(size_t first, size_t end) const { return prefix_static_[end] - prefix_static_[first]; }
  uint64_t ActivationBytes(size_t block) const { return cost_->blocks[block].activation_bytes; }
  double ComputeMs(size_t device, size_t first, size_t end) const {
    return devices_[device].prefix_ms[end] - devices_[device].prefix_ms[first];
  }
  // Sending the step's activations after block end-1 from `device` to a device on the same
  // host (cross = false) or on another host (cross = true).
  double HopMs(size_t device, size_t end, bool cross) const;
  uint64_t StageTotalBytes(size_t device, size_t first, size_t end) const;

 private:
  const ModelCost* cost_;
  const ClusterSpec* cluster_;
  VisionPlacement vision_;
  double headroom_;
  size_t lead_ = 1;
  std::vector<DeviceInfo> devices_;
  std::vector<uint64_t> prefix_static_;  // weights + KV
};

// A placement as the search produces it: flat device ids with block ranges, pipeline order.
struct Stage {
  size_t device = 0;
  size_t first = 0;
  size_t end = 0;
};
using Placement = std::vector<Stage>;

// Device orders the balanced search tries: the file's order first, then host-contiguous
// orders with hosts and device kinds permuted, deduplicated, at most `limit`.
std::vector<std::vector<size_t>> CandidateOrders(const Problem& problem, size_t limit);
size_t OrderLimit(const Problem& problem);

// Balanced: min bottleneck, then fewest cross-host hops, then shortest sum of stage times,
// subject to memory. nullopt when nothing fits.
std::optional<Placement> SolveBalanced(const Problem& problem);
// The split with the least worst overflow (bytes over usable), ignoring memory limits;
// nullopt only when the rules cannot be met at all (e.g. a separate vision stage on 1 device).
std::optional<Placement> SolveLeastOverflow(const Problem& problem);
// Whether any placement fits (what the suggestions re-check).
bool AnyFeasible(const Problem& problem);

Placement EvenPlacement(const Problem& problem);
Placement GreedyMemoryPlacement(const Problem& problem);

}  // namespace xcpipe::planner::internal
