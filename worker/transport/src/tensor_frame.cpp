#include "xcpipe/transport/tensor_frame.h"

#include <limits>

namespace xcpipe::transport {

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kBF16:
      return 2;
    case DType::kF16:
      return 2;
    case DType::kI64:
      return 8;
    case DType::kU8:
      return 1;
    case DType::kBool:
      return 1;
  }
  return 0;
}

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kBF16:
      return "bf16";
    case DType::kF16:
      return "f16";
    case DType::kI64:
      return "i64";
    case DType::kU8:
      return "u8";
    case DType::kBool:
      return "bool";
  }
  return "?";
}

std::optional<DType> DTypeFromName(std::string_view name) {
  for (int i = 0; i < kDTypeCount; ++i) {
    auto dtype = static_cast<DType>(i);
    if (DTypeName(dtype) == name) return dtype;
  }
  return std::nullopt;
}

std::string ShapeToString(std::span<const int64_t> shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

StatusOr<uint64_t> ElementCount(std::span<const int64_t> shape) {
  uint64_t count = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) {
      return InvalidArgumentError("dimension " + std::to_string(i) + " of shape " + ShapeToString(shape) +
                                  " is negative; expected every dimension >= 0");
    }
    auto dim = static_cast<uint64_t>(shape[i]);
    if (dim != 0 && count > std::numeric_limits<uint64_t>::max() / dim) {
      return InvalidArgumentError("element count of shape " + ShapeToString(shape) + " overflows 64 bits");
    }
    count *= dim;
  }
  return count;
}

StatusOr<uint64_t> TensorByteLength(DType dtype, std::span<const int64_t> shape) {
  XCPIPE_ASSIGN_OR_RETURN(uint64_t count, ElementCount(shape));
  uint64_t size = DTypeSize(dtype);
  if (size == 0) return InvalidArgumentError("unknown dtype " + std::to_string(static_cast<int>(dtype)));
  if (count > std::numeric_limits<uint64_t>::max() / size) {
    return InvalidArgumentError("byte length of " + std::string(DTypeName(dtype)) + " tensor of shape " +
                                ShapeToString(shape) + " overflows 64 bits");
  }
  return count * size;
}

StatusOr<TensorFrame> TensorFrame::Make(std::string name, DType dtype, std::vector<int64_t> shape,
                                        std::span<const std::byte> bytes, std::shared_ptr<const void> owner,
                                        MemoryLocation location, int device) {
  auto expected = TensorByteLength(dtype, shape);
  if (!expected.ok()) return expected.status().WithContext("tensor '" + name + "'");
  if (*expected != bytes.size()) {
    return InvalidArgumentError("tensor '" + name + "': " + std::to_string(bytes.size()) + " bytes given for " +
                                std::string(DTypeName(dtype)) + " shape " + ShapeToString(shape) + "; expected " +
                                std::to_string(*expected));
  }
  TensorFrame frame;
  frame.name_ = std::move(name);
  frame.dtype_ = dtype;
  frame.shape_ = std::move(shape);
  frame.bytes_ = bytes;
  frame.owner_ = std::move(owner);
  frame.location_ = location;
  frame.device_ = location == MemoryLocation::kHost ? -1 : device;
  return frame;
}

StatusOr<TensorFrame> TensorFrame::Borrow(std::string name, DType dtype, std::vector<int64_t> shape,
                                          std::span<const std::byte> bytes) {
  return Make(std::move(name), dtype, std::move(shape), bytes, nullptr, MemoryLocation::kHost, -1);
}

StatusOr<TensorFrame> TensorFrame::Own(std::string name, DType dtype, std::vector<int64_t> shape,
                                       std::vector<std::byte> bytes) {
  auto owned = std::make_shared<const std::vector<std::byte>>(std::move(bytes));
  std::span<const std::byte> view(owned->data(), owned->size());
  return Make(std::move(name), dtype, std::move(shape), view, std::move(owned), MemoryLocation::kHost, -1);
}

StatusOr<TensorFrame> TensorFrame::Share(std::string name, DType dtype, std::vector<int64_t> shape,
                                         std::span<const std::byte> bytes, std::shared_ptr<const void> owner,
                                         MemoryLocation location, int device) {
  if (owner == nullptr) {
    return InvalidArgumentError("tensor '" + name + "': Share() needs an owner; use Borrow() for unowned bytes");
  }
  return Make(std::move(name), dtype, std::move(shape), bytes, std::move(owner), location, device);
}

}  // namespace xcpipe::transport
