#include "xcpipe/planner/planner.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include "problem.h"

namespace xcpipe::planner {
namespace {

using internal::Placement;
using internal::Problem;

std::string Gib(double bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f GiB", bytes / kBytesPerGib);
  return text;
}

// "vision, embed, layer.0-15" style summary of a block range.
std::string BlockSummary(const std::vector<std::string>& blocks) {
  std::string out;
  size_t i = 0;
  while (i < blocks.size()) {
    if (!out.empty()) out += ", ";
    size_t j = i;
    if (blocks[i].rfind("layer.", 0) == 0) {
      while (j + 1 < blocks.size() && blocks[j + 1].rfind("layer.", 0) == 0) ++j;
    }
    out += blocks[i];
    if (j > i) out += "-" + blocks[j].substr(6);
    i = j + 1;
  }
  return out;
}

// For "N more devices" suggestions: a link for a host that had one device, and ordinals that
// cannot clash with real ones.
constexpr double kAssumedIntraHostGbps = 64;
constexpr int kFirstHypotheticalOrdinal = 9000;

struct Resolved {
  VisionPlacement vision;
  double headroom;
};

StatusOr<Resolved> ResolveOptions(const ClusterSpec& cluster, const PlanOptions& options) {
  Resolved r{options.vision.value_or(cluster.planner.vision),
             options.headroom_fraction.value_or(cluster.planner.headroom_fraction)};
  if (!(r.headroom >= 0 && r.headroom <= 0.9)) {
    return InvalidArgumentError("headroom must be a fraction from 0 to 0.9, got " + std::to_string(r.headroom));
  }
  return r;
}

// Encoding one image with the vision block(s) among blocks [first, end) on `device`.
double EncodeMs(const ModelCost& cost, size_t first, size_t end, const GpuSpec& device) {
  double ms = 0;
  for (size_t b = first; b < end && b < cost.blocks.size(); ++b) ms += PredictImageEncodeMs(cost.blocks[b], device);
  return ms;
}

// Plan::extra_vision: every device outside `used` that holds the vision block (block 0) alone.
std::vector<StagePlan> ExtraVisionWorkers(const Problem& p, const std::set<size_t>& used, const DeviceRef& embeddings) {
  std::vector<StagePlan> workers;
  for (size_t d = 0; d < p.devices(); ++d) {
    if (used.count(d) != 0) continue;
    const auto& info = p.device(d);
    StagePlan worker;
    worker.bytes = PredictStageBytes(p.cost(), 0, 1, *info.gpu);
    worker.capacity_bytes = info.capacity;
    worker.usable_bytes = info.usable;
    if (!worker.fits()) continue;
    worker.index = 0;
    worker.device_ref = info.ref;
    worker.host = info.host->name;
    worker.device = info.gpu->device;
    worker.first_block = 0;
    worker.end_block = 1;
    worker.blocks = {p.cost().blocks[0].name};
    worker.compute_ms = p.ComputeMs(d, 0, 1);
    worker.crosses_host = info.ref.host != embeddings.host;
    worker.transfer_ms = p.HopMs(d, 1, worker.crosses_host);
    worker.encode_ms_per_image = EncodeMs(p.cost(), 0, 1, *info.gpu);
    workers.push_back(std::move(worker));
  }
  return workers;
}

// Checks the rules and fills every field from the cost model. The arithmetic is the search's
// own (prefix sums, hop function), so a plan the search found evaluates to exactly its value.
StatusOr<Plan> Evaluate(const PlanningModel& model, const Problem& p, const Placement& placement, Strategy strategy) {
  const size_t N = p.blocks();
  if (placement.empty()) return InvalidArgumentError("a placement needs at least one stage");
  std::set<size_t> used;
  size_t next = 0;
  for (size_t s = 0; s < placement.size(); ++s) {
    const auto& st = placement[s];
    if (st.device >= p.devices()) return InvalidArgumentError("stage " + std::to_string(s) + ": no such device");
    if (!used.insert(st.device).second) {
      return InvalidArgumentError("stage " + std::to_string(s) + ": device used by two stages");
    }
    if (st.first != next || st.end <= st.first || st.end > N) {
      return InvalidArgumentError("stage " + std::to_string(s) + ": block ranges must tile [0, " + std::to_string(N) +
                                  ") in order without gaps or empty stages");
    }
    next = st.end;
  }
  if (next != N) return InvalidArgumentError("the stages leave blocks after " + std::to_string(next) + " unplaced");
  if (!p.ValidFirstEnd(placement.front().end)) {
    return InvalidArgumentError(p.vision() == VisionPlacement::kSeparateStage
                                    ? "the first stage must hold the vision block alone (vision stage: separate)"
                                    : "the first stage must hold the vision block and the embeddings");
  }

  Plan plan;
  plan.strategy = strategy;
  plan.vision = p.vision();
  plan.headroom_fraction = p.headroom_fraction();
  plan.cost = p.cost();
  plan.feasible = true;
  std::vector<size_t> stage_of_block(N);
  for (size_t s = 0; s < placement.size(); ++s) {
    const auto& st = placement[s];
    const auto& info = p.device(st.device);
    StagePlan stage;
    stage.index = s;
    stage.device_ref = info.ref;
    stage.host = info.host->name;
    stage.device = info.gpu->device;
    stage.first_block = st.first;
    stage.end_block = st.end;
    for (size_t b = st.first; b < st.end; ++b) {
      stage.blocks.push_back(p.cost().blocks[b].name);
      stage_of_block[b] = s;
    }
    stage.bytes = PredictStageBytes(p.cost(), st.first, st.end, *info.gpu);
    stage.capacity_bytes = info.capacity;
    stage.usable_bytes = info.usable;
    stage.compute_ms = p.ComputeMs(st.device, st.first, st.end);
    stage.encode_ms_per_image = EncodeMs(p.cost(), st.first, st.end, *info.gpu);
    if (s + 1 < placement.size()) {
      const auto& next_info = p.device(placement[s + 1].device);
      stage.crosses_host = next_info.ref.host != info.ref.host;
      stage.transfer_ms = p.HopMs(st.device, st.end, stage.crosses_host);
      plan.cross_host_hops += stage.crosses_host ? 1 : 0;
    }
    plan.feasible = plan.feasible && stage.fits();
    if (s == 0 || stage.step_ms() > plan.bottleneck_ms) {
      plan.bottleneck_ms = stage.step_ms();
      plan.bottleneck_stage = s;
    }
    plan.stages.push_back(std::move(stage));
  }
  for (const auto& tensor : model.tensors.tensors) {
    plan.device_map[tensor.name] = stage_of_block[model.assignment.at(tensor.name)];
  }
  if (p.vision() == VisionPlacement::kSeparateStage && placement.size() >= 2) {
    plan.extra_vision = ExtraVisionWorkers(p, used, p.device(placement[1].device).ref);
  }
  return plan;
}

std::string DescribeStage(const StagePlan& stage) {
  return "stage " + std::to_string(stage.index) + " (" + stage.host + " " + stage.device + ": " +
         BlockSummary(stage.blocks) + ")";
}

std::string OverflowReason(const Plan& plan, const Problem& p) {
  std::string reason;
  for (const auto& stage : plan.stages) {
    if (stage.fits()) continue;
    if (!reason.empty()) reason += "; ";
    reason += DescribeStage(stage) + " needs " + Gib(static_cast<double>(stage.bytes.total())) + " but has " +
              Gib(static_cast<double>(stage.usable_bytes)) + " usable (" +
              Gib(static_cast<double>(stage.capacity_bytes)) + " less " +
              std::to_string(static_cast<int>(std::lround(plan.headroom_fraction * 100))) + "% headroom): over by " +
              Gib(static_cast<double>(stage.bytes.total() - stage.usable_bytes)) + " (weights " +
              Gib(static_cast<double>(stage.bytes.weights)) + ", KV cache " + Gib(static_cast<double>(stage.bytes.kv)) +
              ", activations " + Gib(static_cast<double>(stage.bytes.activations)) + ", workspace " +
              Gib(static_cast<double>(stage.bytes.workspace)) + ")";
  }
  double need = 0, usable = 0;
  for (const auto& b : p.cost().blocks) need += static_cast<double>(b.weight_bytes + b.kv_bytes);
  for (size_t d = 0; d < p.devices(); ++d) usable += static_cast<double>(p.device(d).usable);
  reason += ". In all, weights and KV cache need " + Gib(need) + " against " + Gib(usable) + " usable on " +
            std::to_string(p.devices()) + (p.devices() == 1 ? " device" : " devices");
  return reason;
}

// Whether the model fits `cluster` with `limits` and `vision` under the balanced search.
bool FitsWith(const PlanningModel& model, const ClusterSpec& cluster, const ServingLimits& limits,
              VisionPlacement vision, double headroom) {
  auto cost = EstimateModelCost(model.spec, model.tensors, model.assignment, limits);
  if (!cost.ok()) return false;
  Problem p(*cost, cluster, vision, headroom);
  return internal::AnyFeasible(p);
}

// The largest value in [low, high) for which `fits` holds, assuming it holds below a point
// and not above; nullopt when not even `low` fits.
template <typename Fits>
std::optional<int64_t> LargestFitting(int64_t low, int64_t high, Fits fits) {
  if (low >= high || !fits(low)) return std::nullopt;
  while (high - low > 1) {
    const int64_t mid = low + (high - low) / 2;
    if (fits(mid)) {
      low = mid;
    } else {
      high = mid;
    }
  }
  return low;
}

std::vector<std::string> Suggestions(const PlanningModel& model, const ClusterSpec& cluster, const Plan& plan,
                                     const Resolved& resolved) {
  std::vector<std::string> out;
  const ServingLimits base = [&] {
    ServingLimits s = cluster.serving;
    s.hd_tiles = plan.cost.limits.hd_tiles > 0 ? std::optional<int64_t>(plan.cost.limits.hd_tiles) : std::nullopt;
    s.max_context = plan.cost.limits.max_context;
    s.max_images = plan.cost.limits.max_images;
    return s;
  }();
  auto fits = [&](const ServingLimits& limits, VisionPlacement vision) {
    return FitsWith(model, cluster, limits, vision, resolved.headroom);
  };
  const bool balanced_fits = fits(base, resolved.vision);
  if (plan.strategy != Strategy::kBalanced && balanced_fits) {
    out.push_back("the balanced strategy fits this cluster as it is (--strategy balanced)");
    return out;
  }
  if (resolved.vision == VisionPlacement::kFirstStage && cluster.device_count() >= 2 && model.spec.blocks.size() > 0 &&
      model.spec.blocks[0].kind == checkpoint::BlockKind::kVision && fits(base, VisionPlacement::kSeparateStage)) {
    out.push_back("vision on a device of its own fits (--vision-stage separate)");
  }
  auto with = [&](auto change) {
    ServingLimits s = base;
    change(s);
    return s;
  };
  if (auto ctx = LargestFitting(1, base.max_context, [&](int64_t v) {
        return fits(with([&](ServingLimits& s) { s.max_context = v; }), resolved.vision);
      })) {
    int64_t shown = *ctx >= 256 ? *ctx / 256 * 256 : *ctx;
    out.push_back("a shorter context fits: --max-context " + std::to_string(shown) + " (now " +
                  std::to_string(base.max_context) + ")");
  }
  if (auto seqs = LargestFitting(1, base.max_sequences, [&](int64_t v) {
        return fits(with([&](ServingLimits& s) { s.max_sequences = v; }), resolved.vision);
      })) {
    out.push_back("fewer concurrent sequences fit: --max-sequences " + std::to_string(*seqs) + " (now " +
                  std::to_string(base.max_sequences) + ")");
  }
  if (base.max_images > 0) {
    if (auto images = LargestFitting(0, base.max_images, [&](int64_t v) {
          return fits(with([&](ServingLimits& s) { s.max_images = v; }), resolved.vision);
        })) {
      out.push_back("fewer images per request fit: --max-images " + std::to_string(*images) + " (now " +
                    std::to_string(base.max_images) + ")");
    }
  }
  if (base.hd_tiles && *base.hd_tiles > 1) {
    if (auto tiles = LargestFitting(1, *base.hd_tiles, [&](int64_t v) {
          return fits(with([&](ServingLimits& s) { s.hd_tiles = v; }), resolved.vision);
        })) {
      out.push_back("fewer HD tiles per image fit: --hd-tiles " + std::to_string(*tiles) + " (now " +
                    std::to_string(*base.hd_tiles) + ")");
    }
  }
  if (base.dtype == checkpoint::DType::kF32 &&
      fits(with([](ServingLimits& s) { s.dtype = checkpoint::DType::kBF16; }), resolved.vision)) {
    out.push_back("16-bit weights fit: --dtype bf16 (now fp32)");
  }
  // More devices like the largest one, on its host: the fewest that fit (up to 64, or 4x the
  // cluster).
  size_t best_host = 0, best_gpu = 0;
  for (size_t h = 0; h < cluster.hosts.size(); ++h) {
    for (size_t g = 0; g < cluster.hosts[h].gpus.size(); ++g) {
      if (cluster.hosts[h].gpus[g].memory_gib > cluster.hosts[best_host].gpus[best_gpu].memory_gib) {
        best_host = h, best_gpu = g;
      }
    }
  }
  const GpuSpec& model_gpu = cluster.hosts[best_host].gpus[best_gpu];
  auto fits_with_extra = [&](int64_t extra) {
    ClusterSpec bigger = cluster;
    HostSpec& host = bigger.hosts[best_host];
    if (host.intra_host_gbps <= 0) host.intra_host_gbps = kAssumedIntraHostGbps;
    for (int64_t i = 0; i < extra; ++i) {
      GpuSpec gpu = model_gpu;
      gpu.device = (model_gpu.is_cuda() ? "cuda:" : "cpu:") + std::to_string(kFirstHypotheticalOrdinal + i);
      host.gpus.push_back(gpu);
    }
    return FitsWith(model, bigger, base, resolved.vision, resolved.headroom);
  };
  const int64_t max_extra = std::max<int64_t>(64, 4 * static_cast<int64_t>(cluster.device_count()));
  int64_t high = 1;
  while (high < max_extra && !fits_with_extra(high)) high = std::min(max_extra, high * 2);
  if (fits_with_extra(high)) {
    int64_t low = high / 2;  // does not fit (or 0)
    while (high - low > 1) {
      const int64_t mid = low + (high - low) / 2;
      (fits_with_extra(mid) ? high : low) = mid;
    }
    char size[32];
    std::snprintf(size, sizeof size, "%g GiB", model_gpu.memory_gib);
    out.push_back((high == 1 ? std::string("one more device") : std::to_string(high) + " more devices") + " like " +
                  cluster.hosts[best_host].name + " " + model_gpu.device + " (" + size + ") would fit");
  }
  if (out.empty()) {
    out.push_back("no single change found: the weights alone need " + Gib([&] {
                    double w = 0;
                    for (const auto& b : plan.cost.blocks) w += static_cast<double>(b.weight_bytes);
                    return w;
                  }()) +
                  "; add devices with more memory");
  }
  return out;
}

std::vector<std::string> Notes(const ModelCost& cost, const PlanningModel& model, const ServingLimits& requested) {
  std::vector<std::string> notes;
  const auto& l = cost.limits;
  if (l.context_capped) {
    notes.push_back("max_context " + std::to_string(requested.max_context) +
                    " is above the model's limit; planned for " + std::to_string(l.max_context) + " tokens");
  }
  if (l.hd_tiles < l.requested_hd_tiles || l.max_images < l.requested_max_images) {
    std::string asked = std::to_string(l.requested_max_images) + (l.requested_max_images == 1 ? " image" : " images");
    if (l.requested_hd_tiles > 0) asked += " of " + std::to_string(l.requested_hd_tiles) + " HD tiles";
    std::string planned = std::to_string(l.max_images) + (l.max_images == 1 ? " image" : " images");
    if (l.hd_tiles > 0) planned += " of " + std::to_string(l.hd_tiles) + " tiles";
    notes.push_back(asked + " would not fit in the " + std::to_string(l.max_context) + "-token context; planned for " +
                    planned + " (" + std::to_string(l.image_tokens) +
                    " tokens per image), the most a request can carry (raise --max-context for more)");
  }
  // What the model spec assumed rather than read (a default for a missing config key, ...).
  for (const auto& note : model.spec.notes) notes.push_back("model: " + note);
  return notes;
}

// One plan with `resolved.vision` first or separate, without suggestions.
StatusOr<Plan> PlanOnce(const PlanningModel& model, const ClusterSpec& cluster, const ModelCost& cost,
                        Strategy strategy, const Resolved& resolved) {
  Problem p(cost, cluster, resolved.vision, resolved.headroom);
  std::optional<Placement> placement;
  switch (strategy) {
    case Strategy::kBalanced:
      placement = internal::SolveBalanced(p);
      break;
    case Strategy::kEven:
      placement = internal::EvenPlacement(p);
      break;
    case Strategy::kGreedyMemory:
      placement = internal::GreedyMemoryPlacement(p);
      break;
  }
  if (!placement || placement->empty()) placement = internal::SolveLeastOverflow(p);

  Plan plan;
  plan.strategy = strategy;
  plan.vision = p.vision();
  plan.headroom_fraction = resolved.headroom;
  plan.cost = cost;
  std::string rule_problem;
  if (!placement || placement->empty()) {
    rule_problem = "vision on a stage of its own needs at least 2 devices; the cluster has " +
                   std::to_string(cluster.device_count());
  } else if (auto evaluated = Evaluate(model, p, *placement, strategy); evaluated.ok()) {
    plan = std::move(evaluated).value();
  } else if (strategy == Strategy::kBalanced) {
    return evaluated.status().WithContext("internal: the planner built an invalid placement");
  } else {
    // A baseline can corner itself (greedy-memory with vision alone on the last device).
    rule_problem = "the " + std::string(StrategyName(strategy)) +
                   " strategy found no placement that keeps the rules: " + evaluated.status().message();
  }
  plan.notes = Notes(cost, model, cluster.serving);
  if (!plan.feasible) plan.infeasible_reason = plan.stages.empty() ? rule_problem : OverflowReason(plan, p);
  return plan;
}

std::string Ms(double ms) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f ms", ms);
  return text;
}

// The step that bounds a plan's throughput. With vision apart, the vision stage runs beside
// the language stages (1..): their bottleneck, unless the vision stage's own step is longer.
double BoundingStepMs(const Plan& plan) {
  if (plan.vision != VisionPlacement::kSeparateStage || plan.stages.size() < 2) return plan.bottleneck_ms;
  double language = 0;
  for (size_t s = 1; s < plan.stages.size(); ++s) language = std::max(language, plan.stages[s].step_ms());
  return std::max(language, plan.stages[0].step_ms());
}

// "stage 0 on host0 cuda:0 is over by 1.20 GiB": the stage furthest
// over its usable memory, or the plan's own reason when it has no stages.
std::string WorstOverflow(const Plan& plan) {
  const StagePlan* worst = nullptr;
  for (const auto& stage : plan.stages) {
    if (stage.fits()) continue;
    if (worst == nullptr || stage.bytes.total() - stage.usable_bytes > worst->bytes.total() - worst->usable_bytes) {
      worst = &stage;
    }
  }
  if (worst == nullptr) return plan.infeasible_reason;
  return "stage " + std::to_string(worst->index) + " on " + worst->host + " " + worst->device + " is over by " +
         Gib(static_cast<double>(worst->bytes.total() - worst->usable_bytes));
}

struct AutoVision {
  VisionChoice choice;
  Plan plan;  // planned with choice.placement
};

// ChooseVisionPlacement's comparison, keeping the chosen plan so MakePlan need not plan again.
StatusOr<AutoVision> PlanBothWays(const PlanningModel& model, const ClusterSpec& cluster, const ModelCost& cost,
                                  Strategy strategy, const Resolved& resolved) {
  Resolved as_first = resolved;
  as_first.vision = VisionPlacement::kFirstStage;
  XCPIPE_ASSIGN_OR_RETURN(Plan first, PlanOnce(model, cluster, cost, strategy, as_first));
  auto keep_first = [&](std::string why) {
    return AutoVision{{VisionPlacement::kFirstStage, "vision on stage 0: " + why}, std::move(first)};
  };
  if (cost.blocks.empty() || cost.blocks[0].kind != checkpoint::BlockKind::kVision) {
    return keep_first("the model has no vision block to set apart");
  }
  if (cluster.device_count() < 2) {
    return keep_first("a vision stage of its own needs at least 2 devices, and the cluster has " +
                      std::to_string(cluster.device_count()));
  }
  Resolved as_separate = resolved;
  as_separate.vision = VisionPlacement::kSeparateStage;
  XCPIPE_ASSIGN_OR_RETURN(Plan separate, PlanOnce(model, cluster, cost, strategy, as_separate));
  auto take_separate = [&](std::string why) {
    return AutoVision{{VisionPlacement::kSeparateStage, "vision apart: " + why}, std::move(separate)};
  };
  if (!first.feasible && !separate.feasible) return keep_first("neither layout fits; shown with vision on stage 0");
  if (!first.feasible) {
    return take_separate("with vision and the embeddings on stage 0 no plan fits (" + WorstOverflow(first) +
                         "); vision on a device of its own fits");
  }
  if (!separate.feasible) {
    return keep_first("vision on a device of its own does not fit (" + WorstOverflow(separate) + ")");
  }
  const double first_ms = BoundingStepMs(first);
  const double separate_ms = BoundingStepMs(separate);
  // Which stage bounds the separate plan, for the sentence.
  const bool vision_bound = separate.stages[0].step_ms() >= separate_ms;
  const std::string compared = Ms(separate_ms) + " per step, bound by " +
                               (vision_bound ? "the vision stage" : "the language stages") + ", vs " + Ms(first_ms);
  const int gain = first_ms > 0 ? static_cast<int>(std::lround(100 * (1 - separate_ms / first_ms))) : 0;
  if (separate_ms < first_ms * (1 - kVisionApartMinGain)) {
    return take_separate("separate predicts " + std::to_string(gain) + "% faster (" + compared +
                         " with vision on stage 0)");
  }
  if (separate_ms >= first_ms) return keep_first("separate predicts no faster (" + compared + ")");
  return keep_first("separate predicts only " + std::to_string(gain) + "% faster (" + compared + "), less than the " +
                    std::to_string(static_cast<int>(std::lround(100 * kVisionApartMinGain))) +
                    "% a device of its own must win by");
}

}  // namespace

