// The rebalancer's rule (rebalance_rule.h).
#include "xcpipe/coordinator/rebalance_rule.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

namespace xcpipe::coordinator {

namespace {

bool Agrees(double a, double b) { return b > 0 && std::abs(a / b - 1.0) <= kRebalanceSpeedChange; }

std::string Percent(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.0f%%", 100.0 * x);
  return buf;
}

}  // namespace

RebalanceVerdict JudgeRebalanceWindow(const std::vector<StageWindow>& stages,
                                      const std::map<std::string, WorkerSpeed>& speeds, double threshold) {
  RebalanceVerdict v;
  v.speeds = speeds;
  if (stages.size() < 2) {
    v.why = "one stage: nothing to balance";
    return v;
  }
  double sum = 0, slowest = 0;
  for (const auto& s : stages) {
    sum += s.ms_per_step;
    slowest = std::max(slowest, s.ms_per_step);
  }
  const double mean = sum / static_cast<double>(stages.size());
  if (mean < kRebalanceMinStepMs) {
    v.why = "too little compute per step to judge";
    return v;
  }
  const double excess = slowest / mean - 1.0;
  if (excess <= threshold) {
    v.why = "balanced: the slowest stage is " + Percent(excess) + " above the mean";
    return v;
  }
  std::vector<double> measured;
  for (const auto& s : stages)
    if (s.layer_us > 0) measured.push_back(s.layer_us);
  if (measured.size() < 2) {
    v.why = "unbalanced (" + Percent(excess) + " above the mean) but fewer than two stages hold decoder layers";
    return v;
  }
  std::nth_element(measured.begin(), measured.begin() + static_cast<std::ptrdiff_t>(measured.size() / 2),
                   measured.end());
  const double unit = measured[measured.size() / 2];
  bool changed = false;
  std::string moved, probed;
  for (const auto& s : stages) {
    WorkerSpeed& w = v.speeds[s.worker];
    const char* name = s.name.empty() ? s.worker.c_str() : s.name.c_str();
    if (s.layer_us > 0) {
      const double sd = std::clamp(s.layer_us / unit, 1.0 / kRebalanceMaxSlowdown, kRebalanceMaxSlowdown);
      if (!Agrees(sd, w.slowdown)) {
        changed = true;
        char line[96];
        std::snprintf(line, sizeof line, "%s%s 1/%.2f -> 1/%.2f", moved.empty() ? "" : ", ", name, w.slowdown, sd);
        moved += line;
      }
      w.confirmed = (w.probing || w.confirmed) && Agrees(sd, w.measured);
      w.probing = false;
      w.measured = sd;
      w.slowdown = sd;
    } else if (w.slowdown > 1.0 + kRebalanceSpeedChange && !w.confirmed) {
      const double guess = std::sqrt(w.slowdown);
      char line[96];
      std::snprintf(line, sizeof line, "%s%s 1/%.2f -> 1/%.2f", probed.empty() ? "" : ", ", name, w.slowdown, guess);
      probed += line;
      w.slowdown = guess;
      w.probing = true;
      changed = true;
    }
  }
  if (!changed) {
    // The plan already uses these speeds: what imbalance is left is the granularity of blocks
    // or the cost model, which moving blocks again would not fix. The plan's speeds stay what
    // it was made with (small drifts must add up against them, not against each other).
    for (auto& [worker, w] : v.speeds) {
      auto it = speeds.find(worker);
      w.slowdown = it != speeds.end() ? it->second.slowdown : 1.0;
    }
    v.why = "unbalanced (" + Percent(excess) + " above the mean) but the workers' speeds are as planned";
    return v;
  }
  v.replan = true;
  v.why = "unbalanced (" + Percent(excess) + " above the mean); ";
  if (!moved.empty()) v.why += "measured speeds moved: " + moved;
  if (!probed.empty())
    v.why += std::string(moved.empty() ? "" : "; ") + "probing workers left without decoder layers: " + probed;
  return v;
}

}  // namespace xcpipe::coordinator
