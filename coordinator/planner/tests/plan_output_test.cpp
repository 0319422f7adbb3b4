#include "xcpipe/planner/plan_output.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>

#include "test_models.h"

namespace xcpipe::planner {
namespace {

using testing::MakeCluster;
using testing::MakeSyntheticModel;

std::set<std::string> Keys(const nlohmann::ordered_json& object) {
  std::set<std::string> keys;
  for (const auto& [key, value] : object.items()) keys.insert(key);
  return keys;
}

Plan MustPlan(const PlanningModel& model, const ClusterSpec& cluster) {
  auto plan = MakePlan(model, cluster);
  EXPECT_TRUE(plan.ok()) << plan.status().ToString();
  return std::move(plan).value();
}

TEST(PlanOutput, JsonHasExactlyTheDocumentedFields) {
  const PlanningModel model = MakeSyntheticModel();
  const Plan plan = MustPlan(model, MakeCluster({{{}, {}}}));
  const nlohmann::ordered_json json = PlanToJson(plan, model);
  EXPECT_EQ(Keys(json), (std::set<std::string>{"strategy", "feasible", "bottleneck_ms", "stages", "device_map"}));
  EXPECT_EQ(json["strategy"], "balanced");
  EXPECT_EQ(json["feasible"], true);
  EXPECT_DOUBLE_EQ(json["bottleneck_ms"].get<double>(), plan.bottleneck_ms);
  ASSERT_EQ(json["stages"].size(), plan.stages.size());
  for (size_t s = 0; s < plan.stages.size(); ++s) {
    const auto& stage = json["stages"][s];
    EXPECT_EQ(Keys(stage), (std::set<std::string>{"index", "host", "device", "blocks", "predicted_bytes",
                                                  "capacity_bytes", "predicted_step_ms"}));
    EXPECT_EQ(stage["index"], s);
    EXPECT_EQ(stage["host"], plan.stages[s].host);
    EXPECT_EQ(stage["device"], plan.stages[s].device);
    EXPECT_EQ(stage["blocks"].get<std::vector<std::string>>(), plan.stages[s].blocks);
    const auto& bytes = stage["predicted_bytes"];
    EXPECT_EQ(Keys(bytes), (std::set<std::string>{"weights", "kv", "activations", "total"}));
    EXPECT_EQ(bytes["weights"].get<uint64_t>() + bytes["kv"].get<uint64_t>() + bytes["activations"].get<uint64_t>(),
              bytes["total"].get<uint64_t>());
    EXPECT_EQ(bytes["total"].get<uint64_t>(), plan.stages[s].bytes.total());
    EXPECT_EQ(stage["capacity_bytes"].get<uint64_t>(), plan.stages[s].capacity_bytes);
    EXPECT_DOUBLE_EQ(stage["predicted_step_ms"].get<double>(), plan.stages[s].step_ms());
  }
  EXPECT_EQ(json["device_map"].size(), model.tensors.tensors.size());
  // In the checkpoint's order.
  EXPECT_EQ(json["device_map"].begin().key(), model.tensors.tensors.front().name);
  for (const auto& tensor : model.tensors.tensors) {
    EXPECT_EQ(json["device_map"][tensor.name].get<size_t>(), plan.device_map.at(tensor.name)) << tensor.name;
  }
}

// Which key of an accelerate device map covers a tensor (accelerate's own prefix rule).
std::vector<std::string> Covering(const nlohmann::ordered_json& map, const std::string& tensor) {
  std::vector<std::string> keys;
  for (const auto& [key, value] : map.items()) {
    if (tensor == key || tensor.rfind(key + ".", 0) == 0) keys.push_back(key);
  }
  return keys;
}

TEST(PlanOutput, AccelerateMapCoversEveryTensorOnceWithWholeModules) {
  const PlanningModel model = MakeSyntheticModel();
  ClusterSpec cluster = MakeCluster({{{}, {}, {}}});
  cluster.hosts[0].gpus[1].device = "cuda:5";
  const Plan plan = MustPlan(model, cluster);
  auto map = AccelerateDeviceMap(plan, model);
  ASSERT_TRUE(map.ok()) << map.status().ToString();
  for (const auto& tensor : model.tensors.tensors) {
    const auto keys = Covering(*map, tensor.name);
    ASSERT_EQ(keys.size(), 1u) << tensor.name;
    const StagePlan& stage = plan.stages[plan.device_map.at(tensor.name)];
    EXPECT_EQ((*map)[keys[0]].get<int>(), std::stoi(stage.device.substr(5))) << tensor.name;
  }
  // Whole modules, not parameters: a layer is one key.
  EXPECT_TRUE(map->contains("model.layers.0"));
  EXPECT_FALSE(map->contains("model.layers.0.attention.wqkv.weight"));
  EXPECT_TRUE(map->contains("output"));
}

TEST(PlanOutput, AccelerateMapUsesCpuForCpuWorkers) {
  const PlanningModel model = MakeSyntheticModel();
  ClusterSpec cluster = MakeCluster({{{}}});
  cluster.hosts[0].gpus[0].device = "cpu";
  const Plan plan = MustPlan(model, cluster);
  auto map = AccelerateDeviceMap(plan, model);
  ASSERT_TRUE(map.ok());
  for (const auto& [key, value] : map->items()) EXPECT_EQ(value, "cpu") << key;
}

TEST(PlanOutput, AccelerateRefusesAPlanSpanningHosts) {
  const PlanningModel model = MakeSyntheticModel();
  // Two tiny hosts: the model needs both.
  const Plan plan = MustPlan(model, MakeCluster({{{0.3, 10, 100}}, {{0.3, 10, 100}}}));
  ASSERT_EQ(plan.stages.size(), 2u);
  auto map = AccelerateDeviceMap(plan, model);
  ASSERT_FALSE(map.ok());
  EXPECT_EQ(map.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(map.status().message().find("one host"), std::string::npos) << map.status().message();
}

TEST(PlanOutput, TableShowsEveryStageAndTheBottleneck) {
  const PlanningModel model = MakeSyntheticModel();
  const ClusterSpec cluster = MakeCluster({{{}, {}}});
  const Plan plan = MustPlan(model, cluster);
  const std::string table = FormatPlanTable(plan, model, cluster);
  for (const std::string piece : {"stage", "host0", "cuda:0", "weights", "KV", "total / capacity GiB", "step ms",
                                  "headroom", "bottleneck: stage", "vision, embed"}) {
    EXPECT_NE(table.find(piece), std::string::npos) << piece << " in\n" << table;
  }
}

TEST(PlanOutput, InfeasibleMessageListsTheSuggestions) {
  Plan plan;
  plan.strategy = Strategy::kEven;
  plan.infeasible_reason = "stage 0 needs more";
  plan.suggestions = {"a", "b"};
  const std::string message = InfeasibleMessage(plan);
  EXPECT_NE(message.find("The even plan does not fit: stage 0 needs more."), std::string::npos) << message;
  EXPECT_NE(message.find("  - a\n  - b\n"), std::string::npos) << message;
}

}  // namespace
}  // namespace xcpipe::planner