std::string_view StrategyName(Strategy strategy) {
  switch (strategy) {
    case Strategy::kBalanced:
      return "balanced";
    case Strategy::kEven:
      return "even";
    case Strategy::kGreedyMemory:
      return "greedy-memory";
  }
  return "balanced";
}

std::optional<Strategy> ParseStrategy(std::string_view name) {
  if (name == "balanced") return Strategy::kBalanced;
  if (name == "even") return Strategy::kEven;
  if (name == "greedy-memory") return Strategy::kGreedyMemory;
  return std::nullopt;
}

StatusOr<Plan> MakePlan(const PlanningModel& model, const ClusterSpec& cluster, const PlanOptions& options) {
  XCPIPE_RETURN_IF_ERROR(ValidateCluster(cluster));
  XCPIPE_ASSIGN_OR_RETURN(Resolved resolved, ResolveOptions(cluster, options));
  XCPIPE_ASSIGN_OR_RETURN(ModelCost cost,
                          EstimateModelCost(model.spec, model.tensors, model.assignment, cluster.serving));
  Plan plan;
  if (resolved.vision == VisionPlacement::kAuto) {
    XCPIPE_ASSIGN_OR_RETURN(AutoVision chosen, PlanBothWays(model, cluster, cost, options.strategy, resolved));
    plan = std::move(chosen.plan);
    plan.vision_reason = std::move(chosen.choice.reason);
    resolved.vision = chosen.choice.placement;
  } else {
    XCPIPE_ASSIGN_OR_RETURN(plan, PlanOnce(model, cluster, cost, options.strategy, resolved));
  }
  if (!plan.feasible && options.suggest_fixes) plan.suggestions = Suggestions(model, cluster, plan, resolved);
  return plan;
}

