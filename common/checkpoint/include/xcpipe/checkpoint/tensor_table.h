// Names, shapes and dtypes of a checkpoint's tensors, without their data: what the planner,
// the coverage proof and the loader agree on. Read from safetensors headers (no weight bytes
// are read) or from a layout file (../shared/fixtures/real_layouts format). Value types.
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
struct LayoutFile {
  TensorTable table;
  std::vector<std::string> optional_names;
  std::string model;  // the "model" field when present
};
StatusOr<LayoutFile> ReadLayoutFile(const std::filesystem::path& path);

}  // namespace xcpipe::checkpoint
