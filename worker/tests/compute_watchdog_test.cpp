// ComputeWatchdog's window, on a simulated clock: it adapts to the slowest time per row of a
// layer, and an image encode's tower layers (a unit of their own: tiles) never set the window of
// the decoder layers that follow, nor the other way round.
#include "xcpipe/worker/compute_watchdog.h"

#include <gtest/gtest.h>

#include <atomic>

namespace xcpipe::worker {
namespace {

using namespace std::chrono_literals;
using Work = ComputeWatchdog::Work;

class ComputeWatchdogTest : public ::testing::Test {
 protected:
  // The watchdog's socket connects to an address nobody serves: the window is all that is asked.
  zmq::context_t context_;
  std::atomic<uint64_t> epoch_{1}, steps_{0};
  SimulatedClock clock_;
  ComputeWatchdog dog_{context_, "tcp://127.0.0.1:9", "test-worker", {}, epoch_, steps_, clock_};

  // One step of `rows` rows (or tiles) with `layers` layers of `per_layer` each.
  void Step(int64_t rows, Work work, int layers, std::chrono::milliseconds per_layer) {
    dog_.BeginStep(rows, 1, work);
    for (int i = 0; i < layers; ++i) {
      clock_.Advance(per_layer);
      dog_.Progress();
    }
    dog_.EndStep();
  }
};

TEST_F(ComputeWatchdogTest, TheWindowFollowsTheSlowestLayerPerRowTimesTheStepsRows) {
  dog_.BeginStep(100, 1);
  EXPECT_EQ(dog_.CurrentWindow(), ComputeWatchdogTimings::kFirstStepWindow);  // nothing measured yet
  dog_.EndStep();
  Step(100, Work::kLayers, 4, 200ms);  // 2 ms per row per layer
  dog_.BeginStep(1000, 2);
  EXPECT_EQ(dog_.CurrentWindow(), std::chrono::microseconds(20s));  // 10 x 2 ms x 1000 rows
  dog_.EndStep();
  dog_.BeginStep(1, 3);
  EXPECT_EQ(dog_.CurrentWindow(), ComputeWatchdogTimings::kMinWindow);  // 20 ms: below the floor
  dog_.EndStep();
}

TEST_F(ComputeWatchdogTest, AnEncodeDoesNotSetTheWindowOfTheDecoderLayersAfterIt) {
  // A 2-tile image whose tower layers take 120 ms each, then the first prefill of 1575 rows:
  // counted per row, the encode would give the prefill a window of 10 x 60 ms / 1575 x 1575,
  // and a 2.5 s decoder layer would be reported stuck.
  Step(2, Work::kEncode, 4, 120ms);
  dog_.BeginStep(1575, 2, Work::kLayers);
  EXPECT_EQ(dog_.CurrentWindow(), ComputeWatchdogTimings::kFirstStepWindow);
  dog_.EndStep();
  // The encodes keep their own measure: 60 ms per tile per layer, 10 x 60 ms x 3 tiles.
  dog_.BeginStep(3, 3, Work::kEncode);
  EXPECT_EQ(dog_.CurrentWindow(), std::chrono::microseconds(1800ms));
  dog_.EndStep();
}

TEST_F(ComputeWatchdogTest, DecoderLayersDoNotSetTheWindowOfAnEncode) {
  Step(1000, Work::kLayers, 4, 100ms);  // 0.1 ms per row
  dog_.BeginStep(2, 2, Work::kEncode);
  EXPECT_EQ(dog_.CurrentWindow(), ComputeWatchdogTimings::kFirstStepWindow);
  dog_.EndStep();
}

}  // namespace
}  // namespace xcpipe::worker
