// The one source that only a CUDA libtorch can compile: reading the CUDA caching allocator.
// Built instead of cuda_allocator_none.cpp when CMake finds that libtorch has CUDA
// (XCPIPE_TORCH_CUDA); see compute.h for the contract.
#include <c10/cuda/CUDACachingAllocator.h>

#include <charconv>

#include "xcpipe/model/compute.h"

namespace xcpipe::model {

std::optional<AllocatorReading> ReadCudaAllocator(const std::string& device) {
  constexpr std::string_view kPrefix = "cuda:";
  if (device.rfind(kPrefix, 0) != 0 || !LibtorchHasCuda()) return std::nullopt;
  int index = 0;
  const char* end = device.data() + device.size();
  auto [ptr, ec] = std::from_chars(device.data() + kPrefix.size(), end, index);
  if (ec != std::errc() || ptr != end || index < 0 || index >= LibtorchCudaDevices()) return std::nullopt;
  // Index 0 of each stat array is the aggregate over pool kinds (StatType::AGGREGATE).
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(index));
  AllocatorReading r;
  r.allocated_bytes = static_cast<uint64_t>(stats.allocated_bytes[0].current);
  r.reserved_bytes = static_cast<uint64_t>(stats.reserved_bytes[0].current);
  return r;
}

}  // namespace xcpipe::model
