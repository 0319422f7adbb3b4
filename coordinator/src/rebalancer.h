// The rebalancer: re-plans when the stages' measured speeds drift from the plan.
// Coordinator-private; one actor thread owns its state. Architecture: docs/architecture.md,
// "Dynamic load balancing".
//
// Owns (members of Coordinator::Impl): `slowdown` (worker -> measured speed relative to the
// prediction), `window_base`, `window_started`, `rebalances`, `last_rebalance`,
// `rebalance_pending`. Entry point (rebalancer.cpp): CheckRebalance.
//
// Contract:
//   * Only with CoordinatorOptions::rebalance, only while serving, and only from a window in
//     which every stage ran at least kRebalanceMinSteps steps of measurable compute.
//   * It moves blocks only when the plan made with the measured speeds differs from the
//     current one and some speed moved by more than kRebalanceSpeedChange since the last plan;
//     the move is a Replan that is not a fault (no fault counted, sequences replayed).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace xcpipe::coordinator::detail {

using Clock = std::chrono::steady_clock;

// Rebalancing looks only at windows with this many steps on every stage, and only when a
// stage's compute per step is large enough to measure (below it, noise and not placement).
constexpr uint64_t kRebalanceMinSteps = 20;
constexpr double kRebalanceMinStepMs = 1.0;
// A worker's measured speed is taken within [1/kRebalanceMaxSlowdown, kRebalanceMaxSlowdown] of
// the median worker's; speeds that moved less than kRebalanceSpeedChange since the last plan do
// not justify moving blocks again.
constexpr double kRebalanceMaxSlowdown = 16.0;
constexpr double kRebalanceSpeedChange = 0.15;

}  // namespace xcpipe::coordinator::detail
