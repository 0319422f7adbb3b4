// What the planner places: a model's spec (ordered blocks), its tensor table, and the coverage
// proof that assigns every tensor to exactly one block. Built from a checkpoint folder
// (config.json + safetensors headers, no weights read) or from a layout file
// (ReadLayoutFile in tensor_table.h: every tensor's name, shape and dtype plus the config the
// model was built with).
//
// The proof runs before anything is planned: any unknown, duplicated, missing or wrongly
// shaped tensor fails the load with InvalidArgument naming every offender, so no plan can
// leave a parameter without a device. Value type; thread-compatible.
#pragma once

#include <cstddef>
#include <filesystem>
#include <map>
#include <optional>
#include <string>

#include "xcpipe/base/status.h"
#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/checkpoint/tensor_table.h"

namespace xcpipe::planner {

struct PlanningModel {
  std::string name;  // the layout file's or the checkpoint folder's name
  checkpoint::ModelSpec spec;
  checkpoint::TensorTable tensors;
  std::map<std::string, size_t> assignment;  // tensor name -> block index, every tensor once
};

// Runs the coverage proof over an already built spec and table.
StatusOr<PlanningModel> MakePlanningModel(std::string name, checkpoint::ModelSpec spec,
                                          checkpoint::TensorTable tensors);

// A checkpoint folder: config.json (+ clip_vision_config.json) and safetensors headers.
StatusOr<PlanningModel> LoadCheckpointForPlanning(const std::filesystem::path& dir,
                                                  std::optional<checkpoint::ModelArch> arch = {});

// A layout file (checkpoint::DescribeLayout: its `config_used` or `config` object plays
// config.json, its `clip_vision_config` plays clip_vision_config.json). Named after the file.
StatusOr<PlanningModel> LoadLayoutForPlanning(const std::filesystem::path& path,
                                              std::optional<checkpoint::ModelArch> arch = {});

}  // namespace xcpipe::planner
