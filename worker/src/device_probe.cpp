#include "xcpipe/worker/device_probe.h"

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

StatusOr<DeviceChoice> ChooseDevice(const std::string& requested, bool require_gpu) {
  if (requested == "cpu") return Cpu("CPU requested");
  int index = 0;
  if (requested != "auto") {
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
#ifdef XCPIPE_HAVE_CUDA
  auto devices = cuda::ProbeCudaDevices();
  if (devices.ok()) {
    if (index >= static_cast<int>(devices->size())) {
      return InvalidArgumentError("device cuda:" + std::to_string(index) + " requested but only " +
                                  std::to_string(devices->size()) + " CUDA device(s) are visible");
    }
    const auto& d = (*devices)[index];
    DeviceChoice c{"cuda:" + std::to_string(index), d.name, d.total_bytes, d.free_bytes,
                   "CUDA device found"};
    return c;
  }
  std::string why = "no CUDA device (" + devices.status().message() + ")";
#else
  std::string why = "built without CUDA (XCPIPE_WITH_CUDA=OFF or no toolkit at build time)";
#endif
  if (require_gpu) return UnavailableError(why + "; a GPU was required");
  return Cpu(why + "; using the CPU path");
}

}  // namespace xcpipe::worker
