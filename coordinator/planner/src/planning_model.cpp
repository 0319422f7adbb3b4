#include "xcpipe/planner/planning_model.h"

#include <nlohmann/json.hpp>

#include "xcpipe/base/files.h"

namespace xcpipe::planner {

StatusOr<PlanningModel> MakePlanningModel(std::string name, checkpoint::ModelSpec spec,
                                          checkpoint::TensorTable tensors) {
  checkpoint::CoverageReport report = checkpoint::CheckCoverage(spec, tensors);
  if (!report.ok()) {
    Status status = report.ToStatus();
    if (status.ok()) status = InvalidArgumentError("the coverage proof failed");
    return status.WithContext("coverage proof for " + name + " (nothing was planned)");
  }
  for (const auto& tensor : tensors.tensors) {
    if (!report.assignment.count(tensor.name)) {
      return InternalError("coverage proof for " + name + ": tensor '" + tensor.name + "' passed but has no block");
    }
  }
  PlanningModel model;
  model.name = std::move(name);
  model.spec = std::move(spec);
  model.tensors = std::move(tensors);
  model.assignment = std::move(report.assignment);
  return model;
}

StatusOr<PlanningModel> LoadCheckpointForPlanning(const std::filesystem::path& dir,
                                                  std::optional<checkpoint::ModelArch> arch) {
  XCPIPE_ASSIGN_OR_RETURN(checkpoint::CheckpointDescription description, checkpoint::DescribeCheckpoint(dir, arch));
  std::string name = dir.filename().string();
  if (name.empty()) name = dir.parent_path().filename().string();
  if (name == "checkpoint") name = dir.parent_path().filename().string() + "/checkpoint";
  return MakePlanningModel(std::move(name), std::move(description.spec), std::move(description.tensors));
}

StatusOr<nlohmann::json> LayoutModelConfig(const nlohmann::json& layout) {
  if (!layout.is_object()) return InvalidArgumentError("a layout file must hold a JSON object");
  nlohmann::json config;
  if (auto it = layout.find("config_used"); it != layout.end() && it->is_object()) {
    config = *it;
  } else if (auto it = layout.find("config"); it != layout.end() && it->is_object()) {
    config = *it;  // 1.0: flat LLM fields plus nested eva_vit_g / qformer tables
  } else {
    return InvalidArgumentError("layout has neither a \"config_used\" nor a \"config\" object to build the model from");
  }
  // config.json records the checkpoint's dtype; the layout records it beside the config.
  if (!config.contains("torch_dtype")) {
    if (auto it = layout.find("dtype"); it != layout.end() && it->is_string()) config["torch_dtype"] = *it;
  }
  return config;
}

StatusOr<PlanningModel> LoadLayoutForPlanning(const std::filesystem::path& path,
                                              std::optional<checkpoint::ModelArch> arch) {
  XCPIPE_ASSIGN_OR_RETURN(nlohmann::json layout, ReadJsonFile(path));
  StatusOr<nlohmann::json> config = LayoutModelConfig(layout);
  if (!config.ok()) return config.status().WithContext(path.string());
  const nlohmann::json* clip = nullptr;
  if (auto it = layout.find("clip_vision_config"); it != layout.end() && it->is_object()) clip = &*it;
  XCPIPE_ASSIGN_OR_RETURN(checkpoint::LayoutFile file, checkpoint::ReadLayoutFile(path));
  auto spec = checkpoint::BuildModelSpec(*config, clip, file.table, arch);
  if (!spec.ok()) return spec.status().WithContext(path.string());
  std::string name = !file.model.empty() ? file.model : path.stem().string();
  return MakePlanningModel(std::move(name), std::move(spec).value(), std::move(file.table));
}

}  // namespace xcpipe::planner
