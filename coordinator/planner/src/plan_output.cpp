#include "xcpipe/planner/plan_output.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

namespace xcpipe::planner {
namespace {

std::string Fixed(double value, int decimals) {
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", decimals, value);
  return text;
}

std::string TokensPerSecond(double rate) { return Fixed(rate, rate < 10 ? 2 : 0); }

std::string GibNumber(double bytes) { return Fixed(bytes / kBytesPerGib, 2); }

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

std::string DtypeShort(checkpoint::DType dtype) {
  switch (dtype) {
    case checkpoint::DType::kBF16:
      return "bf16";
    case checkpoint::DType::kF16:
      return "fp16";
    case checkpoint::DType::kF32:
      return "fp32";
    default:
      return std::string(checkpoint::DTypeName(dtype));
  }
}

// Left-aligned text columns, separated by two spaces.
std::string Render(const std::vector<std::vector<std::string>>& rows, const std::vector<bool>& right_aligned) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    if (width.size() < row.size()) width.resize(row.size(), 0);
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      const size_t pad = width[c] - row[c].size();
      const bool right = c < right_aligned.size() && right_aligned[c];
      if (c > 0) line += "  ";
      if (right) line += std::string(pad, ' ');
      line += row[c];
      if (!right && c + 1 < row.size()) line += std::string(pad, ' ');
    }
    out += line + "\n";
  }
  return out;
}

// "12.3": a few significant digits, whatever the device's speed.
std::string Milliseconds(double ms) { return Fixed(ms, ms < 1 ? 3 : ms < 10 ? 2 : 1); }

// "encode ~12.3 ms per image (26 tower passes at the worst tile grid)"
std::string EncodeText(const StagePlan& stage, const ResolvedLimits& limits) {
  std::string passes =
      std::to_string(limits.vision_passes) + (limits.vision_passes == 1 ? " tower pass" : " tower passes");
  if (limits.hd_tiles > 0) passes += " at the worst tile grid";
  return "encode ~" + Milliseconds(stage.encode_ms_per_image) + " ms per image (" + passes + ")";
}

// The vision workers of a plan with vision apart: stages[0], then the extra ones.
std::vector<const StagePlan*> VisionWorkers(const Plan& plan) {
  std::vector<const StagePlan*> workers;
  if (plan.vision != VisionPlacement::kSeparateStage || plan.stages.empty()) return workers;
  workers.push_back(&plan.stages.front());
  for (const auto& extra : plan.extra_vision) workers.push_back(&extra);
  return workers;
}

}  // namespace

