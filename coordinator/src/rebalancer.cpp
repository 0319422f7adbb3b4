// Rebalancer: re-planning when measured stage speeds drift from the plan.
// Members of Coordinator::Impl (coordinator_impl.h), run on the coordinator's thread.
#include "coordinator_impl.h"

namespace xcpipe::coordinator {

void Coordinator::Impl::CheckRebalance() {
  if (!opt.rebalance || state != ClusterState::kServing || stages.size() < 2) return;
  const auto now = Now();
  auto restart_window = [&] {
    window_base.clear();
    for (const auto& st : stages) window_base[st.peer] = workers[st.peer].figures;
    window_started = now;
  };
  if (window_base.empty()) return restart_window();
  if (now - window_started < opt.rebalance_window) return;
  // Per stage over the window: compute per step (what the pipeline waits for) and the time of
  // one decoder layer (what compares the workers: every decoder layer costs the same).
  std::vector<double> ms_per_step(stages.size(), 0), layer_us(stages.size(), 0);
  for (size_t i = 0; i < stages.size(); ++i) {
    const WorkerFigures& f = workers[stages[i].peer].figures;
    auto base = window_base.find(stages[i].peer);
    if (base == window_base.end()) return restart_window();
    const WorkerFigures& b = base->second;
    const uint64_t steps = f.steps_total - std::min(f.steps_total, b.steps_total);
    if (steps < kRebalanceMinSteps) return restart_window();  // not enough traffic to judge
    ms_per_step[i] = static_cast<double>(f.busy_micros_total - std::min(f.busy_micros_total, b.busy_micros_total)) /
                     1000.0 / static_cast<double>(steps);
    const uint64_t layers = f.decoder_layers_timed - std::min(f.decoder_layers_timed, b.decoder_layers_timed);
    if (layers > 0) {
      layer_us[i] = static_cast<double>(f.decoder_layer_micros_total -
                                        std::min(f.decoder_layer_micros_total, b.decoder_layer_micros_total)) /
                    static_cast<double>(layers);
    }
  }
  const double mean = std::accumulate(ms_per_step.begin(), ms_per_step.end(), 0.0) / static_cast<double>(stages.size());
  const auto slowest_it = std::max_element(ms_per_step.begin(), ms_per_step.end());
  const double slowest = *slowest_it;
  if (mean < kRebalanceMinStepMs || slowest <= mean * (1.0 + opt.rebalance_threshold)) return restart_window();
  // Each worker's speed: its decoder-layer time against the median worker's (the unit).
  std::vector<double> measured;
  for (double us : layer_us)
    if (us > 0) measured.push_back(us);
  if (measured.size() < 2) return restart_window();
  std::nth_element(measured.begin(), measured.begin() + measured.size() / 2, measured.end());
  const double unit = measured[measured.size() / 2];
  bool changed = false;
  std::map<std::string, double> next = slowdown;
  for (size_t i = 0; i < stages.size(); ++i) {
    if (layer_us[i] <= 0) continue;  // holds no decoder layer: its speed was not measured
    const double sd = std::clamp(layer_us[i] / unit, 1.0 / kRebalanceMaxSlowdown, kRebalanceMaxSlowdown);
    const double before = slowdown.count(stages[i].peer) ? slowdown[stages[i].peer] : 1.0;
    if (std::abs(sd / before - 1.0) > kRebalanceSpeedChange) changed = true;
    next[stages[i].peer] = sd;
  }
  std::string before;
  for (size_t i = 0; i < stages.size(); ++i) {
    char line[200];
    std::snprintf(line, sizeof line, "%s%s [%zu, %zu) %.2f ms/step, %.0f us/layer (speed 1/%.2f)", i ? ", " : "",
                  workers[stages[i].peer].id.c_str(), stages[i].first, stages[i].end, ms_per_step[i], layer_us[i],
                  next.count(stages[i].peer) ? next[stages[i].peer] : 1.0);
    before += line;
  }
  if (!changed) {
    // The plan already uses these speeds: what imbalance is left is the granularity of blocks
    // or the cost model, which moving blocks again would not fix.
    spdlog::info("stages unbalanced ({:.0f}% above the mean) but the workers' speeds are as planned; keeping the plan: {}",
                 100.0 * (slowest / mean - 1.0), before);
    return restart_window();
  }
  slowdown = std::move(next);
  ++rebalances;
  char head[160];
  std::snprintf(head, sizeof head, "stage %zu at %.2f ms/step is %.0f%% above the mean %.2f ms; before: ",
                static_cast<size_t>(slowest_it - ms_per_step.begin()), slowest, 100.0 * (slowest / mean - 1.0), mean);
  last_rebalance = head + before;
  spdlog::warn("rebalancing: {}", last_rebalance);
  rebalance_pending = true;
  Replan("rebalancing: measured stage times are unbalanced", /*fault=*/false);
}

}  // namespace xcpipe::coordinator
