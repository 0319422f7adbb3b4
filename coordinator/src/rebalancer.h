// The rebalancer: re-plans when the stages' measured speeds drift from the plan.
// Coordinator-private; one actor thread owns its state. Architecture: docs/architecture.md,
// "Dynamic load balancing".
//
// Owns (members of Coordinator::Impl): `speeds` (worker -> what is known of its speed, see
// rebalance_rule.h), `window_base`, `window_started`, `rebalances`, `last_rebalance`,
// `rebalance_pending`. Entry point (rebalancer.cpp): CheckRebalance; the decision itself is
// JudgeRebalanceWindow (xcpipe/coordinator/rebalance_rule.h), a function over values.
//
// Contract:
//   * Only with CoordinatorOptions::rebalance, only while serving, and only from a window in
//     which every stage ran at least kRebalanceMinSteps steps of measurable compute.
//   * It moves blocks only when JudgeRebalanceWindow asks for a plan (some speed moved by more
//     than kRebalanceSpeedChange since the last plan, or a worker left without decoder layers is
//     probed) and the plan made with the new speeds (PlanPlacement) places some block elsewhere;
//     the move is a Replan that is not a fault (no fault counted, sequences replayed). New
//     speeds that give the same placement are kept without a Replan.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "xcpipe/coordinator/rebalance_rule.h"

namespace xcpipe::coordinator::detail {

using Clock = std::chrono::steady_clock;

// Rebalancing looks only at windows with this many steps on every stage (the other limits,
// and the rule, are in xcpipe/coordinator/rebalance_rule.h).
constexpr uint64_t kRebalanceMinSteps = 20;

}  // namespace xcpipe::coordinator::detail
