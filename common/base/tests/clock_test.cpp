#include "xcpipe/base/clock.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace xcpipe {
namespace {

using namespace std::chrono_literals;

TEST(SteadyClockTest, ReadsSteadyTimeAndSleeps) {
  Clock& clock = SteadyClock::Instance();
  EXPECT_EQ(&clock, &SteadyClock::Instance());
  const auto before = std::chrono::steady_clock::now();
  const auto t0 = clock.now();
  EXPECT_GE(t0, before);
  clock.SleepFor(5ms);
  const auto t1 = clock.now();
  EXPECT_GE(t1 - t0, 5ms);
  EXPECT_LE(t1, std::chrono::steady_clock::now());
  clock.SleepUntil(t0);  // a deadline passed: returns at once
}

TEST(SimulatedClockTest, TimeMovesOnlyWhenAdvanced) {
  const Clock::time_point start(std::chrono::seconds(100));
  SimulatedClock clock(start);
  EXPECT_EQ(clock.now(), start);
  std::this_thread::sleep_for(2ms);
  EXPECT_EQ(clock.now(), start) << "real time passing does not move it";
  clock.Advance(3s);
  EXPECT_EQ(clock.now(), start + 3s);
  clock.Advance(-1s);
  clock.AdvanceTo(start);
  EXPECT_EQ(clock.now(), start + 3s) << "time never goes back";
  clock.AdvanceTo(start + 10s);
  EXPECT_EQ(clock.now(), start + 10s);
  clock.SleepUntil(start + 1s);  // passed: returns at once
  clock.SleepFor(0s);
  EXPECT_EQ(clock.sleepers(), 0u);
}

TEST(SimulatedClockTest, DefaultStartLeavesRoomBeforeIt) {
  SimulatedClock clock;
  EXPECT_GT((clock.now() - std::chrono::hours(1)).time_since_epoch(), Clock::duration::zero());
}

TEST(SimulatedClockTest, ASleeperWakesWhenTimeReachesItsDeadline) {
  SimulatedClock clock;
  const auto start = clock.now();
  std::atomic<bool> woke{false};
  std::thread sleeper([&] {
    clock.SleepFor(10s);
    woke = true;
  });
  ASSERT_TRUE(clock.AwaitSleepers(1, 5s));
  clock.Advance(4s);
  std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(woke.load()) << "woke before its deadline";
  EXPECT_EQ(clock.sleepers(), 1u);
  clock.Advance(6s);
  sleeper.join();
  EXPECT_TRUE(woke.load());
  EXPECT_EQ(clock.now(), start + 10s);
  EXPECT_EQ(clock.sleepers(), 0u);
  EXPECT_FALSE(clock.AwaitSleepers(1, 10ms)) << "nobody sleeps now";
}

TEST(SimulatedClockTest, ManyThreadsAdvanceAndReadSafely) {
  SimulatedClock clock;
  const auto start = clock.now();
  constexpr int kThreads = 4, kSteps = 1000;
  std::vector<std::thread> threads;
  std::atomic<bool> went_back{false};
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&] {
      auto last = clock.now();
      for (int s = 0; s < kSteps; ++s) {
        clock.Advance(1ms);
        const auto t = clock.now();
        if (t < last) went_back = true;
        last = t;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_FALSE(went_back.load());
  EXPECT_EQ(clock.now(), start + std::chrono::milliseconds(kThreads * kSteps));
}

}  // namespace
}  // namespace xcpipe