std::string FormatPlanTable(const Plan& plan, const PlanningModel& model, const ClusterSpec& cluster) {
  const auto& l = plan.cost.limits;
  std::string out;
  uint64_t weights = 0;
  for (const auto& b : plan.cost.blocks) weights += b.weight_bytes;
  out += "model    " + model.name + " (" + std::string(checkpoint::ArchName(model.spec.arch)) +
         "): " + std::to_string(model.tensors.tensors.size()) + " tensors in " +
         std::to_string(plan.cost.blocks.size()) + " blocks, " + GibNumber(static_cast<double>(weights)) +
         " GiB of weights at " + DtypeShort(l.dtype) + "\n";
  out += "cluster  " + cluster.source + ": " + std::to_string(cluster.hosts.size()) +
         (cluster.hosts.size() == 1 ? " host, " : " hosts, ") + std::to_string(cluster.device_count()) +
         (cluster.device_count() == 1 ? " device\n" : " devices\n");
  out += "serving  " + std::to_string(l.max_sequences) + " sequences x " + std::to_string(l.max_context) + " tokens, " +
         std::to_string(l.max_images) + (l.max_images == 1 ? " image" : " images");
  if (l.hd_tiles > 0) out += " of up to " + std::to_string(l.hd_tiles) + " HD tiles";
  out +=
      " (" + std::to_string(l.image_tokens) + " tokens each), prefill chunk " + std::to_string(l.prefill_chunk) + "\n";
  out += "plan     " + std::string(StrategyName(plan.strategy)) + ", vision " +
         (plan.vision == VisionPlacement::kSeparateStage ? "on a stage of its own" : "with the embeddings on stage 0") +
         ", headroom " + std::to_string(static_cast<int>(plan.headroom_fraction * 100 + 0.5)) + "%\n";
  if (!plan.vision_reason.empty()) out += "vision   auto chose " + plan.vision_reason + "\n";
  out += "\n";

  std::vector<std::vector<std::string>> rows = {{"stage", "host", "device", "blocks", "weights", "KV", "activ.",
                                                 "worksp.", "total / capacity GiB", "step ms", "headroom"}};
  for (const auto& s : plan.stages) {
    const double headroom = static_cast<double>(s.headroom_bytes());
    std::string headroom_text =
        GibNumber(headroom) + " GiB (" + Fixed(100.0 * headroom / static_cast<double>(s.capacity_bytes), 0) + "%)";
    if (!s.fits()) headroom_text += " OVER";
    rows.push_back(
        {std::to_string(s.index), s.host, s.device, BlockSummary(s.blocks),
         GibNumber(static_cast<double>(s.bytes.weights)), GibNumber(static_cast<double>(s.bytes.kv)),
         GibNumber(static_cast<double>(s.bytes.activations)), GibNumber(static_cast<double>(s.bytes.workspace)),
         GibNumber(static_cast<double>(s.bytes.total())) + " / " + GibNumber(static_cast<double>(s.capacity_bytes)),
         Fixed(s.step_ms(), 2) + (s.transfer_ms > 0 ? (s.crosses_host ? " (hop*)" : "") : ""), headroom_text});
  }
  out += Render(rows, {true, false, false, false, true, true, true, true, true, true, false});
  out += "\n";
  if (!plan.stages.empty()) {
    out += "bottleneck: stage " + std::to_string(plan.bottleneck_stage) + ", " + Fixed(plan.bottleneck_ms, 2) +
           " ms per step (" + std::to_string(l.max_sequences) + " decode tokens + " + std::to_string(l.prefill_chunk) +
           " prefill tokens), about " +
           TokensPerSecond(1000.0 * static_cast<double>(l.max_sequences) / plan.bottleneck_ms) +
           " decode tokens/s at full load; cross-host hops: " + std::to_string(plan.cross_host_hops) +
           (plan.cross_host_hops > 0 ? " (* marks a stage whose time includes one)" : "") + "\n";
  }
  const auto workers = VisionWorkers(plan);
  if (!workers.empty()) {
    out += "vision workers (they only encode images, beside the language stages 1..; activations at the most tiles):\n";
    std::vector<std::vector<std::string>> vision_rows;
    for (const StagePlan* w : workers) {
      const bool extra = w != &plan.stages.front();
      vision_rows.push_back({extra ? "  extra" : "  stage 0", w->host, w->device,
                             "weights " + GibNumber(static_cast<double>(w->bytes.weights)) + " GiB,",
                             "activations " + GibNumber(static_cast<double>(w->bytes.activations)) + " GiB,",
                             "workspace " + GibNumber(static_cast<double>(w->bytes.workspace)) + " GiB,",
                             "total " + GibNumber(static_cast<double>(w->bytes.total())) + " / " +
                                 GibNumber(static_cast<double>(w->capacity_bytes)) + " GiB;",
                             EncodeText(*w, l)});
    }
    out += Render(vision_rows, {});
  } else if (!plan.stages.empty() && plan.stages.front().encode_ms_per_image > 0) {
    const StagePlan& s = plan.stages.front();
    out += "vision on stage 0 (" + s.host + " " + s.device + "): " + EncodeText(s, l) + "\n";
  }
  for (const auto& note : plan.notes) out += "note: " + note + "\n";
  if (!plan.feasible) out += "INFEASIBLE: see the message on stderr\n";
  return out;
}

