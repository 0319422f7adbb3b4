// Reads the tensors of a zip-format torch.save file (what official pytorch_model-*.bin shards
// are) without libtorch and without running any pickle code. Used by `xcpipe convert`.
//
// A torch.save archive holds <prefix>/data.pkl, a pickle (protocol 2) of the saved object, and
// one <prefix>/data/<key> entry per storage with its raw little-endian bytes. Tensors appear in
// the pickle as calls of torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...),
// where `storage` is a persistent id ('storage', torch.<T>Storage, key, location, numel).
//
// Safety: this is not a general unpickler. It interprets the opcodes torch.save emits, builds
// plain values, and refuses every GLOBAL except collections.OrderedDict, the torch tensor /
// parameter rebuild functions and the torch.<T>Storage classes: a pickle naming os.system,
// builtins.eval or anything else fails with InvalidArgument before anything is called (nothing
// ever is). Sizes are bounded (pickle bytes, objects, nesting), every tensor's extent is checked
// against its storage, and legacy (pre-zip, torch < 1.6) files are refused with a clear message.
// Only a flat dict / OrderedDict of name -> tensor is accepted (what state_dict() gives).
//
// TorchZipFile is a resource type; not thread-safe (one libzip handle).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "xcpipe/base/status.h"
#include "xcpipe/checkpoint/tensor_table.h"

namespace xcpipe::checkpoint {

struct TorchTensorRecord {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<int64_t> stride;  // in elements, one per dimension
  int64_t storage_offset = 0;   // in elements
  std::string storage_key;      // archive entry <prefix>/data/<storage_key>
  int64_t storage_numel = 0;    // elements in the whole storage

  int64_t numel() const;
  uint64_t bytes() const;   // numel * dtype bytes
  bool contiguous() const;  // row-major strides (size-1 dimensions ignored)
};

// The caps on a data.pkl: a 7B shard's pickle is ~100 KB.
inline constexpr uint64_t kMaxTorchPickleBytes = uint64_t{64} << 20;
inline constexpr uint64_t kMaxTorchPickleObjects = uint64_t{1} << 20;

// Interprets a data.pkl; `what` names the file in errors. Tensors in pickle (insertion) order.
StatusOr<std::vector<TorchTensorRecord>> ParseTorchStateDictPickle(std::string_view pickle, std::string_view what);

class TorchZipFile {
 public:
  // Opens the archive and parses its data.pkl (tensor data is read later, on demand).
  static StatusOr<std::unique_ptr<TorchZipFile>> Open(const std::filesystem::path& file);
  ~TorchZipFile();
  TorchZipFile(const TorchZipFile&) = delete;
  TorchZipFile& operator=(const TorchZipFile&) = delete;

  const std::vector<TorchTensorRecord>& tensors() const { return tensors_; }
  // The tensor's bytes, row-major contiguous (a strided view is gathered out of its storage).
  StatusOr<std::string> ReadTensor(const TorchTensorRecord& tensor);

 private:
  struct Archive;
  TorchZipFile();
  std::filesystem::path file_;
  std::string prefix_;  // "<prefix>/" of every entry
  std::unique_ptr<Archive> archive_;
  std::vector<TorchTensorRecord> tensors_;
};

}  // namespace xcpipe::checkpoint
