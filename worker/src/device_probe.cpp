#include "xcpipe/worker/device_probe.h"

#include "xcpipe/model/compute.h"

#include <unistd.h>

#include <charconv>

#ifdef XCPIPE_HAVE_CUDA
#include "xcpipe/cuda/device.h"
#endif

namespace xcpipe::worker {
namespace {

DeviceChoice Cpu(std::string reason) {
  DeviceChoice c;
  c.device = "cpu";
  c.device_name = "CPU";
  long pages = sysconf(_SC_PHYS_PAGES);
  long avail = sysconf(_SC_AVPHYS_PAGES);
  long page = sysconf(_SC_PAGESIZE);
  c.total_bytes = pages > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : 0;
  c.free_bytes = avail > 0 ? static_cast<uint64_t>(avail) * static_cast<uint64_t>(page) : 0;
  c.reason = std::move(reason);
  return c;
}

}  // namespace

bool BuiltWithCuda() {
#ifdef XCPIPE_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

StatusOr<DeviceChoice> ChooseDevice(const std::string& requested, bool require_gpu, int torch_cuda_devices) {
  if (requested == "cpu") return Cpu("CPU requested");
  int index = 0;
  const bool automatic = requested == "auto";
  if (!automatic) {
    constexpr std::string_view kPrefix = "cuda:";
    if (requested.rfind(kPrefix, 0) != 0) {
      return InvalidArgumentError("device '" + requested + "' not understood; expected auto, cpu or cuda:N");
    }
    const char* begin = requested.data() + kPrefix.size();
    const char* end = requested.data() + requested.size();
    auto [ptr, ec] = std::from_chars(begin, end, index);
    if (ec != std::errc() || ptr != end || index < 0) {
      return InvalidArgumentError("device '" + requested + "' not understood; expected auto, cpu or cuda:N");
    }
  }
  // Without a CUDA libtorch nothing can compute on a GPU, whatever the host has.
  if (torch_cuda_devices < 0) {
    const std::string why = "libtorch built without CUDA (CPU only, as Debian ships it)";
    if (!automatic) {
      return UnimplementedError(model::NoCudaLibtorchMessage(requested));
    }
    if (require_gpu) return UnavailableError(why + "; a GPU was required");
    return Cpu(why + ": computing on the CPU");
  }
  std::string why;
#ifdef XCPIPE_HAVE_CUDA
  auto d = cuda::ProbeCudaDevice(index);
  if (d.ok()) {
    DeviceChoice c{"cuda:" + std::to_string(index), d->name, d->total_bytes, d->free_bytes, "CUDA device found"};
    auto bandwidth = cuda::MeasureCopyBandwidth(index);
    if (bandwidth.ok()) c.memory_bandwidth_bytes_per_s = *bandwidth;
    return c;
  }
  why = "no CUDA device " + std::to_string(index) + " (" + d.status().message() + ")";
#else
  // A CUDA libtorch without the toolkit at build time: libtorch counts the devices; names and
  // memory are unknown here (the planner then needs them from the cluster file).
  if (index < torch_cuda_devices) {
    return DeviceChoice{"cuda:" + std::to_string(index), "CUDA device", 0, 0,
                        "CUDA device found by libtorch (built without the CUDA toolkit: no memory figures)"};
  }
  why = "cuda:" + std::to_string(index) + " is not among the " + std::to_string(torch_cuda_devices) +
        " CUDA device(s) libtorch sees";
#endif
  if (!automatic || require_gpu) return UnavailableError(why + (automatic ? "; a GPU was required" : ""));
  return Cpu(why + "; using the CPU path");
}

}  // namespace xcpipe::worker