nlohmann::ordered_json PlanToJson(const Plan& plan, const PlanningModel& model) {
  nlohmann::ordered_json out;
  out["strategy"] = std::string(StrategyName(plan.strategy));
  out["feasible"] = plan.feasible;
  out["bottleneck_ms"] = plan.bottleneck_ms;
  nlohmann::ordered_json stages = nlohmann::ordered_json::array();
  for (const auto& s : plan.stages) {
    nlohmann::ordered_json stage;
    stage["index"] = s.index;
    stage["host"] = s.host;
    stage["device"] = s.device;
    stage["blocks"] = s.blocks;
    // Workspace is transient memory too; here it joins activations so the parts add up.
    stage["predicted_bytes"] = {{"weights", s.bytes.weights},
                                {"kv", s.bytes.kv},
                                {"activations", s.bytes.activations + s.bytes.workspace},
                                {"total", s.bytes.total()}};
    stage["capacity_bytes"] = s.capacity_bytes;
    stage["predicted_step_ms"] = s.step_ms();
    stages.push_back(std::move(stage));
  }
  out["stages"] = std::move(stages);
  nlohmann::ordered_json vision;
  vision["placement"] = std::string(VisionPlacementName(plan.vision));
  vision["reason"] = plan.vision_reason;
  vision["tower_passes"] = plan.cost.limits.vision_passes;
  vision["encode_ms_per_image"] = plan.stages.empty() ? 0.0 : plan.stages.front().encode_ms_per_image;
  nlohmann::ordered_json workers = nlohmann::ordered_json::array();
  for (const StagePlan* w : VisionWorkers(plan)) {
    nlohmann::ordered_json worker;
    worker["role"] = w == &plan.stages.front() ? "stage" : "extra";
    worker["host"] = w->host;
    worker["device"] = w->device;
    worker["predicted_bytes"] = {{"weights", w->bytes.weights},
                                 {"activations", w->bytes.activations},
                                 {"workspace", w->bytes.workspace},
                                 {"total", w->bytes.total()}};
    worker["capacity_bytes"] = w->capacity_bytes;
    worker["encode_ms_per_image"] = w->encode_ms_per_image;
    workers.push_back(std::move(worker));
  }
  vision["workers"] = std::move(workers);
  out["vision"] = std::move(vision);
  nlohmann::ordered_json device_map = nlohmann::ordered_json::object();
  for (const auto& tensor : model.tensors.tensors) {
    auto it = plan.device_map.find(tensor.name);
    if (it != plan.device_map.end()) device_map[tensor.name] = it->second;
  }
  out["device_map"] = std::move(device_map);
  return out;
}

StatusOr<nlohmann::ordered_json> AccelerateDeviceMap(const Plan& plan, const PlanningModel& model) {
  std::set<std::string> hosts;
  for (const auto& s : plan.stages) hosts.insert(s.host);
  if (hosts.size() > 1) {
    std::string names;
    for (const auto& h : hosts) names += (names.empty() ? "" : ", ") + h;
    return FailedPreconditionError(
        "accelerate.dispatch_model places a model inside one process on one host, and this "
        "plan spans " +
        std::to_string(hosts.size()) + " hosts (" + names + "); plan with a one-host cluster file for accelerate");
  }
  // For every dotted prefix: the one stage all tensors under it use, or -1 when mixed.
  std::map<std::string, int64_t> prefix_stage;
  auto prefixes = [](const std::string& name) {
    std::vector<std::string> out;
    size_t pos = 0;
    while ((pos = name.find('.', pos)) != std::string::npos) out.push_back(name.substr(0, pos++));
    out.push_back(name);
    return out;
  };
  for (const auto& tensor : model.tensors.tensors) {
    const int64_t stage = static_cast<int64_t>(plan.device_map.at(tensor.name));
    for (const auto& prefix : prefixes(tensor.name)) {
      auto [it, inserted] = prefix_stage.emplace(prefix, stage);
      if (!inserted && it->second != stage) it->second = -1;
    }
  }
  nlohmann::ordered_json map = nlohmann::ordered_json::object();
  for (const auto& tensor : model.tensors.tensors) {
    for (const auto& prefix : prefixes(tensor.name)) {
      const int64_t stage = prefix_stage.at(prefix);
      if (stage < 0) continue;
      if (!map.contains(prefix)) {
        const StagePlan& s = plan.stages.at(static_cast<size_t>(stage));
        GpuSpec device;
        device.device = s.device;
        if (auto ordinal = device.cuda_index()) {
          map[prefix] = *ordinal;
        } else {
          map[prefix] = "cpu";
        }
      }
      break;
    }
  }
  return map;
}

std::string InfeasibleMessage(const Plan& plan) {
  std::string out =
      "The " + std::string(StrategyName(plan.strategy)) + " plan does not fit: " + plan.infeasible_reason + ".\n";
  if (!plan.suggestions.empty()) {
    out += "What would make it fit (each checked by planning again):\n";
    for (const auto& s : plan.suggestions) out += "  - " + s + "\n";
  }
  return out;
}

}  // namespace xcpipe::planner
