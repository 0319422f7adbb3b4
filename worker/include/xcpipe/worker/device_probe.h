// Decides which device a worker computes on. Two things must hold for a CUDA device: the
// libtorch the worker runs with can compute on CUDA (Debian's cannot: it is CPU only), and the
// host has the device.
//   "cpu"     the CPU.
//   "cuda:N"  that device, or an error: Unimplemented (exit 7) when the libtorch has no CUDA,
//             saying how to build against one; Unavailable (exit 5) when the host lacks it.
//             An explicit device never falls back to the CPU: the plan was made for it.
//   "auto"    cuda:0 when both hold, else the CPU with the reason in `reason` (logged once at
//             start: "libtorch built without CUDA (CPU only): computing on the CPU"); with
//             `require_gpu`, Unavailable instead of the CPU.
#pragma once

#include <cstdint>
#include <string>

#include "xcpipe/base/status.h"

namespace xcpipe::worker {

struct DeviceChoice {
  std::string device;       // "cuda:N" or "cpu"
  std::string device_name;  // GPU name or "CPU"
  uint64_t total_bytes = 0; // device memory (CPU: physical memory)
  uint64_t free_bytes = 0;
  std::string reason;       // why this device was chosen (always set)
  // CUDA: device-to-device copy rate measured at start (the planner's speed for this worker:
  // decode streams every weight once per step); 0 when not measured (CPU).
  uint64_t memory_bandwidth_bytes_per_s = 0;
  // CUDA: bf16 matrix-product rate measured at start by libtorch (model::MeasureMatmulTflops);
  // 0 when not measured.
  double matmul_tflops = 0;
};

// `requested`: "auto", "cpu" or "cuda:N". `torch_cuda_devices`: the CUDA devices the worker's
// libtorch can compute on (model::LibtorchCudaDevices()), or -1 when that libtorch was built
// without CUDA.
StatusOr<DeviceChoice> ChooseDevice(const std::string& requested, bool require_gpu, int torch_cuda_devices);

// True when this binary was built with the CUDA/NCCL data plane.
bool BuiltWithCuda();

}  // namespace xcpipe::worker
