// TensorFrame: one tensor as the data plane carries it: a name, an element type, a shape and
// its raw bytes (row-major, little-endian), with no dependency on libtorch.
//
// Value type. Copies are cheap: they share the bytes. Who keeps the bytes alive shows in how
// the frame was made:
//   * Borrow(): the frame points at memory it does not own; the caller keeps that memory
//     alive (and unchanged) until the frame and all its copies are gone. Zero copies: this is
//     how a stage sends its activations.
//   * Own(): the frame takes a byte vector and shares ownership of it among its copies.
//   * Share(): the frame shares ownership of memory held by `owner` (a pooled receive buffer,
//     a device buffer); the memory goes back to its pool when the last copy is gone. This is
//     what Receive() hands out.
// Bytes may live on a CUDA device (location() == kCudaDevice): the host never reads them; only
// the NCCL data plane accepts such frames.
//
// Construction checks that the byte count equals product(shape) * DTypeSize(dtype) (with
// overflow checks) and returns InvalidArgument naming both otherwise. Thread-safe for
// concurrent reads; the bytes are never written through a frame.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "xcpipe/base/status.h"

namespace xcpipe::transport {

// Element types; the numbers equal schemas/dataplane.capnp's DType.
enum class DType : uint8_t { kF32 = 0, kBF16 = 1, kF16 = 2, kI64 = 3, kU8 = 4, kBool = 5 };
inline constexpr int kDTypeCount = 6;

size_t DTypeSize(DType dtype);
std::string_view DTypeName(DType dtype);  // "f32", "bf16", "f16", "i64", "u8", "bool"
std::optional<DType> DTypeFromName(std::string_view name);

// Where a frame's bytes live.
enum class MemoryLocation : uint8_t { kHost = 0, kCudaDevice = 1 };

// product(shape) with overflow and sign checks; rank 0 is a scalar (1 element).
StatusOr<uint64_t> ElementCount(std::span<const int64_t> shape);
// ElementCount(shape) * DTypeSize(dtype), overflow-checked.
StatusOr<uint64_t> TensorByteLength(DType dtype, std::span<const int64_t> shape);
// "[8, 4096]"
std::string ShapeToString(std::span<const int64_t> shape);

class TensorFrame {
 public:
  TensorFrame() = default;  // name "", f32, shape {0}, no bytes

  static StatusOr<TensorFrame> Borrow(std::string name, DType dtype, std::vector<int64_t> shape,
                                      std::span<const std::byte> bytes);
  static StatusOr<TensorFrame> Own(std::string name, DType dtype, std::vector<int64_t> shape,
                                   std::vector<std::byte> bytes);
  static StatusOr<TensorFrame> Share(std::string name, DType dtype, std::vector<int64_t> shape,
                                     std::span<const std::byte> bytes, std::shared_ptr<const void> owner,
                                     MemoryLocation location = MemoryLocation::kHost, int device = -1);

  const std::string& name() const { return name_; }
  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  // Host bytes, or a device pointer range when location() is kCudaDevice.
  std::span<const std::byte> bytes() const { return bytes_; }
  uint64_t byte_length() const { return bytes_.size(); }
  MemoryLocation location() const { return location_; }
  int device() const { return device_; }  // CUDA ordinal; -1 on the host
  // True when the frame (with its copies) keeps its bytes alive; false for Borrow().
  bool owns_bytes() const { return owner_ != nullptr; }

  // Typed view of host bytes; empty when the dtype's size differs from sizeof(T), the bytes
  // are on a device, or they are not aligned for T.
  template <typename T>
  std::span<const T> as() const {
    if (location_ != MemoryLocation::kHost || sizeof(T) != DTypeSize(dtype_) ||
        reinterpret_cast<uintptr_t>(bytes_.data()) % alignof(T) != 0) {
      return {};
    }
    return {reinterpret_cast<const T*>(bytes_.data()), bytes_.size() / sizeof(T)};
  }

 private:
  static StatusOr<TensorFrame> Make(std::string name, DType dtype, std::vector<int64_t> shape,
                                    std::span<const std::byte> bytes, std::shared_ptr<const void> owner,
                                    MemoryLocation location, int device);

  std::string name_;
  DType dtype_ = DType::kF32;
  std::vector<int64_t> shape_{0};
  std::span<const std::byte> bytes_;
  std::shared_ptr<const void> owner_;
  MemoryLocation location_ = MemoryLocation::kHost;
  int device_ = -1;
};

}  // namespace xcpipe::transport
