// Names, shapes and dtypes of a checkpoint's tensors, without their data: what the planner,
// the coverage proof and the loader agree on. Read from safetensors headers (no weight bytes
// are read) or from a layout file (ReadLayoutFile below). Value types.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "xcpipe/base/status.h"

namespace xcpipe::checkpoint {

enum class DType : uint8_t { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool };

size_t DTypeBytes(DType dtype);
std::string_view DTypeName(DType dtype);  // safetensors spelling: "F32", "BF16", ...
// Accepts safetensors ("F32"), numpy/torch ("float32", "torch.bfloat16") and short ("fp16",
// "bf16") spellings. nullopt for anything else.
std::optional<DType> ParseDType(std::string_view name);

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::string file;  // shard file name it lives in (empty for layout files)

  int64_t numel() const;
  uint64_t bytes() const { return static_cast<uint64_t>(numel()) * DTypeBytes(dtype); }
};

// The tensors in file order. Duplicated names are kept (the coverage proof reports them).
struct TensorTable {
  std::vector<TensorInfo> tensors;
  std::string source;  // where it came from, for messages

  const TensorInfo* Find(std::string_view name) const;  // first match
  uint64_t total_bytes() const;
};

// Reads every shard header named by model.safetensors.index.json (or the single
// model.safetensors) in `dir`. Reads headers only; validates each (see safetensors.h).
StatusOr<TensorTable> ReadCheckpointTensorTable(const std::filesystem::path& dir);

// Reads a layout file: {"parameters": {name: {"shape": [...], "dtype": "..."}, ...}}.
// Entries marked "optional": true are kept with optional=true in `optional_names`.
//
// Also understood (all optional): "optional" given as a non-empty string (a reason) counts as
// true, and "in_released_checkpoint" other than true (false, or "unknown ...") marks the entry
// optional too; "numel", when present, must equal the product of the shape. Entries keep the
// file's (state_dict) order. Duplicated names, unknown dtypes and negative dimensions fail with
// InvalidArgument naming the file and the entry.
struct LayoutFile {
  TensorTable table;
  std::vector<std::string> optional_names;
  std::string model;  // the "model" field when present

  // The config the layout was made with, as JSON text ("" when absent): "config_used" (2.x
  // layouts) or "config" (the 1.0 layout, which also nests "eva_vit_g" and "qformer").
  // Parse it and hand it to BuildModelSpec, or use DescribeLayout (model_spec.h).
  std::string config_json;
  std::string clip_config_json;  // "clip_vision_config" as JSON text ("" when absent)
  // 1.0 only: "lora_parameters_pattern", every LoRA tensor the code can create, with a
  // placeholder rank (the real rank is unknown). Not part of `table`.
  TensorTable lora_pattern;
  // "non_persistent_buffers": rotary caches and position ids rebuilt at construction; never
  // in a checkpoint, listed so the planner can count them. Not part of `table`.
  TensorTable non_persistent_buffers;
};
StatusOr<LayoutFile> ReadLayoutFile(const std::filesystem::path& path);

}  // namespace xcpipe::checkpoint
