// Safetensors reading (and writing, for mkmodel/convert).
//
// File format: 8-byte little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ..., "__metadata__": {..}}
// then the data section; offsets are relative to its start.
//
// Every header is validated before any tensor is used: N within the file and under a cap,
// valid JSON object, known dtype, non-negative shape, end - begin == numel * dtype bytes,
// offsets inside the data section, no two tensors overlapping, names unique. Each error names
// the file and the tensor.
//
// MappedCheckpoint maps only the tensors it is asked for (one private, read-only mapping per
// tensor, page-aligned), so a stage that holds layers 3-5 never maps another layer's bytes.
// Mappings are released when the MappedCheckpoint is destroyed; views must not outlive it.
// Thread-safe for concurrent reads after Open.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "xcpipe/base/status.h"
#include "xcpipe/checkpoint/tensor_table.h"

namespace xcpipe::checkpoint {

struct SafetensorsEntry {
  TensorInfo info;
  uint64_t begin = 0;  // offset of the first byte, relative to the data section
  uint64_t end = 0;
};

struct SafetensorsHeader {
  uint64_t header_bytes = 0;       // N
  uint64_t data_section_offset = 0;  // 8 + N
  std::vector<SafetensorsEntry> entries;  // in offset order
  std::map<std::string, std::string> metadata;
};

// Parses and validates a header. `file_bytes` is the total file size (bounds for offsets);
// `header_json` is the N bytes after the length prefix. `what` names the file in errors.
StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view header_json, uint64_t file_bytes,
                                                   std::string_view what);
// Reads and validates the header of one file (reads 8 + N bytes only).
StatusOr<SafetensorsHeader> ReadSafetensorsHeader(const std::filesystem::path& file);

class MappedCheckpoint {
 public:
  struct View {
    const TensorInfo* info = nullptr;
    const void* data = nullptr;  // numel * dtype bytes, read-only
  };

  // Opens the checkpoint in `dir` (index + shards) and maps every tensor for which
  // `want(name)` is true. A tensor named in the index whose shard is missing fails with
  // NotFound naming the shard.
  static StatusOr<std::unique_ptr<MappedCheckpoint>> Open(const std::filesystem::path& dir,
                                                          const std::function<bool(const std::string&)>& want);
  ~MappedCheckpoint();
  MappedCheckpoint(const MappedCheckpoint&) = delete;
  MappedCheckpoint& operator=(const MappedCheckpoint&) = delete;

  StatusOr<View> Get(std::string_view name) const;  // NotFound when absent or not mapped
  bool Has(std::string_view name) const;
  std::vector<std::string> Names() const;            // mapped tensors, sorted
  uint64_t mapped_bytes() const { return mapped_bytes_; }  // sum of mapping lengths
  uint64_t tensor_bytes() const { return tensor_bytes_; }  // sum of mapped tensors' sizes

 private:
  MappedCheckpoint() = default;
  struct Mapping {
    void* address = nullptr;
    size_t length = 0;
  };
  std::vector<Mapping> mappings_;
  std::map<std::string, std::pair<TensorInfo, const void*>, std::less<>> tensors_;
  uint64_t mapped_bytes_ = 0;
  uint64_t tensor_bytes_ = 0;
};

// Writes one safetensors file (tensors in the given order, 8-byte aligned data).
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::string_view bytes;  // numel * dtype bytes
};
Status WriteSafetensors(const std::filesystem::path& file, const std::vector<TensorToWrite>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

// Writes model.safetensors.index.json for shards already written: {"metadata": {"total_size": ..},
// "weight_map": {name: shard file name}}.
Status WriteSafetensorsIndex(const std::filesystem::path& dir, const std::map<std::string, std::string>& weight_map,
                             uint64_t total_size);

}  // namespace xcpipe::checkpoint
