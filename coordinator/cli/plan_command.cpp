// `xcpipe plan`: where every tensor of a model lives on a cluster, with predicted memory and
// step time per stage. Needs no GPU and reads no weights (checkpoint headers or a layout file).
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "xcpipe/base/exit_codes.h"
#include "xcpipe/planner/cluster.h"
#include "xcpipe/planner/plan_output.h"
#include "xcpipe/planner/planner.h"
#include "xcpipe/planner/planning_model.h"

namespace xcpipe::cli {
namespace {

struct PlanFlags {
  std::string model_dir;
  std::string layout;
  std::string cluster;
  std::string strategy = "balanced";
  std::string vision_stage;
  std::string format = "table";
  bool json = false;
  std::string arch;
  std::string dtype;
  int64_t max_sequences = -1;
  int64_t max_context = -1;
  int64_t max_images = -1;
  int64_t hd_tiles = -1;
  int64_t prefill_chunk = -1;
  double headroom = -1;
};

int Fail(const Status& status) {
  std::fprintf(stderr, "xcpipe plan: %s\n", status.message().c_str());
  return ExitCodeFor(status);
}

int RunPlan(const PlanFlags& f) {
  if (f.model_dir.empty() == f.layout.empty()) {
    std::fprintf(stderr,
                 "xcpipe plan: give the model with exactly one of --model DIR or --layout FILE\n"
                 "Run with --help for usage.\n");
    return kExitUsage;
  }
  std::optional<checkpoint::ModelArch> arch;
  if (!f.arch.empty()) {
    arch = checkpoint::ParseArch(f.arch);
    if (!arch) {
      std::fprintf(stderr, "xcpipe plan: --arch must be ixc1, ixc2-vl, ixc2-4khd or ixc2.5, got '%s'\n",
                   f.arch.c_str());
      return kExitUsage;
    }
  }

  auto cluster = planner::ReadClusterFile(f.cluster);
  if (!cluster.ok()) return Fail(cluster.status());
  // Flags override the file's [serving] and [planner] tables.
  planner::ServingLimits& serving = cluster->serving;
  if (f.max_sequences >= 0) serving.max_sequences = f.max_sequences;
  if (f.max_context >= 0) serving.max_context = f.max_context;
  if (f.max_images >= 0) serving.max_images = f.max_images;
  if (f.hd_tiles >= 0) serving.hd_tiles = f.hd_tiles;
  if (f.prefill_chunk >= 0) serving.prefill_chunk = f.prefill_chunk;
  if (!f.dtype.empty()) {
    auto dtype = checkpoint::ParseDType(f.dtype);
    if (!dtype) {
      std::fprintf(stderr, "xcpipe plan: --dtype must be bf16, fp16 or fp32, got '%s'\n", f.dtype.c_str());
      return kExitUsage;
    }
    serving.dtype = *dtype;
  }
  if (Status limits = planner::ValidateServingLimits(serving); !limits.ok()) {
    std::fprintf(stderr, "xcpipe plan: %s (from the flags or %s)\n", limits.message().c_str(), f.cluster.c_str());
    return kExitUsage;
  }

  auto model = f.layout.empty() ? planner::LoadCheckpointForPlanning(f.model_dir, arch)
                                : planner::LoadLayoutForPlanning(f.layout, arch);
  if (!model.ok()) return Fail(model.status());

  planner::PlanOptions options;
  options.strategy = *planner::ParseStrategy(f.strategy);
  // Auto unless the flag or the cluster file names a placement (the file's default, first, is
  // what the serving coordinator plans with).
  if (!f.vision_stage.empty()) {
    options.vision = planner::ParseVisionPlacement(f.vision_stage);
  } else if (!cluster->planner.vision_set) {
    options.vision = planner::VisionPlacement::kAuto;
  }
  if (f.headroom >= 0) options.headroom_fraction = f.headroom;
  auto plan = planner::MakePlan(*model, *cluster, options);
  if (!plan.ok()) return Fail(plan.status());

  const std::string format = f.json ? "json" : f.format;
  if (format == "json") {
    std::cout << planner::PlanToJson(*plan, *model).dump(2) << "\n";
  } else if (format == "accelerate") {
    if (plan->feasible) {
      auto map = planner::AccelerateDeviceMap(*plan, *model);
      if (!map.ok()) {
        std::fprintf(stderr, "xcpipe plan: --format accelerate: %s\n", map.status().message().c_str());
        return kExitUsage;
      }
      std::cout << map->dump(2) << "\n";
    }
  } else {
    std::cout << planner::FormatPlanTable(*plan, *model, *cluster);
  }
  std::cout.flush();
  if (!plan->feasible) {
    std::fprintf(stderr, "xcpipe plan: %s", planner::InfeasibleMessage(*plan).c_str());
    return kExitInfeasible;
  }
  return kExitOk;
}

}  // namespace

void AddPlanCommand(CLI::App& app, Action& action) {
  auto flags = std::make_shared<PlanFlags>();
  CLI::App* sub = app.add_subcommand("plan", "plan which GPU holds which blocks, with predicted memory and speed");
  sub->add_option("--model", flags->model_dir, "checkpoint folder: config.json + safetensors (only headers are read)");
  sub->add_option("--layout", flags->layout, "layout file: every tensor's name, shape, dtype and the model config");
  sub->add_option("--cluster", flags->cluster, "cluster file (TOML; see configs/)")->required();
  sub->add_option("--strategy", flags->strategy, "balanced (default), even or greedy-memory (baselines)")
      ->check(CLI::IsMember({"balanced", "even", "greedy-memory"}));
  sub->add_option("--vision-stage", flags->vision_stage,
                  "first: vision with the embeddings on stage 0; separate: vision on a stage of its own (and on "
                  "unused devices that hold it); auto (default, unless the cluster file's [planner] vision_stage "
                  "says): plan both and keep separate when only it fits or it is more than 5% faster")
      ->check(CLI::IsMember({"first", "separate", "auto"}));
  sub->add_option("--format", flags->format, "table (default), json or accelerate (device map for dispatch_model)")
      ->check(CLI::IsMember({"table", "json", "accelerate"}));
  sub->add_flag("--json", flags->json, "same as --format json");
  sub->add_option("--max-sequences", flags->max_sequences, "sequences decoding at once (overrides [serving])")
      ->check(CLI::PositiveNumber);
  sub->add_option("--max-context", flags->max_context, "tokens per sequence, prompt + answer")
      ->check(CLI::PositiveNumber);
  sub->add_option("--max-images", flags->max_images, "images per request")->check(CLI::NonNegativeNumber);
  sub->add_option("--hd-tiles", flags->hd_tiles, "HD models: most tiles per image (default: the model's own)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--prefill-chunk", flags->prefill_chunk, "prompt tokens per pipeline step")
      ->check(CLI::PositiveNumber);
  sub->add_option("--dtype", flags->dtype, "bf16, fp16 or fp32 (weights, activations, KV cache)");
  sub->add_option("--headroom", flags->headroom, "share of each device's memory to leave free (default 0.10)")
      ->check(CLI::Range(0.0, 0.9));
  sub->add_option("--arch", flags->arch, "force the model version: ixc1, ixc2-vl, ixc2-4khd, ixc2.5");
  sub->footer(
      std::string(
          "Every tensor is placed exactly once (checked before planning); the plan shows memory per device\n"
          "by category and predicted step time per stage. No GPU and no weights are needed.\n\n"
          "  xcpipe plan --layout internlm-xcomposer2-4khd-7b.layout.json --cluster configs/cluster-2x24g.toml\n"
          "  xcpipe plan --model /tmp/m --cluster configs/cluster-cpu-3.toml --json\n"
          "  xcpipe plan --model /tmp/m --cluster configs/cluster-1x80g.toml --format accelerate > map.json\n\n"
          "Exit codes: 0 the plan fits, 2 usage error, 3 the plan cannot fit (the message says by how\n"
          "much, where, and what would make it fit), 4 invalid model, layout or cluster file.\n\n") +
      kExitCodeHelp);
  sub->callback([&action, flags] { action = [flags] { return RunPlan(*flags); }; });
}

}  // namespace xcpipe::cli
