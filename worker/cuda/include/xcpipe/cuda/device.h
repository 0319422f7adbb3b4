// CUDA device discovery and a device self-test. Thread-safe (stateless calls into the CUDA
// runtime). Without a driver or a GPU, ProbeCudaDevices returns Unavailable with the CUDA
// error text; callers then use the CPU path (they never crash or hang on a GPU-less host).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "xcpipe/base/status.h"

namespace xcpipe::cuda {

struct CudaDevice {
  int index = 0;
  std::string name;
  uint64_t total_bytes = 0;
  uint64_t free_bytes = 0;
  int compute_major = 0;
  int compute_minor = 0;
};

// Lists the visible devices. Unavailable when the runtime reports any error (no driver:
// error 35; no device: error 100) or zero devices.
StatusOr<std::vector<CudaDevice>> ProbeCudaDevices();

// Free and total memory of `device` now (cudaMemGetInfo); Unavailable on any CUDA error.
struct DeviceMemory {
  uint64_t free_bytes = 0;
  uint64_t total_bytes = 0;
};
StatusOr<DeviceMemory> QueryDeviceMemory(int device);

// Runs a small kernel on `device` that fills n floats with i*scale and copies them back;
// used by the gpu-labelled tests to prove the toolchain's code runs on the device.
StatusOr<std::vector<float>> RunFillKernel(int device, int n, float scale);

// The CUDA runtime version this binary was built against, e.g. 13000.
int BuiltRuntimeVersion();

}  // namespace xcpipe::cuda
