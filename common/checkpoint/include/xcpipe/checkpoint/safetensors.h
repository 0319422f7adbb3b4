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
#include <optional>
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
  uint64_t header_bytes = 0;              // N
  uint64_t data_section_offset = 0;       // 8 + N
  std::vector<SafetensorsEntry> entries;  // in offset order
  std::map<std::string, std::string> metadata;
};

// The cap on N. Real headers are well under 1 MiB (a 7B model's largest shard header is about
// 100 KB); the Hugging Face reference reader refuses anything over 100 MB too.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = uint64_t{100} << 20;
// The names a checkpoint folder uses.
inline constexpr const char* kSafetensorsIndexFileName = "model.safetensors.index.json";
inline constexpr const char* kSingleSafetensorsFileName = "model.safetensors";

// Parses and validates a header. `file_bytes` is the total file size (bounds for offsets);
// `header_json` is the N bytes after the length prefix. `what` names the file in errors.
// Gaps between tensors are accepted (the reference reader refuses them; our writer never
// makes them); overlaps are not.
StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view header_json, uint64_t file_bytes,
                                                   std::string_view what);
// The same for a whole file held in memory (length prefix, header and data): what the fuzzer
// and the tests feed. Only the first 8 + N bytes are looked at.
StatusOr<SafetensorsHeader> ParseSafetensorsFile(std::string_view file_bytes, std::string_view what);
// Reads and validates the header of one file (reads 8 + N bytes only).
StatusOr<SafetensorsHeader> ReadSafetensorsHeader(const std::filesystem::path& file);

// model.safetensors.index.json: which shard holds each tensor. Validated: a JSON object with a
// "weight_map" object of name -> shard file name, no name listed twice, every shard a plain file
// name in the same folder (no '/', not "." or ".."). "metadata.total_size" is kept when present.
struct SafetensorsIndex {
  std::map<std::string, std::string> weight_map;  // tensor name -> shard file name
  std::optional<uint64_t> total_size;
  std::vector<std::string> Shards() const;  // distinct shard names, sorted
};
StatusOr<SafetensorsIndex> ReadSafetensorsIndex(const std::filesystem::path& index_file);

class MappedCheckpoint {
 public:
  struct View {
    const TensorInfo* info = nullptr;
    const void* data = nullptr;  // numel * dtype bytes, read-only
  };

  // Opens the checkpoint in `dir` (index + shards) and maps every tensor for which
  // `want(name)` is true. A tensor named in the index whose shard is missing fails with
  // NotFound naming the shard.
  //
  // Only the shards that hold wanted tensors are opened (their headers validated in full), so
  // a host that was given just its own shards can open its stage. The index decides which
  // shard a tensor is read from. A wanted tensor that its shard does not hold is NotFound;
  // `want` returning false for everything gives an empty, valid checkpoint. Each mapping
  // covers the pages of one tensor only: mapped_bytes() is the sum over wanted tensors of
  // their page-rounded extents. File descriptors are closed before Open returns.
  static StatusOr<std::unique_ptr<MappedCheckpoint>> Open(const std::filesystem::path& dir,
                                                          const std::function<bool(const std::string&)>& want);
  ~MappedCheckpoint();
  MappedCheckpoint(const MappedCheckpoint&) = delete;
  MappedCheckpoint& operator=(const MappedCheckpoint&) = delete;

  StatusOr<View> Get(std::string_view name) const;  // NotFound when absent or not mapped
  bool Has(std::string_view name) const;
  std::vector<std::string> Names() const;                  // mapped tensors, sorted
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
//
// The header is padded with spaces so the data section starts at a multiple of 8; tensors are
// then contiguous in the given order (what the reference reader requires), so each tensor is
// aligned to its element size when the ones before it keep it so (all of one dtype, or larger
// elements first). Written through a temporary file and renamed, so a reader never sees half a
// file. Refuses duplicated names and byte counts that do not match the shape.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::string_view bytes;  // numel * dtype bytes
};
Status WriteSafetensors(const std::filesystem::path& file, const std::vector<TensorToWrite>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

// The same, one tensor at a time, for tensors that do not fit in memory together
// (xcpipe convert streams 7B shards through it). Resource type, single thread.
//
//   Create ──Append (once per entry, in order)──► Finish ──► file renamed into place
//      └──────── destroyed before Finish: the temporary file is removed, `file` untouched
class SafetensorsFileWriter {
 public:
  struct Entry {
    std::string name;
    DType dtype = DType::kF32;
    std::vector<int64_t> shape;
  };
  static StatusOr<std::unique_ptr<SafetensorsFileWriter>> Create(
      const std::filesystem::path& file, std::vector<Entry> entries,
      const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsFileWriter();
  SafetensorsFileWriter(const SafetensorsFileWriter&) = delete;
  SafetensorsFileWriter& operator=(const SafetensorsFileWriter&) = delete;

  // The bytes of the next entry (exactly numel * dtype bytes).
  Status Append(std::string_view bytes);
  // Checks every entry was written, flushes and renames into place.
  Status Finish();
  uint64_t data_bytes() const { return data_bytes_; }  // size of the data section

 private:
  SafetensorsFileWriter() = default;
  std::filesystem::path file_;
  std::filesystem::path tmp_;
  std::vector<Entry> entries_;
  size_t next_ = 0;
  int fd_ = -1;
  uint64_t data_bytes_ = 0;
  bool finished_ = false;
};

// Writes model.safetensors.index.json for shards already written: {"metadata": {"total_size": ..},
// "weight_map": {name: shard file name}}.
Status WriteSafetensorsIndex(const std::filesystem::path& dir, const std::map<std::string, std::string>& weight_map,
                             uint64_t total_size);

}  // namespace xcpipe::checkpoint
