#include "xcpipe/planner/planner.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <regex>

#include "test_models.h"

namespace xcpipe::planner {
namespace {

using testing::DeviceSpec;
using testing::MakeCluster;
using testing::MakeSyntheticModel;
using testing::SyntheticModelOptions;

Plan MustPlan(const PlanningModel& model, const ClusterSpec& cluster, PlanOptions options = {}) {
  auto plan = MakePlan(model, cluster, options);
  EXPECT_TRUE(plan.ok()) << plan.status().ToString();
  return std::move(plan).value();
}

Plan WithStrategy(const PlanningModel& model, const ClusterSpec& cluster, Strategy strategy) {
  PlanOptions options;
  options.strategy = strategy;
  return MustPlan(model, cluster, options);
}

void ExpectRulesKept(const Plan& plan, const PlanningModel& model, const std::string& what) {
  ASSERT_FALSE(plan.stages.empty()) << what;
  const auto& first = plan.stages.front().blocks;
  if (plan.vision == VisionPlacement::kSeparateStage) {
    EXPECT_EQ(first, std::vector<std::string>{"vision"}) << what;
    EXPECT_EQ(plan.stages.at(1).blocks.front(), "embed") << what;
  } else {
    ASSERT_GE(first.size(), 2u) << what;
    EXPECT_EQ(first[0], "vision") << what;
    EXPECT_EQ(first[1], "embed") << what;
  }
  EXPECT_EQ(plan.stages.back().blocks.back(), "head") << what;
  size_t next = 0;
  for (const auto& stage : plan.stages) {
    EXPECT_EQ(stage.first_block, next) << what;
    EXPECT_GT(stage.end_block, stage.first_block) << what;
    next = stage.end_block;
  }
  EXPECT_EQ(next, model.spec.blocks.size()) << what;
  ASSERT_EQ(plan.device_map.size(), model.tensors.tensors.size()) << what;
  for (const auto& tensor : model.tensors.tensors) {
    const size_t block = model.assignment.at(tensor.name);
    const StagePlan& stage = plan.stages.at(plan.device_map.at(tensor.name));
    EXPECT_TRUE(block >= stage.first_block && block < stage.end_block) << what << ": " << tensor.name;
  }
}

// Every placement of the rules' shape on every ordered subset of devices, evaluated with the
// same cost model: the best feasible bottleneck.
double BruteForceBottleneck(const PlanningModel& model, const ClusterSpec& cluster, VisionPlacement vision,
                            const std::function<bool(const std::vector<DeviceRef>&)>& order_allowed) {
  std::vector<DeviceRef> devices;
  for (size_t h = 0; h < cluster.hosts.size(); ++h) {
    for (size_t g = 0; g < cluster.hosts[h].gpus.size(); ++g) devices.push_back({h, g});
  }
  const size_t N = model.spec.blocks.size();
  double best = INFINITY;
  PlanOptions options;
  options.vision = vision;
  std::vector<bool> used(devices.size(), false);
  std::vector<DeviceRef> order;
  std::vector<StageAssignment> stages;
  std::function<void(size_t)> place = [&](size_t first) {
    if (first == N) {
      if (!order_allowed(order)) return;
      auto plan = EvaluatePlacement(model, cluster, stages, options);
      if (plan.ok() && plan->feasible) best = std::min(best, plan->bottleneck_ms);
      return;
    }
    for (size_t d = 0; d < devices.size(); ++d) {
      if (used[d]) continue;
      for (size_t end = first + 1; end <= N; ++end) {
        used[d] = true;
        order.push_back(devices[d]);
        stages.push_back({devices[d], first, end});
        place(end);
        stages.pop_back();
        order.pop_back();
        used[d] = false;
      }
    }
  };
  place(0);
  return best;
}

bool HostContiguous(const std::vector<DeviceRef>& order) {
  std::vector<size_t> seen;
  for (size_t i = 0; i < order.size(); ++i) {
    if (i > 0 && order[i].host == order[i - 1].host) continue;
    if (std::find(seen.begin(), seen.end(), order[i].host) != seen.end()) return false;
    seen.push_back(order[i].host);
  }
  return true;
}

std::vector<int64_t> RandomWidths(std::mt19937& rng, int64_t layers) {
  std::vector<int64_t> widths;
  for (int64_t i = 0; i < layers; ++i) widths.push_back(256 * (1 + static_cast<int64_t>(rng() % 8)));
  return widths;
}

TEST(Planner, BalancedIsExactOnOneHost) {
  const unsigned seed = 7;
  std::mt19937 rng(seed);
  for (int trial = 0; trial < 12; ++trial) {
    SyntheticModelOptions options;
    options.layers = 3 + static_cast<int64_t>(rng() % 4);
    options.layer_intermediate = RandomWidths(rng, options.layers);
    options.vision_layers = 1 + static_cast<int64_t>(rng() % 6);
    const PlanningModel model = MakeSyntheticModel(options);
    std::vector<DeviceSpec> devices;
    const size_t count = 2 + rng() % 2;
    for (size_t d = 0; d < count; ++d) {
      // Two kinds at most, so the search's kind permutations cover every order.
      devices.push_back(rng() % 2 ? DeviceSpec{1.0, 5, 200} : DeviceSpec{2.0, 20, 100});
    }
    const ClusterSpec cluster = MakeCluster({devices});
    for (VisionPlacement vision : {VisionPlacement::kFirstStage, VisionPlacement::kSeparateStage}) {
      PlanOptions plan_options;
      plan_options.vision = vision;
      const Plan plan = MustPlan(model, cluster, plan_options);
      const double brute = BruteForceBottleneck(model, cluster, vision, [](const auto&) { return true; });
      const std::string what = "seed " + std::to_string(seed) + " trial " + std::to_string(trial);
      if (std::isinf(brute)) {
        EXPECT_FALSE(plan.feasible) << what;
        continue;
      }
      ASSERT_TRUE(plan.feasible) << what;
      EXPECT_NEAR(plan.bottleneck_ms, brute, 1e-9 * brute) << what;
      ExpectRulesKept(plan, model, what);
    }
  }
}

TEST(Planner, BalancedIsExactOverHostContiguousOrders) {
  const unsigned seed = 11;
  std::mt19937 rng(seed);
  for (int trial = 0; trial < 8; ++trial) {
    SyntheticModelOptions options;
    options.layers = 3 + static_cast<int64_t>(rng() % 3);
    options.layer_intermediate = RandomWidths(rng, options.layers);
    const PlanningModel model = MakeSyntheticModel(options);
    const DeviceSpec a{1.0, 10, 150}, b{1.5, 30, 100};
    const ClusterSpec cluster = MakeCluster({{a, b}, {rng() % 2 ? a : b}}, 200, 1 + rng() % 20);
    const Plan plan = MustPlan(model, cluster);
    const double brute = BruteForceBottleneck(model, cluster, VisionPlacement::kFirstStage, HostContiguous);
    const std::string what = "seed " + std::to_string(seed) + " trial " + std::to_string(trial);
    if (std::isinf(brute)) {
      EXPECT_FALSE(plan.feasible) << what;
      continue;
    }
    ASSERT_TRUE(plan.feasible) << what;
    EXPECT_NEAR(plan.bottleneck_ms, brute, 1e-9 * brute) << what;
  }
}

TEST(Planner, EvenFollowsTheOfficialRecipe) {
  SyntheticModelOptions options;
  options.layers = 32;
  const PlanningModel model = MakeSyntheticModel(options);
  // auto_configure_device_map with 2 GPUs: 19 per GPU, vision + embeddings count 3.
  Plan two = WithStrategy(model, MakeCluster({{{}, {}}}), Strategy::kEven);
  ASSERT_EQ(two.stages.size(), 2u);
  EXPECT_EQ(two.stages[0].end_block, 2u + 16);  // vision, embed, layer.0-15
  EXPECT_EQ(two.stages[1].blocks.front(), "layer.16");
  // 4 GPUs: 9.5 per GPU -> layers 0-6, 7-16, 17-26, 27-31 + head.
  Plan four = WithStrategy(model, MakeCluster({{{}, {}, {}, {}}}), Strategy::kEven);
  ASSERT_EQ(four.stages.size(), 4u);
  EXPECT_EQ(four.stages[0].blocks.back(), "layer.6");
  EXPECT_EQ(four.stages[1].blocks.front(), "layer.7");
  EXPECT_EQ(four.stages[1].blocks.back(), "layer.16");
  EXPECT_EQ(four.stages[2].blocks.back(), "layer.26");
  EXPECT_EQ(four.stages[3].blocks,
            (std::vector<std::string>{"layer.27", "layer.28", "layer.29", "layer.30", "layer.31", "head"}));
  ExpectRulesKept(four, model, "even on 4");
}

TEST(Planner, GreedyMemoryFillsDevicesInOrder) {
  SyntheticModelOptions options;
  options.layers = 24;
  options.hidden = 1024, options.intermediate = 4096, options.vocab = 16384;
  const PlanningModel model = MakeSyntheticModel(options);
  ClusterSpec cluster = MakeCluster({{{1.0, 10, 100}, {1.0, 10, 100}, {8.0, 10, 100}}});
  const Plan plan = WithStrategy(model, cluster, Strategy::kGreedyMemory);
  ASSERT_TRUE(plan.feasible);
  ASSERT_GE(plan.stages.size(), 2u);
  ExpectRulesKept(plan, model, "greedy");
  // Every stage but the last was filled until the next block would not fit.
  for (size_t s = 0; s + 1 < plan.stages.size(); ++s) {
    const StagePlan& stage = plan.stages[s];
    const GpuSpec& gpu = cluster.hosts[0].gpus[stage.device_ref.gpu];
    const StageBytes more = PredictStageBytes(plan.cost, stage.first_block, stage.end_block + 1, gpu);
    EXPECT_GT(more.total(), stage.usable_bytes) << "stage " << s;
    EXPECT_EQ(stage.device_ref.gpu, s);
  }
}

TEST(Planner, BalancedIsNeverSlowerThanTheBaselines) {
  const unsigned seed = 3;
  std::mt19937 rng(seed);
  for (int trial = 0; trial < 40; ++trial) {
    SyntheticModelOptions options;
    options.layers = 4 + static_cast<int64_t>(rng() % 30);
    options.layer_intermediate = RandomWidths(rng, options.layers);
    const PlanningModel model = MakeSyntheticModel(options);
    std::vector<std::vector<DeviceSpec>> hosts(1 + rng() % 3);
    for (auto& host : hosts) {
      for (size_t d = 0; d < 1 + rng() % 4; ++d) {
        host.push_back({0.4 + 0.1 * static_cast<double>(rng() % 20), 5.0 + static_cast<double>(rng() % 50),
                        50.0 + static_cast<double>(rng() % 500)});
      }
    }
    const ClusterSpec cluster = MakeCluster(hosts, 100, 1 + static_cast<double>(rng() % 50));
    const Plan balanced = WithStrategy(model, cluster, Strategy::kBalanced);
    const std::string what = "seed " + std::to_string(seed) + " trial " + std::to_string(trial);
    for (Strategy baseline : {Strategy::kEven, Strategy::kGreedyMemory}) {
      const Plan other = WithStrategy(model, cluster, baseline);
      if (!other.feasible) continue;
      ASSERT_TRUE(balanced.feasible) << what;
      EXPECT_LE(balanced.bottleneck_ms, other.bottleneck_ms) << what << " vs " << StrategyName(baseline);
    }
    if (balanced.feasible) {
      ExpectRulesKept(balanced, model, what);
      for (const auto& stage : balanced.stages) EXPECT_TRUE(stage.fits()) << what;
    }
  }
}

TEST(Planner, PrefersFewerCrossHostHopsAtEqualBottleneck) {
  // The vision block is so heavy that stage 0's time is the bottleneck however the layers are
  // split; the layers fit on the first host's second device, so the second host is not needed.
  SyntheticModelOptions options;
  options.layers = 4;
  options.vision_layers = 48;
  options.vision_width = 1024;
  const PlanningModel model = MakeSyntheticModel(options);
  const ClusterSpec cluster = MakeCluster({{{4, 10, 100}, {4, 10, 100}}, {{4, 10, 100}, {4, 10, 100}}}, 200, 100);
  const Plan plan = MustPlan(model, cluster);
  ASSERT_TRUE(plan.feasible);
  EXPECT_EQ(plan.bottleneck_stage, 0u);
  EXPECT_EQ(plan.cross_host_hops, 0);
  for (const auto& stage : plan.stages) EXPECT_EQ(stage.host, "host0");
}

TEST(Planner, HopsCostTimeOnTheLinkTheyCross) {
  SyntheticModelOptions options;
  options.layers = 8;
  const PlanningModel model = MakeSyntheticModel(options);
  // One device per host: the only hop crosses the 1 Gbit/s link.
  ClusterSpec cluster = MakeCluster({{{0.3, 10, 100}}, {{0.3, 10, 100}}}, 200, 1);
  const Plan plan = MustPlan(model, cluster);
  ASSERT_EQ(plan.stages.size(), 2u) << "the model needs both devices";
  const StagePlan& sender = plan.stages[0];
  EXPECT_TRUE(sender.crosses_host);
  EXPECT_EQ(plan.cross_host_hops, 1);
  const uint64_t bytes = plan.cost.blocks[sender.end_block - 1].send_bytes_per_step;
  EXPECT_DOUBLE_EQ(sender.transfer_ms, PredictTransferMs(bytes, 1, cluster.network.inter_host_latency_us));
  EXPECT_DOUBLE_EQ(sender.step_ms(), sender.compute_ms + sender.transfer_ms);
  EXPECT_EQ(plan.stages[1].transfer_ms, 0.0);
  // The same two devices on one host hop over the faster link.
  const Plan local = MustPlan(model, MakeCluster({{{0.3, 10, 100}, {0.3, 10, 100}}}, 200));
  EXPECT_LT(local.stages[0].transfer_ms, sender.transfer_ms);
}

TEST(Planner, LeavesOutADeviceThatOnlySlowsThePipeline) {
  SyntheticModelOptions options;
  options.layers = 12;
  const PlanningModel model = MakeSyntheticModel(options);
  const ClusterSpec cluster = MakeCluster({{{4, 50, 500}, {4, 0.01, 1}, {4, 50, 500}}});
  const Plan plan = MustPlan(model, cluster);
  ASSERT_TRUE(plan.feasible);
  for (const auto& stage : plan.stages) EXPECT_NE(stage.device_ref.gpu, 1u) << "the slow device holds a stage";
  const Plan even = WithStrategy(model, cluster, Strategy::kEven);
  EXPECT_LT(plan.bottleneck_ms * 10, even.bottleneck_ms);
}

TEST(Planner, FasterDevicesGetMoreLayers) {
  SyntheticModelOptions options;
  options.layers = 30;
  const PlanningModel model = MakeSyntheticModel(options);
  // Layers of this small model are compute-bound: the second device is three times faster.
  const ClusterSpec cluster = MakeCluster({{{4, 100, 1000}, {4, 300, 1000}}});
  const Plan plan = MustPlan(model, cluster);
  ASSERT_TRUE(plan.feasible);
  size_t slow_layers = 0, fast_layers = 0;
  for (const auto& stage : plan.stages) {
    const size_t layers = std::count_if(stage.blocks.begin(), stage.blocks.end(),
                                        [](const std::string& b) { return b.rfind("layer.", 0) == 0; });
    (stage.device_ref.gpu == 0 ? slow_layers : fast_layers) += layers;
  }
  EXPECT_GT(fast_layers, 2 * slow_layers);
}

TEST(Planner, SeparateVisionStage) {
  const PlanningModel model = MakeSyntheticModel();
  PlanOptions options;
  options.vision = VisionPlacement::kSeparateStage;
  const Plan plan = MustPlan(model, MakeCluster({{{}, {}, {}}}), options);
  ASSERT_TRUE(plan.feasible);
  ExpectRulesKept(plan, model, "separate");
  for (Strategy s : {Strategy::kEven, Strategy::kGreedyMemory}) {
    options.strategy = s;
    const Plan baseline = MustPlan(model, MakeCluster({{{}, {}, {}}}), options);
    ExpectRulesKept(baseline, model, std::string("separate ") + std::string(StrategyName(s)));
  }
  // One device cannot give vision a stage of its own.
  options.strategy = Strategy::kBalanced;
  const Plan one = MustPlan(model, MakeCluster({{{}}}), options);
  EXPECT_FALSE(one.feasible);
  EXPECT_NE(one.infeasible_reason.find("at least 2 devices"), std::string::npos) << one.infeasible_reason;
}

TEST(Planner, GreedyMemoryThatCornersItselfIsInfeasibleNotAnError) {
  // Vision alone fits only on the last device: greedy-memory skips the first, then has nothing
  // left for the rest of the model.
  SyntheticModelOptions options;
  options.vision_layers = 64;
  options.vision_width = 1024;
  const PlanningModel model = MakeSyntheticModel(options);
  PlanOptions plan_options;
  plan_options.strategy = Strategy::kGreedyMemory;
  plan_options.vision = VisionPlacement::kSeparateStage;
  const Plan plan = MustPlan(model, MakeCluster({{{0.5, 10, 100}, {4, 10, 100}}}), plan_options);
  EXPECT_FALSE(plan.feasible);
  EXPECT_NE(plan.infeasible_reason.find("greedy-memory strategy found no placement"), std::string::npos)
      << plan.infeasible_reason;
}

TEST(Planner, VisionStageCanComeFromTheClusterFile) {
  ClusterSpec cluster = MakeCluster({{{}, {}}});
  cluster.planner.vision = VisionPlacement::kSeparateStage;
  const Plan plan = MustPlan(MakeSyntheticModel(), cluster);
  EXPECT_EQ(plan.vision, VisionPlacement::kSeparateStage);
  EXPECT_EQ(plan.stages.front().blocks, std::vector<std::string>{"vision"});
}

PlanOptions WithVision(VisionPlacement vision, Strategy strategy = Strategy::kBalanced) {
  PlanOptions options;
  options.vision = vision;
  options.strategy = strategy;
  return options;
}

// What auto compares: the language stages' bottleneck, or the vision stage's step when longer.
double SeparateBoundMs(const Plan& plan) {
  double bound = plan.stages.at(0).step_ms();
  for (size_t s = 1; s < plan.stages.size(); ++s) bound = std::max(bound, plan.stages[s].step_ms());
  return bound;
}

void ExpectSamePlacement(const Plan& a, const Plan& b, const std::string& what) {
  EXPECT_EQ(a.vision, b.vision) << what;
  EXPECT_EQ(a.feasible, b.feasible) << what;
  EXPECT_DOUBLE_EQ(a.bottleneck_ms, b.bottleneck_ms) << what;
  ASSERT_EQ(a.stages.size(), b.stages.size()) << what;
  for (size_t s = 0; s < a.stages.size(); ++s) {
    EXPECT_EQ(a.stages[s].device_ref, b.stages[s].device_ref) << what << " stage " << s;
    EXPECT_EQ(a.stages[s].blocks, b.stages[s].blocks) << what << " stage " << s;
  }
}

TEST(Planner, AutoKeepsVisionFirstWhenSeparateIsNotFaster) {
  // A light vision tower on two equal devices: apart, one device carries every language layer.
  const PlanningModel model = MakeSyntheticModel();
  const ClusterSpec cluster = MakeCluster({{{}, {}}});
  const Plan first = MustPlan(model, cluster, WithVision(VisionPlacement::kFirstStage));
  const Plan separate = MustPlan(model, cluster, WithVision(VisionPlacement::kSeparateStage));
  ASSERT_TRUE(first.feasible && separate.feasible);
  ASSERT_GE(SeparateBoundMs(separate), first.bottleneck_ms * (1 - kVisionApartMinGain))
      << "the case needs separate to be no faster";

  auto choice = ChooseVisionPlacement(model, cluster);
  ASSERT_TRUE(choice.ok()) << choice.status().ToString();
  EXPECT_EQ(choice->placement, VisionPlacement::kFirstStage);
  EXPECT_EQ(choice->reason.rfind("vision on stage 0: separate predicts no faster", 0), 0u) << choice->reason;
  // The reason quotes the two figures compared.
  char figures[64];
  std::snprintf(figures, sizeof figures, "%.2f ms", first.bottleneck_ms);
  EXPECT_NE(choice->reason.find(figures), std::string::npos) << figures << " in " << choice->reason;

  const Plan chosen = MustPlan(model, cluster, WithVision(VisionPlacement::kAuto));
  EXPECT_EQ(chosen.vision_reason, choice->reason);
  EXPECT_TRUE(chosen.extra_vision.empty());
  ExpectSamePlacement(chosen, first, "auto vs first");
  // Without auto nothing is chosen, so there is nothing to explain.
  EXPECT_TRUE(first.vision_reason.empty());
  // One device: vision cannot have one of its own.
  auto one = ChooseVisionPlacement(model, MakeCluster({{{}}}));
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->placement, VisionPlacement::kFirstStage);
  EXPECT_NE(one->reason.find("at least 2 devices"), std::string::npos) << one->reason;
}

// The model and cluster of SuggestsVisionOnItsOwnDeviceWhenThatFits: HD vision at 25 tiles
// beside a large embedding table overflows stage 0; alone it fits.
struct VisionTooBigForStageZero {
  PlanningModel model;
  ClusterSpec cluster;
};
VisionTooBigForStageZero MakeVisionTooBigForStageZero() {
  SyntheticModelOptions options;
  options.hd = true;
  options.image_size = 336;
  options.vision_width = 512;
  options.layers = 4;
  options.vocab = 262144;
  PlanningModel model = MakeSyntheticModel(options);
  auto cost = EstimateModelCost(model.spec, model.tensors, model.assignment, ServingLimits{});
  EXPECT_TRUE(cost.ok());
  const double vision_gib =
      static_cast<double>(cost->blocks[0].weight_bytes + cost->blocks[0].activation_bytes + cost->stage_buffer_bytes) /
          kBytesPerGib +
      0.25;
  const double embed_gib = static_cast<double>(cost->blocks[1].weight_bytes) / kBytesPerGib;
  const double size = (vision_gib + 0.6 * embed_gib) / 0.9;
  return {std::move(model), MakeCluster({{{size, 10, 100}, {size, 10, 100}, {size, 10, 100}}})};
}

TEST(Planner, AutoSetsVisionApartWhenStageZeroCannotHoldIt) {
  const auto [model, cluster] = MakeVisionTooBigForStageZero();
  for (Strategy strategy : {Strategy::kBalanced, Strategy::kGreedyMemory}) {
    const std::string what(StrategyName(strategy));
    const Plan first = MustPlan(model, cluster, WithVision(VisionPlacement::kFirstStage, strategy));
    const Plan separate = MustPlan(model, cluster, WithVision(VisionPlacement::kSeparateStage, strategy));
    ASSERT_FALSE(first.feasible) << what;
    ASSERT_TRUE(separate.feasible) << what;

    PlanOptions options = WithVision(VisionPlacement::kAuto, strategy);
    auto choice = ChooseVisionPlacement(model, cluster, options);
    ASSERT_TRUE(choice.ok()) << choice.status().ToString();
    EXPECT_EQ(choice->placement, VisionPlacement::kSeparateStage) << what;
    EXPECT_EQ(choice->reason.rfind("vision apart: ", 0), 0u) << choice->reason;
    EXPECT_NE(choice->reason.find("over by"), std::string::npos) << choice->reason;

    const Plan chosen = MustPlan(model, cluster, options);
    EXPECT_TRUE(chosen.feasible) << what;
    EXPECT_TRUE(chosen.suggestions.empty()) << what;
    EXPECT_EQ(chosen.vision_reason, choice->reason) << what;
    ExpectSamePlacement(chosen, separate, what);
    ExpectRulesKept(chosen, model, what);
  }
  // The cluster file's [planner] vision_stage = "auto" does the same.
  ClusterSpec from_file = cluster;
  from_file.planner.vision = VisionPlacement::kAuto;
  EXPECT_EQ(MustPlan(model, from_file).vision, VisionPlacement::kSeparateStage);
}

TEST(Planner, AutoSetsVisionApartWhenThatIsFaster) {
  // A heavy tower and a large embedding table. The fast device holds the tower but not the
  // tower with the embeddings: with vision on stage 0 a slow device runs the tower; apart, the
  // fast one does.
  SyntheticModelOptions options;
  options.layers = 16;
  options.vision_layers = 24;
  options.vision_width = 768;
  options.vocab = 262144;
  const PlanningModel model = MakeSyntheticModel(options);
  auto cost = EstimateModelCost(model.spec, model.tensors, model.assignment, ServingLimits{});
  ASSERT_TRUE(cost.ok());
  GpuSpec probe;
  probe.reserved_gib = 0.25;
  const double alone_gib = static_cast<double>(PredictStageBytes(*cost, 0, 1, probe).total()) / kBytesPerGib;
  const double with_embed_gib = static_cast<double>(PredictStageBytes(*cost, 0, 2, probe).total()) / kBytesPerGib;
  const double small = (alone_gib + with_embed_gib) / 2 / 0.9;
  const ClusterSpec cluster = MakeCluster({{{4, 10, 100}, {4, 10, 100}, {small, 40, 400}}});
  const Plan first = MustPlan(model, cluster, WithVision(VisionPlacement::kFirstStage));
  const Plan separate = MustPlan(model, cluster, WithVision(VisionPlacement::kSeparateStage));
  ASSERT_TRUE(first.feasible && separate.feasible);
  const double first_ms = first.bottleneck_ms, separate_ms = SeparateBoundMs(separate);
  ASSERT_LT(separate_ms, first_ms * (1 - kVisionApartMinGain)) << separate_ms << " vs " << first_ms;

  auto choice = ChooseVisionPlacement(model, cluster);
  ASSERT_TRUE(choice.ok());
  EXPECT_EQ(choice->placement, VisionPlacement::kSeparateStage);
  const int gain = static_cast<int>(std::lround(100 * (1 - separate_ms / first_ms)));
  EXPECT_NE(choice->reason.find(std::to_string(gain) + "% faster"), std::string::npos) << choice->reason;
  const Plan chosen = MustPlan(model, cluster, WithVision(VisionPlacement::kAuto));
  ExpectSamePlacement(chosen, separate, "auto vs separate");
  EXPECT_EQ(chosen.stages[0].device_ref.gpu, 2u) << "the small device encodes images";
}

TEST(Planner, UnusedDevicesThatHoldTheVisionBlockBecomeVisionWorkers) {
  // The tower bounds every split, so the pipeline takes as few devices as it can (vision, then
  // the language model on one device); the rest are left over.
  SyntheticModelOptions options;
  options.layers = 4;
  options.vision_layers = 48;
  options.vision_width = 1024;
  const PlanningModel model = MakeSyntheticModel(options);
  ClusterSpec cluster = MakeCluster({{{4, 10, 100}, {4, 10, 100}, {4, 40, 400}, {0.3, 10, 100}}, {{4, 10, 100}}});
  const Plan plan = MustPlan(model, cluster, WithVision(VisionPlacement::kSeparateStage));
  ASSERT_TRUE(plan.feasible);
  ASSERT_EQ(plan.stages.front().blocks, std::vector<std::string>{"vision"});
  std::vector<DeviceRef> pipeline;
  for (const auto& stage : plan.stages) pipeline.push_back(stage.device_ref);
  size_t unused = 0, expected_extra = 0;
  for (size_t h = 0; h < cluster.hosts.size(); ++h) {
    for (size_t g = 0; g < cluster.hosts[h].gpus.size(); ++g) {
      const DeviceRef ref{h, g};
      const bool in_pipeline = std::find(pipeline.begin(), pipeline.end(), ref) != pipeline.end();
      const auto extra = std::find_if(plan.extra_vision.begin(), plan.extra_vision.end(),
                                      [&](const StagePlan& w) { return w.device_ref == ref; });
      const GpuSpec& gpu = cluster.hosts[h].gpus[g];
      const StageBytes bytes = PredictStageBytes(plan.cost, 0, 1, gpu);
      const bool holds = static_cast<double>(bytes.total()) <= static_cast<double>(gpu.capacity_bytes()) * 0.9;
      const std::string what = cluster.hosts[h].name + " " + gpu.device;
      if (in_pipeline) {
        EXPECT_EQ(extra, plan.extra_vision.end()) << what << " is in the pipeline";
        continue;
      }
      ++unused;
      expected_extra += holds ? 1 : 0;
      ASSERT_EQ(extra != plan.extra_vision.end(), holds) << what;
      if (!holds) continue;
      EXPECT_EQ(extra->blocks, std::vector<std::string>{"vision"}) << what;
      EXPECT_EQ(extra->bytes.total(), bytes.total()) << what;
      EXPECT_EQ(extra->bytes.kv, 0u) << what;
      EXPECT_EQ(extra->bytes.activations, plan.cost.blocks[0].activation_bytes) << what << ": at the most tiles";
      EXPECT_DOUBLE_EQ(extra->compute_ms, PredictBlockMs(plan.cost.blocks[0], gpu)) << what;
      EXPECT_DOUBLE_EQ(extra->encode_ms_per_image, PredictImageEncodeMs(plan.cost.blocks[0], gpu)) << what;
      EXPECT_EQ(extra->crosses_host, h != plan.stages[1].device_ref.host) << what;
      EXPECT_GT(extra->transfer_ms, 0) << what;
    }
  }
  ASSERT_GE(unused, 2u) << "the case needs devices the pipeline leaves unused";
  EXPECT_EQ(plan.extra_vision.size(), expected_extra);
  EXPECT_GE(expected_extra, 1u);
  EXPECT_LT(expected_extra, unused) << "the 0.3 GiB device is too small for the tower";
  // Vision workers are not pipeline stages.
  EXPECT_EQ(plan.device_map.size(), model.tensors.tensors.size());
  for (const auto& [tensor, stage] : plan.device_map) EXPECT_LT(stage, plan.stages.size());
  // Only a plan with vision apart has them.
  EXPECT_TRUE(MustPlan(model, cluster, WithVision(VisionPlacement::kFirstStage)).extra_vision.empty());
}

TEST(Planner, ImageEncodeTimeScalesWithTheDevicesSpeed) {
  const PlanningModel model = MakeSyntheticModel();
  // The synthetic tower is compute-bound: four times the FLOP/s, a quarter of the time.
  const Plan slow = MustPlan(model, MakeCluster({{{4, 10, 1000}}}));
  const Plan fast = MustPlan(model, MakeCluster({{{4, 40, 1000}}}));
  ASSERT_GT(slow.stages[0].encode_ms_per_image, 0);
  EXPECT_NEAR(slow.stages[0].encode_ms_per_image / fast.stages[0].encode_ms_per_image, 4.0, 1e-9);
  const BlockCost& vision = slow.cost.blocks[0];
  EXPECT_DOUBLE_EQ(slow.stages[0].encode_ms_per_image, vision.flops_per_image / (10e12 * kComputeEfficiency) * 1e3);
  // Per image: the same on a plan with a longer prefill chunk (more images per step).
  ClusterSpec longer_chunk = MakeCluster({{{4, 10, 1000}}});
  longer_chunk.serving.prefill_chunk = 2048;
  const Plan chunked = MustPlan(model, longer_chunk);
  EXPECT_DOUBLE_EQ(chunked.stages[0].encode_ms_per_image, slow.stages[0].encode_ms_per_image);
  EXPECT_GT(chunked.stages[0].compute_ms, slow.stages[0].compute_ms);
  // Stages without the vision block encode nothing; a vision stage of its own does.
  const Plan apart =
      MustPlan(model, MakeCluster({{{4, 10, 1000}, {4, 40, 1000}}}), WithVision(VisionPlacement::kSeparateStage));
  ASSERT_EQ(apart.stages.size(), 2u);
  EXPECT_DOUBLE_EQ(apart.stages[0].encode_ms_per_image,
                   PredictImageEncodeMs(apart.cost.blocks[0], MakeCluster({{{4, 10, 1000}}}).hosts[0].gpus[0]) *
                       (apart.stages[0].device_ref.gpu == 0 ? 1.0 : 0.25));
  EXPECT_EQ(apart.stages[1].encode_ms_per_image, 0.0);
}

TEST(Planner, EvaluatePlacementReadsAutoFromThePlacement) {
  const PlanningModel model = MakeSyntheticModel();
  const ClusterSpec cluster = MakeCluster({{{}, {}, {}}});
  const size_t N = model.spec.blocks.size();
  auto apart = EvaluatePlacement(model, cluster, {{{0, 0}, 0, 1}, {{0, 1}, 1, N}}, WithVision(VisionPlacement::kAuto));
  ASSERT_TRUE(apart.ok()) << apart.status().ToString();
  EXPECT_EQ(apart->vision, VisionPlacement::kSeparateStage);
  ASSERT_EQ(apart->extra_vision.size(), 1u);
  EXPECT_EQ(apart->extra_vision[0].device_ref, (DeviceRef{0, 2}));
  auto together =
      EvaluatePlacement(model, cluster, {{{0, 0}, 0, 5}, {{0, 1}, 5, N}}, WithVision(VisionPlacement::kAuto));
  ASSERT_TRUE(together.ok()) << together.status().ToString();
  EXPECT_EQ(together->vision, VisionPlacement::kFirstStage);
  EXPECT_TRUE(together->extra_vision.empty());
}

int64_t FlagValue(const std::vector<std::string>& suggestions, const std::string& flag) {
  std::regex pattern(flag + " ([0-9]+)");
  for (const auto& s : suggestions) {
    std::smatch match;
    if (std::regex_search(s, match, pattern)) return std::stoll(match[1]);
  }
  return -1;
}

TEST(Planner, InfeasiblePlansSayByHowMuchWhereAndWhatWouldFit) {
  SyntheticModelOptions options;
  options.layers = 16;
  const PlanningModel model = MakeSyntheticModel(options);
  ClusterSpec cluster = MakeCluster({{{1, 10, 100}, {1, 10, 100}}});
  cluster.serving.max_sequences = 256;  // 4 GiB of KV cache
  cluster.serving.max_context = 2048;
  const Plan plan = MustPlan(model, cluster);
  ASSERT_FALSE(plan.feasible);
  EXPECT_NE(plan.infeasible_reason.find("over by"), std::string::npos) << plan.infeasible_reason;
  EXPECT_NE(plan.infeasible_reason.find("stage "), std::string::npos) << plan.infeasible_reason;
  EXPECT_NE(plan.infeasible_reason.find("host0 cuda:"), std::string::npos) << plan.infeasible_reason;
  ASSERT_FALSE(plan.stages.empty()) << "an infeasible plan still shows the least-overflowing split";
  EXPECT_EQ(plan.device_map.size(), model.tensors.tensors.size());
  bool some_stage_over = false;
  for (const auto& stage : plan.stages) some_stage_over |= !stage.fits();
  EXPECT_TRUE(some_stage_over);

  // Each suggestion holds when tried.
  const int64_t context = FlagValue(plan.suggestions, "--max-context");
  ASSERT_GT(context, 0) << ::testing::PrintToString(plan.suggestions);
  ClusterSpec shorter = cluster;
  shorter.serving.max_context = context;
  EXPECT_TRUE(MustPlan(model, shorter).feasible);
  const int64_t sequences = FlagValue(plan.suggestions, "--max-sequences");
  ASSERT_GT(sequences, 0) << ::testing::PrintToString(plan.suggestions);
  ClusterSpec fewer = cluster;
  fewer.serving.max_sequences = sequences;
  EXPECT_TRUE(MustPlan(model, fewer).feasible);
  fewer.serving.max_sequences = sequences + 1;
  EXPECT_FALSE(MustPlan(model, fewer).feasible) << "the suggestion is the largest that fits";
  bool more_devices = false;
  for (const auto& s : plan.suggestions) more_devices |= s.find("more device") != std::string::npos;
  EXPECT_TRUE(more_devices) << ::testing::PrintToString(plan.suggestions);
}

TEST(Planner, SuggestsVisionOnItsOwnDeviceWhenThatFits) {
  // HD vision at 25 tiles has a large activation peak: with the embeddings and a layer beside
  // it, stage 0 overflows; alone it fits (devices that hold vision alone, or the embeddings with
  // a layer, but not both).
  const auto [model, cluster] = MakeVisionTooBigForStageZero();
  const Plan plan = MustPlan(model, cluster);
  ASSERT_FALSE(plan.feasible) << plan.infeasible_reason;
  bool suggested = false;
  for (const auto& s : plan.suggestions) suggested |= s.find("--vision-stage separate") != std::string::npos;
  EXPECT_TRUE(suggested) << ::testing::PrintToString(plan.suggestions);
  PlanOptions separate;
  separate.vision = VisionPlacement::kSeparateStage;
  EXPECT_TRUE(MustPlan(model, cluster, separate).feasible);
}

TEST(Planner, BaselineThatDoesNotFitPointsToBalanced) {
  SyntheticModelOptions options;
  options.layers = 16;
  const PlanningModel model = MakeSyntheticModel(options);
  // A small first device: the official recipe's fixed split overflows it; balanced shifts
  // layers to the big one.
  const auto cost = EstimateModelCost(model.spec, model.tensors, model.assignment, ServingLimits{});
  ASSERT_TRUE(cost.ok());
  uint64_t lead = cost->stage_buffer_bytes + (uint64_t{1} << 28);
  for (size_t b = 0; b < 4; ++b) lead += cost->blocks[b].weight_bytes + cost->blocks[b].kv_bytes;
  lead += cost->blocks[0].activation_bytes;
  const double small = static_cast<double>(lead) / kBytesPerGib / 0.9 + 0.05;
  const ClusterSpec cluster = MakeCluster({{{small, 10, 100}, {16, 10, 100}}});
  const Plan even = WithStrategy(model, cluster, Strategy::kEven);
  ASSERT_FALSE(even.feasible);
  ASSERT_FALSE(even.suggestions.empty());
  EXPECT_NE(even.suggestions[0].find("--strategy balanced"), std::string::npos) << even.suggestions[0];
  EXPECT_TRUE(MustPlan(model, cluster).feasible);
}

TEST(Planner, EvaluatePlacementChecksTheRules) {
  const PlanningModel model = MakeSyntheticModel();  // 8 layers: 11 blocks
  const ClusterSpec cluster = MakeCluster({{{}, {}}});
  const size_t N = model.spec.blocks.size();
  auto ok = EvaluatePlacement(model, cluster, {{{0, 0}, 0, 5}, {{0, 1}, 5, N}});
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->stages.size(), 2u);
  EXPECT_FALSE(EvaluatePlacement(model, cluster, {{{0, 0}, 0, 1}, {{0, 1}, 1, N}}).ok()) << "vision without embed";
  EXPECT_FALSE(EvaluatePlacement(model, cluster, {{{0, 0}, 0, 5}, {{0, 0}, 5, N}}).ok()) << "one device twice";
  EXPECT_FALSE(EvaluatePlacement(model, cluster, {{{0, 0}, 0, 5}, {{0, 1}, 6, N}}).ok()) << "a gap";
  EXPECT_FALSE(EvaluatePlacement(model, cluster, {{{0, 0}, 0, 5}}).ok()) << "blocks left over";
  EXPECT_FALSE(EvaluatePlacement(model, cluster, {{{0, 0}, 0, 5}, {{3, 0}, 5, N}}).ok()) << "no such device";
  EXPECT_FALSE(EvaluatePlacement(model, cluster, {}).ok());
}

