// Decides which device a worker computes on. A worker asked for "cuda:N" uses it when the
// build has CUDA and the device exists; "auto" picks cuda:0 when present. Otherwise it falls
// back to the CPU and says why in `reason` (logged once at start: "no CUDA device: CUDA error
// 35 (insufficient driver) -> using CPU"). A request for a CUDA device on a host without one is
// an error only when `require_gpu` is set.
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
};

// `requested`: "auto", "cpu" or "cuda:N".
StatusOr<DeviceChoice> ChooseDevice(const std::string& requested, bool require_gpu);

// True when this binary was built with the CUDA/NCCL data plane.
bool BuiltWithCuda();

}  // namespace xcpipe::worker
