#include "xcpipe/planner/plan_output.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

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
  EXPECT_EQ(Keys(json),
            (std::set<std::string>{"strategy", "feasible", "bottleneck_ms", "stages", "vision", "device_map"}));
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
  const auto& vision = json["vision"];
  EXPECT_EQ(Keys(vision),
            (std::set<std::string>{"placement", "reason", "tower_passes", "encode_ms_per_image", "workers"}));
  EXPECT_EQ(vision["placement"], "first");
  EXPECT_EQ(vision["reason"], "");
  EXPECT_EQ(vision["tower_passes"].get<int64_t>(), plan.cost.limits.vision_passes);
  EXPECT_DOUBLE_EQ(vision["encode_ms_per_image"].get<double>(), plan.stages[0].encode_ms_per_image);
  EXPECT_TRUE(vision["workers"].empty()) << "vision runs on stage 0 with the embeddings";
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

// Vision apart with a device left over: stage 0 and one extra vision worker.
Plan SeparateWithAnExtraWorker(const PlanningModel& model, const ClusterSpec& cluster) {
  PlanOptions options;
  options.vision = VisionPlacement::kSeparateStage;
  auto plan = MakePlan(model, cluster, options);
  EXPECT_TRUE(plan.ok()) << plan.status().ToString();
  return std::move(plan).value();
}

testing::SyntheticModelOptions HeavyTower() {
  // The tower bounds every split, so the pipeline leaves a device over.
  testing::SyntheticModelOptions options;
  options.layers = 4;
  options.vision_layers = 48;
  options.vision_width = 1024;
  return options;
}

TEST(PlanOutput, JsonListsTheVisionWorkers) {
  const PlanningModel model = MakeSyntheticModel(HeavyTower());
  const Plan plan = SeparateWithAnExtraWorker(model, MakeCluster({{{4, 10, 100}, {4, 10, 100}, {4, 20, 100}}}));
  ASSERT_TRUE(plan.feasible);
  ASSERT_FALSE(plan.extra_vision.empty()) << "the case needs a device the pipeline leaves unused";
  const nlohmann::ordered_json json = PlanToJson(plan, model);
  const auto& vision = json["vision"];
  EXPECT_EQ(vision["placement"], "separate");
  const auto& workers = vision["workers"];
  ASSERT_EQ(workers.size(), 1 + plan.extra_vision.size());
  for (size_t i = 0; i < workers.size(); ++i) {
    const StagePlan& expected = i == 0 ? plan.stages[0] : plan.extra_vision[i - 1];
    const auto& w = workers[i];
    EXPECT_EQ(Keys(w), (std::set<std::string>{"role", "host", "device", "predicted_bytes", "capacity_bytes",
                                              "encode_ms_per_image"}));
    EXPECT_EQ(w["role"], i == 0 ? "stage" : "extra");
    EXPECT_EQ(w["host"], expected.host);
    EXPECT_EQ(w["device"], expected.device);
    const auto& bytes = w["predicted_bytes"];
    EXPECT_EQ(bytes["weights"].get<uint64_t>(), expected.bytes.weights);
    EXPECT_EQ(bytes["activations"].get<uint64_t>(), expected.bytes.activations);
    EXPECT_EQ(bytes["workspace"].get<uint64_t>(), expected.bytes.workspace);
    EXPECT_EQ(
        bytes["weights"].get<uint64_t>() + bytes["activations"].get<uint64_t>() + bytes["workspace"].get<uint64_t>(),
        bytes["total"].get<uint64_t>());
    EXPECT_EQ(w["capacity_bytes"].get<uint64_t>(), expected.capacity_bytes);
    EXPECT_DOUBLE_EQ(w["encode_ms_per_image"].get<double>(), expected.encode_ms_per_image);
  }
}

// The number after "encode ~" on the line that names `device`.
double EncodeMsOnLine(const std::string& table, const std::string& device) {
  std::istringstream lines(table);
  for (std::string line; std::getline(lines, line);) {
    const size_t at = line.find("encode ~");
    if (at == std::string::npos || line.find(device) == std::string::npos) continue;
    return std::stod(line.substr(at + 8));
  }
  return -1;
}

TEST(PlanOutput, TableShowsTheVisionWorkersAndTheirEncodeTime) {
  const PlanningModel model = MakeSyntheticModel(HeavyTower());
  ClusterSpec cluster = MakeCluster({{{4, 10, 100}, {4, 10, 100}, {4, 20, 100}}});
  for (size_t g = 0; g < cluster.hosts[0].gpus.size(); ++g)
    cluster.hosts[0].gpus[g].device = "cuda:" + std::to_string(g * 3);
  const Plan plan = SeparateWithAnExtraWorker(model, cluster);
  ASSERT_EQ(plan.extra_vision.size(), 1u);
  const std::string table = FormatPlanTable(plan, model, cluster);
  EXPECT_NE(table.find("vision workers"), std::string::npos) << table;
  const std::string passes = std::to_string(plan.cost.limits.vision_passes) + " tower pass";
  for (const StagePlan* w : {&plan.stages[0], &plan.extra_vision[0]}) {
    const double shown = EncodeMsOnLine(table, w->device);
    EXPECT_NEAR(shown, w->encode_ms_per_image, 0.01 * w->encode_ms_per_image) << w->device << " in\n" << table;
    char total[64];
    std::snprintf(total, sizeof total, "total %.2f / %.2f GiB", static_cast<double>(w->bytes.total()) / kBytesPerGib,
                  static_cast<double>(w->capacity_bytes) / kBytesPerGib);
    EXPECT_NE(table.find(total), std::string::npos) << total << " in\n" << table;
  }
  EXPECT_NE(table.find(passes), std::string::npos) << passes << " in\n" << table;
  EXPECT_NE(table.find("  extra "), std::string::npos) << table;

  // Vision on stage 0: one line with its encode time; the auto choice and its reason.
  PlanOptions options;
  options.vision = VisionPlacement::kAuto;
  auto first = MakePlan(model, MakeCluster({{{4, 10, 100}}}), options);
  ASSERT_TRUE(first.ok());
  const std::string one = FormatPlanTable(*first, model, MakeCluster({{{4, 10, 100}}}));
  EXPECT_EQ(one.find("vision workers"), std::string::npos) << one;
  EXPECT_NEAR(EncodeMsOnLine(one.substr(one.find("vision on stage 0")), "cuda:0"), first->stages[0].encode_ms_per_image,
              0.01 * first->stages[0].encode_ms_per_image)
      << one;
  ASSERT_FALSE(first->vision_reason.empty());
  EXPECT_NE(one.find("auto chose " + first->vision_reason), std::string::npos) << one;
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
