// StepTimeWindow with injected time: percentiles, idle fraction, the bounds on age and count;
// and the process memory reading.
#include <gtest/gtest.h>

#include <vector>

#include "xcpipe/worker/resource_sampler.h"

namespace xcpipe::worker {
namespace {

using namespace std::chrono_literals;
using Clock = StepTimeWindow::Clock;

TEST(StepTimeWindowTest, NothingRecordedIsAllIdle) {
  StepTimeWindow w;
  const auto t0 = Clock::time_point{} + 1h;
  EXPECT_EQ(w.Summarize(t0).steps, 0u);
  w.Reset(t0);
  auto s = w.Summarize(t0 + 2s);
  EXPECT_EQ(s.steps, 0u);
  EXPECT_DOUBLE_EQ(s.idle_fraction, 1.0);
  EXPECT_EQ(s.window_ms, 2000u);
  EXPECT_EQ(s.p50_micros, 0u);
}

TEST(StepTimeWindowTest, PercentilesAndIdleFraction) {
  StepTimeWindow w;
  const auto t0 = Clock::time_point{} + 1h;
  w.Reset(t0);
  // 100 steps of 1..100 ms, one starting every 200 ms.
  for (int i = 0; i < 100; ++i) {
    const auto start = t0 + i * 200ms;
    w.Record(start, start + std::chrono::milliseconds(i + 1));
  }
  const auto now = t0 + 20s;
  auto s = w.Summarize(now);
  EXPECT_EQ(s.steps, 100u);
  EXPECT_EQ(s.p50_micros, 50000u);
  EXPECT_EQ(s.p99_micros, 99000u);
  // Busy: sum 1..100 ms = 5050 ms of 20000 ms.
  EXPECT_NEAR(s.idle_fraction, 1.0 - 5.05 / 20.0, 1e-9);
  EXPECT_EQ(w.busy_micros_total(), 5050000u);
}

TEST(StepTimeWindowTest, OldStepsLeaveTheWindow) {
  StepTimeWindow w;
  const auto t0 = Clock::time_point{} + 1h;
  w.Reset(t0);
  w.Record(t0, t0 + 10s);  // a long step, long ago
  const auto later = t0 + StepTimeWindow::kWindow + 20s;
  w.Record(later - 1s, later);
  auto s = w.Summarize(later);
  EXPECT_EQ(s.steps, 1u);
  EXPECT_EQ(s.p50_micros, 1000000u);
  EXPECT_EQ(s.window_ms, static_cast<uint32_t>(std::chrono::milliseconds(StepTimeWindow::kWindow).count()));
  EXPECT_NEAR(s.idle_fraction, 1.0 - 1.0 / 30.0, 1e-9);
  EXPECT_EQ(w.busy_micros_total(), 11000000u);  // the total keeps every step
}

TEST(StepTimeWindowTest, CountIsBounded) {
  StepTimeWindow w;
  const auto t0 = Clock::time_point{} + 1h;
  w.Reset(t0);
  for (size_t i = 0; i < StepTimeWindow::kMaxSteps + 100; ++i) {
    const auto start = t0 + i * 1ms;
    w.Record(start, start + 500us);
  }
  auto s = w.Summarize(t0 + std::chrono::milliseconds(StepTimeWindow::kMaxSteps + 100));
  EXPECT_EQ(s.steps, StepTimeWindow::kMaxSteps);
  // The window starts at the oldest step kept: half of it busy.
  EXPECT_NEAR(s.idle_fraction, 0.5, 0.01);
}

TEST(ResourceSamplerTest, CpuMemoryIsTheResidentSet) {
  const uint64_t before = ResidentSetBytes();
  EXPECT_GT(before, 0u);
  // Touch 64 MiB: the resident set grows by about that much.
  std::vector<char> block(64u << 20);
  for (size_t i = 0; i < block.size(); i += 4096) block[i] = 1;
  const auto reading = ReadMemory("cpu");
  EXPECT_GE(reading.used_bytes, before + (48u << 20));
  EXPECT_EQ(reading.device_total_bytes, 0u);
  EXPECT_EQ(block[4096], 1);
}

TEST(ResourceSamplerTest, CudaDeviceWithoutGpuFallsBackToResidentSet) {
  const auto reading = ReadMemory("cuda:0");
  EXPECT_GT(reading.used_bytes, 0u);
  if (reading.device_total_bytes > 0) {
    EXPECT_LE(reading.used_bytes, reading.device_total_bytes);
    EXPECT_LE(reading.device_free_bytes, reading.device_total_bytes);
  }
}

}  // namespace
}  // namespace xcpipe::worker
