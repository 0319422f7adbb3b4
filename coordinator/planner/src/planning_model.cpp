#include "xcpipe/planner/planning_model.h"

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

StatusOr<PlanningModel> LoadLayoutForPlanning(const std::filesystem::path& path,
                                              std::optional<checkpoint::ModelArch> arch) {
  XCPIPE_ASSIGN_OR_RETURN(checkpoint::CheckpointDescription description, checkpoint::DescribeLayout(path, arch));
  std::string name = path.filename().string();
  for (const char* suffix : {".layout.json", ".json"}) {
    const std::string_view s(suffix);
    if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) {
      name.resize(name.size() - s.size());
      break;
    }
  }
  return MakePlanningModel(std::move(name), std::move(description.spec), std::move(description.tensors));
}

}  // namespace xcpipe::planner
