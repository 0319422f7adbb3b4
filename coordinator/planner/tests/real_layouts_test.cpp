// The planner on the real 7B layouts (the fixtures' real_layouts folder) and the example
// clusters (configs/), through the library. plan_cli_test.cpp runs the same matrix through
// the `xcpipe plan` binary.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>

#include "xcpipe/planner/planner.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::planner {
namespace {

const std::vector<std::string> kLayouts = {"internlm-xcomposer2-vl-7b.layout.json",
                                           "internlm-xcomposer2-4khd-7b.layout.json",
                                           "internlm-xcomposer2d5-7b.layout.json", "ixc1_7b.layout.json"};
const std::vector<std::string> kGpuClusters = {"cluster-1x80g.toml", "cluster-2x24g.toml", "cluster-4x24g.toml",
                                               "cluster-2hosts-2x24g.toml", "cluster-mixed-48-24.toml"};

std::filesystem::path LayoutPath(const std::string& name) {
  return xcpipe::testing::FixturesDir() / "real_layouts" / name;
}

// The layout's tensor names, read with nothing but a JSON parser.
std::vector<std::string> LayoutTensorNames(const std::filesystem::path& path) {
  std::ifstream in(path);
  const nlohmann::json layout = nlohmann::json::parse(in);
  std::vector<std::string> names;
  for (const auto& [name, entry] : layout.at("parameters").items()) names.push_back(name);
  return names;
}

bool IsVisionTensor(const std::string& name) {
  for (const char* prefix : {"vit.", "vision_proj.", "plora_", "video_mem_proj.", "visual_encoder.", "ln_vision.",
                             "Qformer.", "query_tokens", "internlm_proj.", "flag_image_"}) {
    if (name.rfind(prefix, 0) == 0) return true;
  }
  return false;
}
bool IsHeadTensor(const std::string& name) {
  return name == "output.weight" || name == "model.norm.weight" || name == "internlm_model.lm_head.weight" ||
         name == "internlm_model.model.norm.weight";
}

class RealLayouts : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(LayoutPath(kLayouts[0]))) {
      GTEST_SKIP() << "fixtures not found: " << LayoutPath(kLayouts[0]);
    }
  }
  static PlanningModel Model(const std::string& layout) {
    auto model = LoadLayoutForPlanning(LayoutPath(layout));
    EXPECT_TRUE(model.ok()) << layout << ": " << model.status().ToString();
    return std::move(model).value();
  }
  static ClusterSpec Cluster(const std::string& name) {
    auto cluster = ReadClusterFile(xcpipe::testing::SourceDir() / "configs" / name);
    EXPECT_TRUE(cluster.ok()) << name << ": " << cluster.status().ToString();
    return std::move(cluster).value();
  }
  static Plan PlanWith(const PlanningModel& model, const ClusterSpec& cluster, Strategy strategy) {
    PlanOptions options;
    options.strategy = strategy;
    auto plan = MakePlan(model, cluster, options);
    EXPECT_TRUE(plan.ok()) << plan.status().ToString();
    return std::move(plan).value();
  }
};

TEST_F(RealLayouts, EveryTensorPlacedOnceAndEveryStageFits) {
  for (const auto& layout : kLayouts) {
    const PlanningModel model = Model(layout);
    const auto names = LayoutTensorNames(LayoutPath(layout));
    ASSERT_GT(names.size(), 900u) << layout;
    for (const auto& cluster_name : kGpuClusters) {
      const ClusterSpec cluster = Cluster(cluster_name);
      const std::string what = layout + " on " + cluster_name;
      const Plan plan = PlanWith(model, cluster, Strategy::kBalanced);
      ASSERT_TRUE(plan.feasible) << what << ": " << plan.infeasible_reason;
      ASSERT_EQ(plan.device_map.size(), names.size()) << what;
      for (const auto& name : names) {
        auto it = plan.device_map.find(name);
        ASSERT_NE(it, plan.device_map.end()) << what << ": " << name << " has no stage";
        ASSERT_LT(it->second, plan.stages.size()) << what;
        if (IsVisionTensor(name)) {
          EXPECT_EQ(it->second, 0u) << what << ": " << name;
        }
        if (IsHeadTensor(name)) {
          EXPECT_EQ(it->second, plan.stages.size() - 1) << what << ": " << name;
        }
      }
      std::set<std::string> devices;
      for (const auto& stage : plan.stages) {
        EXPECT_LE(stage.bytes.total(), stage.usable_bytes) << what << " stage " << stage.index;
        EXPECT_LT(stage.bytes.total(), stage.capacity_bytes) << what << " stage " << stage.index;
        EXPECT_TRUE(devices.insert(stage.host + "/" + stage.device).second) << what;
      }
    }
  }
}