StatusOr<VisionChoice> ChooseVisionPlacement(const PlanningModel& model, const ClusterSpec& cluster,
                                             const PlanOptions& options) {
  XCPIPE_RETURN_IF_ERROR(ValidateCluster(cluster));
  XCPIPE_ASSIGN_OR_RETURN(Resolved resolved, ResolveOptions(cluster, options));
  XCPIPE_ASSIGN_OR_RETURN(ModelCost cost,
                          EstimateModelCost(model.spec, model.tensors, model.assignment, cluster.serving));
  XCPIPE_ASSIGN_OR_RETURN(AutoVision chosen, PlanBothWays(model, cluster, cost, options.strategy, resolved));
  return std::move(chosen.choice);
}

StatusOr<Plan> EvaluatePlacement(const PlanningModel& model, const ClusterSpec& cluster,
                                 const std::vector<StageAssignment>& stages, const PlanOptions& options) {
  XCPIPE_RETURN_IF_ERROR(ValidateCluster(cluster));
  XCPIPE_ASSIGN_OR_RETURN(Resolved resolved, ResolveOptions(cluster, options));
  XCPIPE_ASSIGN_OR_RETURN(ModelCost cost,
                          EstimateModelCost(model.spec, model.tensors, model.assignment, cluster.serving));
  if (resolved.vision == VisionPlacement::kAuto) {
    // The placement says which: a first stage of the vision block alone is vision apart.
    resolved.vision = !stages.empty() && stages[0].first_block == 0 && stages[0].end_block == 1 &&
                              !cost.blocks.empty() && cost.blocks[0].kind == checkpoint::BlockKind::kVision
                          ? VisionPlacement::kSeparateStage
                          : VisionPlacement::kFirstStage;
  }
  Problem p(cost, cluster, resolved.vision, resolved.headroom);
  Placement placement;
  for (size_t s = 0; s < stages.size(); ++s) {
    auto id = p.DeviceId(stages[s].device);
    if (!id) {
      return InvalidArgumentError("stage " + std::to_string(s) + ": no device hosts[" +
                                  std::to_string(stages[s].device.host) + "].gpus[" +
                                  std::to_string(stages[s].device.gpu) + "]");
    }
    placement.push_back({*id, stages[s].first_block, stages[s].end_block});
  }
  XCPIPE_ASSIGN_OR_RETURN(Plan plan, Evaluate(model, p, placement, options.strategy));
  plan.notes = Notes(cost, model, cluster.serving);
  if (!plan.feasible) plan.infeasible_reason = OverflowReason(plan, p);
  return plan;
}

}  // namespace xcpipe::planner
