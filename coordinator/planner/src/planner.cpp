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
  Problem p(cost, cluster, resolved.vision, resolved.headroom);

  std::optional<Placement> placement;
  switch (options.strategy) {
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
  plan.strategy = options.strategy;
  plan.vision = p.vision();
  plan.headroom_fraction = resolved.headroom;
  plan.cost = cost;
  std::string rule_problem;
  if (!placement || placement->empty()) {
    rule_problem = "vision on a stage of its own needs at least 2 devices; the cluster has " +
                   std::to_string(cluster.device_count());
  } else if (auto evaluated = Evaluate(model, p, *placement, options.strategy); evaluated.ok()) {
    plan = std::move(evaluated).value();
  } else if (options.strategy == Strategy::kBalanced) {
    return evaluated.status().WithContext("internal: the planner built an invalid placement");
  } else {
    // A baseline can corner itself (greedy-memory with vision alone on the last device).
    rule_problem = "the " + std::string(StrategyName(options.strategy)) +
                   " strategy found no placement that keeps the rules: " + evaluated.status().message();
  }
  plan.notes = Notes(cost, model, cluster.serving);
  if (!plan.feasible) {
    if (plan.stages.empty()) {
      plan.infeasible_reason = rule_problem;
    } else {
      plan.infeasible_reason = OverflowReason(plan, p);
    }
    if (options.suggest_fixes) plan.suggestions = Suggestions(model, cluster, plan, resolved);
  }
  return plan;
}

StatusOr<Plan> EvaluatePlacement(const PlanningModel& model, const ClusterSpec& cluster,
                                 const std::vector<StageAssignment>& stages, const PlanOptions& options) {
  XCPIPE_RETURN_IF_ERROR(ValidateCluster(cluster));
  XCPIPE_ASSIGN_OR_RETURN(Resolved resolved, ResolveOptions(cluster, options));
  XCPIPE_ASSIGN_OR_RETURN(ModelCost cost,
                          EstimateModelCost(model.spec, model.tensors, model.assignment, cluster.serving));
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
