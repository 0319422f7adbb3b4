#include "xcpipe/base/stop_signals.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <vector>

namespace xcpipe {
namespace {

using namespace std::chrono_literals;

// Signals the callback saw, in order.
struct Seen {
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<int> signals;

  void Add(int signo) {
    std::lock_guard<std::mutex> lock(mutex);
    signals.push_back(signo);
    cv.notify_all();
  }
  bool AwaitCount(size_t n) {
    std::unique_lock<std::mutex> lock(mutex);
    return cv.wait_for(lock, 5s, [&] { return signals.size() >= n; });
  }
};

TEST(StopSignalsTest, SigtermAndSigintReachTheCallbackOnItsThreadAndLateOnesChangeNothing) {
  Seen seen;
  {
    StopSignals signals([&seen](int signo) { seen.Add(signo); });
    ASSERT_TRUE(signals.installed());
    ASSERT_EQ(::kill(::getpid(), SIGTERM), 0);
    ASSERT_TRUE(seen.AwaitCount(1)) << "SIGTERM never reached the callback";
    ASSERT_EQ(::kill(::getpid(), SIGINT), 0);
    ASSERT_TRUE(seen.AwaitCount(2)) << "SIGINT never reached the callback";
  }
  EXPECT_EQ(seen.signals, (std::vector<int>{SIGTERM, SIGINT}));
  // With the object gone the handlers stay: the process is not killed and nobody is called.
  ASSERT_EQ(::kill(::getpid(), SIGTERM), 0);
  std::this_thread::sleep_for(50ms);
  {
    std::lock_guard<std::mutex> lock(seen.mutex);
    EXPECT_EQ(seen.signals.size(), 2u);
  }
  // A new instance does not get the signal meant for nobody, only its own.
  Seen next;
  StopSignals again([&next](int signo) { next.Add(signo); });
  ASSERT_EQ(::kill(::getpid(), SIGINT), 0);
  ASSERT_TRUE(next.AwaitCount(1));
  std::this_thread::sleep_for(20ms);
  std::lock_guard<std::mutex> lock(next.mutex);
  EXPECT_EQ(next.signals, (std::vector<int>{SIGINT}));
}

}  // namespace
}  // namespace xcpipe
