// Clock: where a component reads the time and waits, so that tests can drive it.
//
// Time is steady time (std::chrono::steady_clock's time_point and duration): it never jumps with
// the wall clock, and values from a Clock mix with code that keeps steady_clock time points.
// Components take a Clock& (in their options, defaulting to SteadyClock::Instance()) instead of
// calling steady_clock::now() themselves:
//
//   * SteadyClock: production. now() is steady_clock::now(); SleepUntil sleeps the thread.
//   * SimulatedClock: tests. Time moves only when the test advances it; SleepUntil blocks the
//     calling thread until the test has advanced the clock to the deadline. A test that runs a
//     component on another thread waits for it to sleep (AwaitSleepers) before advancing.
//
// What a Clock does not cover: waits on sockets and file descriptors (ppoll, zmq_poll, TCP
// deadlines) run in real time, whatever the component's clock.
//
// Thread-safety: every method of both clocks may be called from any thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <mutex>

namespace xcpipe {

class Clock {
 public:
  using duration = std::chrono::steady_clock::duration;
  using time_point = std::chrono::steady_clock::time_point;

  virtual ~Clock() = default;

  virtual time_point now() const = 0;
  // Blocks the calling thread until now() >= deadline (returns at once for a deadline passed).
  virtual void SleepUntil(time_point deadline) = 0;
  void SleepFor(duration d) { SleepUntil(now() + d); }
};

class SteadyClock final : public Clock {
 public:
  // The process's one steady clock (stateless; the default of every component's options).
  static SteadyClock& Instance();

  time_point now() const override { return std::chrono::steady_clock::now(); }
  void SleepUntil(time_point deadline) override;
};

class SimulatedClock final : public Clock {
 public:
  // Starts at `start`; the default lies a day after the epoch, so a time computed a little
  // before now() (e.g. "an hour ago") is still a positive time point.
  explicit SimulatedClock(time_point start = time_point(std::chrono::hours(24)));
  SimulatedClock(const SimulatedClock&) = delete;
  SimulatedClock& operator=(const SimulatedClock&) = delete;

  time_point now() const override;
  void SleepUntil(time_point deadline) override;

  // Moves time forward by `d` (a negative d is ignored: time never goes back) and wakes the
  // sleepers whose deadline has come.
  void Advance(duration d);
  // Moves time forward to `t` (a time before now() is ignored).
  void AdvanceTo(time_point t);

  // Threads blocked in SleepUntil right now.
  size_t sleepers() const;
  // Waits, in real time up to `timeout`, until at least `count` threads are blocked in
  // SleepUntil; false when the timeout passed first.
  bool AwaitSleepers(size_t count, std::chrono::milliseconds timeout);

 private:
  mutable std::mutex mutex_;
  std::condition_variable changed_;  // time advanced, or a sleeper came or went
  time_point now_;
  size_t sleepers_ = 0;
};

}  // namespace xcpipe
