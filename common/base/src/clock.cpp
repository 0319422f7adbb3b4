#include "xcpipe/base/clock.h"

#include <thread>

namespace xcpipe {

SteadyClock& SteadyClock::Instance() {
  static SteadyClock clock;
  return clock;
}

void SteadyClock::SleepUntil(time_point deadline) { std::this_thread::sleep_until(deadline); }

SimulatedClock::SimulatedClock(time_point start) : now_(start) {}

Clock::time_point SimulatedClock::now() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return now_;
}

void SimulatedClock::SleepUntil(time_point deadline) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (now_ >= deadline) return;
  ++sleepers_;
  changed_.notify_all();  // AwaitSleepers
  changed_.wait(lock, [&] { return now_ >= deadline; });
  --sleepers_;
  changed_.notify_all();
}

void SimulatedClock::Advance(duration d) {
  if (d <= duration::zero()) return;
  std::lock_guard<std::mutex> lock(mutex_);
  now_ += d;
  changed_.notify_all();
}

void SimulatedClock::AdvanceTo(time_point t) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (t <= now_) return;
  now_ = t;
  changed_.notify_all();
}

size_t SimulatedClock::sleepers() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return sleepers_;
}

bool SimulatedClock::AwaitSleepers(size_t count, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  return changed_.wait_for(lock, timeout, [&] { return sleepers_ >= count; });
}

}  // namespace xcpipe