TEST_F(RealLayouts, BalancedIsNeverSlowerThanTheBaselinesAndFasterOnMixedAndTwoHosts) {
  for (const auto& layout : kLayouts) {
    const PlanningModel model = Model(layout);
    for (const auto& cluster_name : kGpuClusters) {
      const ClusterSpec cluster = Cluster(cluster_name);
      const std::string what = layout + " on " + cluster_name;
      const Plan balanced = PlanWith(model, cluster, Strategy::kBalanced);
      const bool must_win = cluster_name == "cluster-mixed-48-24.toml" || cluster_name == "cluster-2hosts-2x24g.toml";
      for (Strategy strategy : {Strategy::kEven, Strategy::kGreedyMemory}) {
        const Plan baseline = PlanWith(model, cluster, strategy);
        const std::string versus = what + ", balanced vs " + std::string(StrategyName(strategy));
        if (must_win) {
          ASSERT_TRUE(baseline.feasible) << versus;
        }
        if (!baseline.feasible) continue;
        EXPECT_LE(balanced.bottleneck_ms, baseline.bottleneck_ms) << versus;
        if (must_win) {
          EXPECT_LT(balanced.bottleneck_ms, baseline.bottleneck_ms) << versus;
        }
      }
    }
  }
}

// Every split of the 4KHD model over every ordered choice of the mixed cluster's devices.
TEST_F(RealLayouts, BalancedMatchesExhaustiveSearchOnTheMixedCluster) {
  const PlanningModel model = Model(kLayouts[1]);
  const ClusterSpec cluster = Cluster("cluster-mixed-48-24.toml");
  const size_t N = model.spec.blocks.size();
  const std::vector<DeviceRef> devices = {{0, 0}, {0, 1}, {0, 2}};
  double best = INFINITY;
  size_t evaluated = 0;
  std::vector<StageAssignment> stages;
  std::vector<bool> used(devices.size(), false);
  std::function<void(size_t)> place = [&](size_t first) {
    if (first == N) {
      auto plan = EvaluatePlacement(model, cluster, stages);
      ++evaluated;
      if (plan.ok() && plan->feasible) best = std::min(best, plan->bottleneck_ms);
      return;
    }
    for (size_t d = 0; d < devices.size(); ++d) {
      if (used[d]) continue;
      // The first stage holds vision and the embeddings (the rules; others are refused anyway).
      for (size_t end = first == 0 ? 2 : first + 1; end <= N; ++end) {
        used[d] = true;
        stages.push_back({devices[d], first, end});
        place(end);
        stages.pop_back();
        used[d] = false;
      }
    }
  };
  place(0);
  ASSERT_GT(evaluated, 1000u);
  const Plan plan = PlanWith(model, cluster, Strategy::kBalanced);
  ASSERT_TRUE(plan.feasible);
  EXPECT_DOUBLE_EQ(plan.bottleneck_ms, best);
}

TEST_F(RealLayouts, SevenBillionParametersDoNotFitTheCpuCluster) {
  const ClusterSpec cluster = Cluster("cluster-cpu-3.toml");
  for (const auto& layout : kLayouts) {
    const Plan plan = PlanWith(Model(layout), cluster, Strategy::kBalanced);
    EXPECT_FALSE(plan.feasible) << layout;
    EXPECT_NE(plan.infeasible_reason.find("over by"), std::string::npos) << plan.infeasible_reason;
    EXPECT_FALSE(plan.suggestions.empty()) << layout;
  }
}

TEST_F(RealLayouts, SeparateVisionStageOnFourGpus) {
  const ClusterSpec cluster = Cluster("cluster-4x24g.toml");
  PlanOptions options;
  options.vision = VisionPlacement::kSeparateStage;
  for (const auto& layout : kLayouts) {
    auto plan = MakePlan(Model(layout), cluster, options);
    ASSERT_TRUE(plan.ok());
    ASSERT_TRUE(plan->feasible) << layout;
    EXPECT_EQ(plan->stages[0].blocks, std::vector<std::string>{"vision"}) << layout;
  }
}

}  // namespace
}  // namespace xcpipe::planner
