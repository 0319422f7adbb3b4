#include "xcpipe/worker/resource_sampler.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#ifdef XCPIPE_HAVE_CUDA
#include "xcpipe/cuda/device.h"
#endif

namespace xcpipe::worker {

void StepTimeWindow::Reset(Clock::time_point now) {
  steps_.clear();
  origin_ = now;
  started_ = true;
}

void StepTimeWindow::Record(Clock::time_point start, Clock::time_point end) {
  if (end < start) end = start;
  if (!started_) Reset(start);
  steps_.push_back({start, end});
  busy_micros_total_ += static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(end - start).count());
  while (steps_.size() > kMaxSteps) steps_.pop_front();
}

void StepTimeWindow::Trim(Clock::time_point now) {
  while (!steps_.empty() && steps_.front().end < now - kWindow) steps_.pop_front();
}

StepTimeSummary StepTimeWindow::Summarize(Clock::time_point now) const {
  StepTimeSummary out;
  if (!started_) return out;
  // The window: the last kWindow, not reaching back before the assignment, and (when the step
  // count bound dropped older steps) not before the oldest step kept.
  Clock::time_point begin = std::max(origin_, now - std::chrono::duration_cast<Clock::duration>(kWindow));
  if (steps_.size() == kMaxSteps) begin = std::max(begin, steps_.front().start);
  if (now <= begin) return out;
  std::vector<uint64_t> micros;
  micros.reserve(steps_.size());
  Clock::duration busy{0};
  for (const auto& s : steps_) {
    if (s.end < begin || s.start > now) continue;
    micros.push_back(static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(s.end - s.start).count()));
    busy += std::min(s.end, now) - std::max(s.start, begin);
  }
  const auto span = now - begin;
  out.window_ms = static_cast<uint32_t>(std::chrono::duration_cast<std::chrono::milliseconds>(span).count());
  out.steps = static_cast<uint32_t>(micros.size());
  out.idle_fraction = std::clamp(1.0 - std::chrono::duration<double>(busy).count() / std::chrono::duration<double>(span).count(),
                                 0.0, 1.0);
  if (micros.empty()) return out;
  std::sort(micros.begin(), micros.end());
  // Nearest rank: the smallest value with at least q of the samples at or below it.
  auto rank = [&](double q) {
    size_t k = static_cast<size_t>(q * static_cast<double>(micros.size()) + 0.999999);
    return micros[std::clamp<size_t>(k, 1, micros.size()) - 1];
  };
  out.p50_micros = rank(0.50);
  out.p99_micros = rank(0.99);
  return out;
}

uint64_t ResidentSetBytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  unsigned long long size = 0, resident = 0;
  const int n = std::fscanf(f, "%llu %llu", &size, &resident);
  std::fclose(f);
  if (n != 2) return 0;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

MemoryReading ReadMemory(const std::string& device) {
  MemoryReading r;
#ifdef XCPIPE_HAVE_CUDA
  if (device.rfind("cuda:", 0) == 0) {
    int index = 0;
    try {
      index = std::stoi(device.substr(5));
    } catch (...) {
      index = -1;
    }
    if (index >= 0) {
      auto m = cuda::QueryDeviceMemory(index);
      if (m.ok()) {
        r.device_free_bytes = m->free_bytes;
        r.device_total_bytes = m->total_bytes;
        r.used_bytes = m->total_bytes - std::min(m->free_bytes, m->total_bytes);
        // The caching allocator's figures would come from libtorch's CUDA build; the libtorch
        // this project links computes on the CPU, so there is no allocator to ask.
        return r;
      }
    }
  }
#endif
  (void)device;
  r.used_bytes = ResidentSetBytes();
  return r;
}

}  // namespace xcpipe::worker
