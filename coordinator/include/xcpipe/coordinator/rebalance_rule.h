// The rebalancer's decision as a function over values: from what each stage measured over a
// window of serving, whether to re-plan and with which speed for each worker. The coordinator
// (rebalancer.cpp) gathers the window's figures, calls this, and re-plans when told to and the
// new speeds move some block; nothing here reads a clock, sends or keeps state, so the rule is
// testable alone (coordinator/tests/rebalance_rule_test.cpp). Architecture:
// docs/architecture.md, "Dynamic load balancing".
#pragma once

#include <map>
#include <string>
#include <vector>

namespace xcpipe::coordinator {

// A stage's compute per step must reach this for the window to be judged (below it, what is
// measured is noise, not placement).
constexpr double kRebalanceMinStepMs = 1.0;
// A worker's measured speed is taken within [1/kRebalanceMaxSlowdown, kRebalanceMaxSlowdown] of
// the median worker's; speeds that moved less than kRebalanceSpeedChange since the last plan do
// not justify moving blocks again.
constexpr double kRebalanceMaxSlowdown = 16.0;
constexpr double kRebalanceSpeedChange = 0.15;

// What one stage of the current plan measured over the window.
struct StageWindow {
  std::string worker;      // who holds the stage (the key of its speed)
  std::string name;        // how the log names that worker (empty: `worker`)
  double ms_per_step = 0;  // compute per step: what the pipeline waits for
  double layer_us = 0;     // the mean time of one decoder layer; 0: the stage holds none
};

// What the rebalancer knows of one worker's speed. Speeds are slowdowns: a worker's
// decoder-layer time over the median worker's (1 = as predicted, 2 = twice as slow).
struct WorkerSpeed {
  double slowdown = 1.0;   // what the current plan was made with
  double measured = 0;     // the slowdown last measured (0: never measured)
  bool probing = false;    // planned with a guess between `measured` and 1, to measure it again
  bool confirmed = false;  // measured again after a probe and found as before: probe no more
};

struct RebalanceVerdict {
  bool replan = false;                        // plan again with `speeds`
  std::map<std::string, WorkerSpeed> speeds;  // the speeds to keep (and to plan with, on replan)
  std::string why;                            // one line for the log
};

// The rule. Nothing moves while the slowest stage's compute per step is within `threshold` of
// the mean (or the stages compute too little to judge). Otherwise every stage holding decoder
// layers is measured against the median one; a re-plan is asked for when some speed moved by
// more than kRebalanceSpeedChange since the plan was made.
//
// A worker the plan left without decoder layers cannot be measured: the speed that took its
// layers away would stay forever, and a worker that looked slow once (a noisy window, a
// device that was busy for a while) would never get work again. So while the stages are
// unbalanced, such a worker's slowdown is halved in ratio (2.25 -> 1.5) and a plan with the
// guess is asked for: once it holds layers again it is measured, and a measure that agrees
// with the last one before the probe confirms it; a confirmed worker is not probed again until
// a later measure disagrees.
RebalanceVerdict JudgeRebalanceWindow(const std::vector<StageWindow>& stages,
                                      const std::map<std::string, WorkerSpeed>& speeds, double threshold);

}  // namespace xcpipe::coordinator