TEST(Planner, CoverageProofStopsPlanningAndNamesEveryOffender) {
  const PlanningModel good = MakeSyntheticModel();
  checkpoint::TensorTable table = good.tensors;
  auto drop = std::find_if(table.tensors.begin(), table.tensors.end(),
                           [](const auto& t) { return t.name == "model.layers.0.ffn_norm.weight"; });
  ASSERT_NE(drop, table.tensors.end());
  table.tensors.erase(drop);
  checkpoint::TensorInfo extra;
  extra.name = "bogus.weight";
  extra.shape = {4};
  table.tensors.push_back(extra);
  table.tensors.push_back(*table.Find("output.weight"));
  for (auto& t : table.tensors) {
    if (t.name == "model.layers.1.attention.wo.weight") t.shape = {3, 3};
  }
  auto model = MakePlanningModel("broken", good.spec, table);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), StatusCode::kInvalidArgument);
  for (const std::string name : {"broken", "model.layers.0.ffn_norm.weight", "bogus.weight", "output.weight",
                                 "model.layers.1.attention.wo.weight"}) {
    EXPECT_NE(model.status().message().find(name), std::string::npos) << name << " in " << model.status().message();
  }
}

TEST(Planner, RejectsABadHeadroom) {
  PlanOptions options;
  options.headroom_fraction = 1.5;
  EXPECT_FALSE(MakePlan(MakeSyntheticModel(), MakeCluster({{{}}}), options).ok());
}

TEST(Planner, MoreHeadroomNeverUsesMoreMemory) {
  const PlanningModel model = MakeSyntheticModel();
  const ClusterSpec cluster = MakeCluster({{{0.5, 10, 100}, {0.5, 10, 100}}});
  for (double headroom : {0.0, 0.1, 0.3}) {
    PlanOptions options;
    options.headroom_fraction = headroom;
    const Plan plan = MustPlan(model, cluster, options);
    if (!plan.feasible) continue;
    for (const auto& stage : plan.stages) {
      EXPECT_LE(static_cast<double>(stage.bytes.total()),
                static_cast<double>(stage.capacity_bytes) * (1 - headroom) + 1);
    }
  }
}

}  // namespace
}  // namespace xcpipe::planner
