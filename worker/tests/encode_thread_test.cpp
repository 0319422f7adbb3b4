// EncodeThread: work runs on a thread of its own at the nice value asked for, the caller keeps its
// own priority and is called back while it waits, and a failure comes back to the caller.
#include "encode_thread.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <stdexcept>
#include <thread>

namespace xcpipe::worker {
namespace {

using namespace std::chrono_literals;

int OwnNice() { return getpriority(PRIO_PROCESS, static_cast<id_t>(gettid())); }

TEST(EncodeThreadTest, WorkRunsOnItsOwnThreadAtTheNiceValueAndTheCallerKeepsItsOwn) {
  const int caller_nice = OwnNice();
  ASSERT_LT(caller_nice, 10) << "the test needs a caller below nice 10";
  EncodeThread t(10);
  ASSERT_TRUE(t.nice_status().ok()) << t.nice_status().ToString();
  EXPECT_EQ(t.nice(), 10);
  std::thread::id ran_on;
  int nice_inside = -100;
  t.Run(
      [&] {
        ran_on = std::this_thread::get_id();
        nice_inside = OwnNice();
      },
      nullptr);
  EXPECT_NE(ran_on, std::this_thread::get_id());
  EXPECT_EQ(nice_inside, 10);
  EXPECT_EQ(OwnNice(), caller_nice);
}

TEST(EncodeThreadTest, NiceZeroKeepsTheCallersPriority) {
  EncodeThread t(0);
  int nice_inside = -100;
  t.Run([&] { nice_inside = OwnNice(); }, nullptr);
  EXPECT_EQ(nice_inside, OwnNice());
  EXPECT_EQ(t.nice(), OwnNice());
}

TEST(EncodeThreadTest, TheCallerIsCalledBackWhileItWaitsAndRunReturnsOnlyWhenTheWorkIsDone) {
  EncodeThread t(5);
  std::atomic<bool> done{false};
  int calls = 0;
  t.Run(
      [&] {
        std::this_thread::sleep_for(200ms);
        done = true;
      },
      [&] {
        EXPECT_FALSE(done.load());
        ++calls;
      },
      20ms);
  EXPECT_TRUE(done.load());
  EXPECT_GE(calls, 3);  // 200 ms of work, a call about every 20 ms
}

TEST(EncodeThreadTest, AFailureComesBackToTheCallerAndTheThreadGoesOn) {
  EncodeThread t(5);
  EXPECT_THROW(t.Run([] { throw std::runtime_error("tower failed"); }, nullptr), std::runtime_error);
  int runs = 0;
  for (int i = 0; i < 3; ++i) t.Run([&] { ++runs; }, nullptr);
  EXPECT_EQ(runs, 3);
}

}  // namespace
}  // namespace xcpipe::worker
