// Helpers shared by the checkpoint tests: a temporary folder, deterministic tensor bytes, file
// surgery for corrupting written files, and synthetic checkpoints derived from the fixtures.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "xcpipe/checkpoint/safetensors.h"
#include "xcpipe/checkpoint/tensor_table.h"

namespace xcpipe::checkpoint::testing {

// A fresh folder under $TMPDIR, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// `bytes` deterministic bytes that depend on `seed` (a tensor name).
std::string PatternBytes(const std::string& seed, uint64_t bytes);

std::string ReadAll(const std::filesystem::path& file);
void WriteAll(const std::filesystem::path& file, const std::string& bytes);

// Replaces the first `from` in the header JSON of a safetensors file with `to`, rewriting the
// length prefix; the data section is kept byte for byte. Returns false when `from` is absent.
bool EditHeader(const std::filesystem::path& file, const std::string& from, const std::string& to);

// Writes a checkpoint folder: config.json (and clip_vision_config.json when not null),
// the tensors of `table` split over `shards` files named model-0000K-of-0000N.safetensors with
// PatternBytes data, and the index. Returns the bytes written per tensor name.
// `duplicates_in_last_shard` are written into the last shard as well, without an index entry
// of their own (the index keeps naming the shard of their first copy).
std::map<std::string, std::string> WriteCheckpoint(const std::filesystem::path& dir, const nlohmann::json& config,
                                                   const nlohmann::json* clip_config,
                                                   const std::vector<TensorInfo>& tensors, int shards,
                                                   const std::vector<TensorInfo>& duplicates_in_last_shard = {});

// The tensors of the tiny ixc2_vl fixture rewritten to `layers` decoder layers (copies of layer
// 0's names and shapes) and a `vocab`-row vocabulary: derived from the fixture's own headers,
// not from the spec code under test.
std::vector<TensorInfo> SyntheticIxc2VlTensors(int layers, int64_t vocab);

nlohmann::json ReadJson(const std::filesystem::path& file);

}  // namespace xcpipe::checkpoint::testing
