// CUDA device discovery and a device self-test. Thread-safe (stateless calls into the CUDA
// runtime). Without a driver or a GPU, ProbeCudaDevices returns Unavailable with the CUDA
// error text; callers then use the CPU path (they never crash or hang on a GPU-less host).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
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

// The one device `index`, touching no other: a worker opens a CUDA context on its own device
// only (ProbeCudaDevices makes one on every device it lists). Unavailable as above, or when
// the host has fewer devices.
StatusOr<CudaDevice> ProbeCudaDevice(int index);

// Free and total memory of `device` now (cudaMemGetInfo); Unavailable on any CUDA error.
struct DeviceMemory {
  uint64_t free_bytes = 0;
  uint64_t total_bytes = 0;
};
StatusOr<DeviceMemory> QueryDeviceMemory(int device);

// Runs a small kernel on `device` that fills n floats with i*scale and copies them back;
// used by the gpu-labelled tests to prove the toolchain's code runs on the device.
StatusOr<std::vector<float>> RunFillKernel(int device, int n, float scale);

// An event recorded on `device`'s legacy default stream, where libtorch queues a stage's
// compute (xcpipe never makes libtorch use another stream). A link stream that waits on it
// (cudaStreamWaitEvent) reads the stage's output only after the kernels that wrote it: the
// hand-off is ordered without a device-wide synchronisation. The event is destroyed with the
// last copy of the pointer. Unavailable on any CUDA error.
StatusOr<std::shared_ptr<void>> RecordComputeDone(int device);

// Device-to-device copy rate of `device` in bytes per second (one copy of `bytes` read and
// written, timed with events after a warm-up): what a decode step, which streams every weight
// once, is bound by. The planner's speed for a CUDA worker comes from it.
StatusOr<uint64_t> MeasureCopyBandwidth(int device, size_t bytes = size_t{256} << 20);

// The CUDA runtime version this binary was built against, e.g. 13000.
int BuiltRuntimeVersion();

}  // namespace xcpipe::cuda
