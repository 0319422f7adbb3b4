// Compute settings of a stage that callers without libtorch headers need: the dtype, the
// kernel path (CPU fast paths or the generic op sequence a GPU runs), and whether this
// build's libtorch can compute on a CUDA device. Implemented in stage_model.cpp.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "xcpipe/base/status.h"
#include "xcpipe/checkpoint/tensor_table.h"

namespace xcpipe::model {

enum class ComputeDType : uint8_t { kF32, kBF16, kF16 };

// "f32", "bf16", "f16"; InvalidArgument names the accepted values otherwise.
StatusOr<ComputeDType> ParseComputeDType(const std::string& name);
const char* ComputeDTypeName(ComputeDType dtype);

enum class KernelPath : uint8_t {
  kCpuFast,  // CPU devices: the CPU-only fast paths where they apply (stage_model.h lists them)
  kGeneric,  // only the device-agnostic op sequence, as on a CUDA device
};

// Whether the libtorch this binary runs with can compute on CUDA devices (its CUDA library
// is loaded), and how many it sees. Debian's libtorch: false, 0.
bool LibtorchHasCuda();
int LibtorchCudaDevices();

// Checks that this build can compute on `device` ("cpu" or "cuda:K") in `dtype`:
//   Unimplemented      a CUDA device with a libtorch built without CUDA (the message says
//                      what was found and how to build against a CUDA libtorch);
//   Unavailable        a CUDA device this host does not have;
//   InvalidArgument    an unknown device name, or f16 on the CPU (libtorch has no CPU
//                      half-precision matrix product: it would fail at the first step).
Status CheckComputeDevice(const std::string& device, ComputeDType dtype);

// The words of that Unimplemented refusal for `device`: what was found and how to build for
// the GPU (one text for every binary that refuses).
std::string NoCudaLibtorchMessage(const std::string& device);

// The dtype a stage computes in when none is asked for: float32 on the CPU (exact against
// the official float32 outputs), the checkpoint's 16-bit dtype on a CUDA device (bf16 for a
// float32 checkpoint).
ComputeDType DefaultComputeDType(const std::string& device, checkpoint::DType checkpoint_dtype);

// bf16 matrix-product rate of `device` in TFLOP/s: ten 4096^3 products after a warm-up, timed
// to their results. The planner's compute speed for a CUDA worker. Internal on any libtorch
// error (a device that cannot run it).
StatusOr<double> MeasureMatmulTflops(const std::string& device);

// What libtorch's CUDA caching allocator holds for this process on `device`: bytes in live
// tensors (allocated) and bytes taken from the driver (reserved: allocated plus cached). Only
// a build against a CUDA libtorch can ask (src/cuda_allocator.cpp); nullopt for a CPU device,
// in a CPU-only build, or when the device index is not a number.
struct AllocatorReading {
  uint64_t allocated_bytes = 0;
  uint64_t reserved_bytes = 0;
};
std::optional<AllocatorReading> ReadCudaAllocator(const std::string& device);

}  // namespace xcpipe::model
