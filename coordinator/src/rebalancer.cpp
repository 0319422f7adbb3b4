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
  std::vector<StageWindow> window(stages.size());
  for (size_t i = 0; i < stages.size(); ++i) {
    window[i] = {stages[i].peer, workers[stages[i].peer].id, ms_per_step[i], layer_us[i]};
  }
  RebalanceVerdict verdict = JudgeRebalanceWindow(window, speeds, opt.rebalance_threshold);
  std::string figures;
  for (size_t i = 0; i < stages.size(); ++i) {
    char line[200];
    std::snprintf(line, sizeof line, "%s%s [%zu, %zu) %.2f ms/step, %.0f us/layer (speed 1/%.2f)", i ? ", " : "",
                  workers[stages[i].peer].id.c_str(), stages[i].first, stages[i].end, ms_per_step[i], layer_us[i],
                  verdict.speeds.count(stages[i].peer) ? verdict.speeds[stages[i].peer].slowdown : 1.0);
    figures += line;
  }
  if (!verdict.replan) {
    if (verdict.why.rfind("unbalanced", 0) == 0) spdlog::info("{}; keeping the plan: {}", verdict.why, figures);
    speeds = std::move(verdict.speeds);
    return restart_window();
  }
  // Re-plan only when the new speeds move some block: a plan like the current one would replay
  // every admitted sequence for nothing.
  std::vector<WorkerInfo*> pool = LiveWorkers();
  auto model = planner::LoadCheckpointForPlanning(opt.model_dir);
  StatusOr<Placement> next =
      model.ok() ? PlanPlacement(pool, *model, PlannedSlowdowns(verdict.speeds)) : StatusOr<Placement>(model.status());
  if (!next.ok()) {
    spdlog::warn("rebalancing: no plan with the measured speeds ({}); keeping the plan", next.status().ToString());
    return restart_window();
  }
  speeds = std::move(verdict.speeds);
  if (SameLayout(*next)) {
    spdlog::info("{}; the new speeds give the same placement, keeping the plan: {}", verdict.why, figures);
    return restart_window();
  }
  ++rebalances;
  const auto slowest_it = std::max_element(ms_per_step.begin(), ms_per_step.end());
  const double mean = std::accumulate(ms_per_step.begin(), ms_per_step.end(), 0.0) / static_cast<double>(stages.size());
  char head[160];
  std::snprintf(head, sizeof head, "stage %zu at %.2f ms/step is %.0f%% above the mean %.2f ms; before: ",
                static_cast<size_t>(slowest_it - ms_per_step.begin()), *slowest_it, 100.0 * (*slowest_it / mean - 1.0),
                mean);
  last_rebalance = head + figures;
  spdlog::warn("rebalancing ({}): {}", verdict.why, last_rebalance);
  rebalance_pending = true;
  Replan("rebalancing: measured stage times are unbalanced", /*fault=*/false);
}

std::map<std::string, double> Coordinator::Impl::PlannedSlowdowns(const std::map<std::string, WorkerSpeed>& s) {
  std::map<std::string, double> out;
  for (const auto& [peer, w] : s) out[peer] = w.slowdown;
  return out;
}

bool Coordinator::Impl::SameLayout(const Placement& p) const {
  const size_t language_first = p.separate ? 1 : 0;
  if (p.stage_workers.size() != stages.size() || p.vision_workers.size() != vision.size() ||
      p.plan.stages.size() != stages.size() + language_first) {
    return false;
  }
  for (size_t i = 0; i < stages.size(); ++i) {
    const auto& sp = p.plan.stages[i + language_first];
    if (p.stage_workers[i]->peer != stages[i].peer || sp.first_block != stages[i].first ||
        sp.end_block != stages[i].end) {
      return false;
    }
  }
  for (size_t k = 0; k < vision.size(); ++k) {
    const auto& [w, vp] = p.vision_workers[k];
    if (w->peer != vision[k].peer || vp.first_block != vision[k].first || vp.end_block != vision[k].end) return false;
  }
  return true;
}

}  // namespace xcpipe::coordinator
