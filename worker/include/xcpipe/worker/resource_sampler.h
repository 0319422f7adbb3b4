// What a worker measures about itself for monitoring: device memory and its own step times.
// The actor samples these when it sends a heartbeat (every 250 ms), so everything here is
// cheap: one read of /proc/self/statm (CPU) or one cudaMemGetInfo call (CUDA), and a sort of
// at most kMaxSteps durations.
//
// StepTimeWindow keeps the recent steps (bounded by count and by age) and answers the median,
// the 99th percentile and the idle fraction (share of the window not spent computing: the
// pipeline bubble as this stage sees it). Time is passed in, never read, so tests drive it.
//
// Not thread-safe: owned and used by the worker actor's thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <string>

namespace xcpipe::worker {

// Percentiles and idle share of the recent window.
struct StepTimeSummary {
  uint64_t p50_micros = 0;
  uint64_t p99_micros = 0;
  uint32_t steps = 0;           // steps in the window
  uint32_t window_ms = 0;       // span the idle fraction covers
  double idle_fraction = 1.0;   // 1.0 when nothing ran
};

class StepTimeWindow {
 public:
  using Clock = std::chrono::steady_clock;
  // The window covers at most kWindow of the past and at most kMaxSteps steps.
  static constexpr std::chrono::seconds kWindow{30};
  static constexpr size_t kMaxSteps = 4096;

  // Starts a fresh window at `now` (a new stage assignment: earlier steps were another stage).
  void Reset(Clock::time_point now);
  // One step computed from `start` to `end`.
  void Record(Clock::time_point start, Clock::time_point end);
  StepTimeSummary Summarize(Clock::time_point now) const;
  // Compute time of every step recorded since construction (Reset does not clear it).
  uint64_t busy_micros_total() const { return busy_micros_total_; }

 private:
  struct Step {
    Clock::time_point start, end;
  };
  void Trim(Clock::time_point now);
  std::deque<Step> steps_;
  Clock::time_point origin_{};
  bool started_ = false;
  uint64_t busy_micros_total_ = 0;
};

// Memory as the process or device reports it.
struct MemoryReading {
  uint64_t used_bytes = 0;         // CPU: resident set size; CUDA: total - free
  uint64_t device_free_bytes = 0;  // CUDA only
  uint64_t device_total_bytes = 0; // CUDA only
  uint64_t allocator_bytes = 0;    // CUDA caching allocator; 0 where it cannot be read
};

// Resident set size of this process from /proc/self/statm; 0 when it cannot be read.
uint64_t ResidentSetBytes();

// Reads memory for `device` ("cpu" or "cuda:N"). A CUDA device whose query fails (no driver,
// no GPU) falls back to the process's resident set size, so a reading is always returned.
MemoryReading ReadMemory(const std::string& device);

}  // namespace xcpipe::worker
