// The coordinator's stop rule (FinishReasonAfter): stop ids, the length limit, min_tokens and
// ignore_eos, as values.
#include <gtest/gtest.h>

#include "xcpipe/coordinator/edge.h"

namespace xcpipe::coordinator {
namespace {

const std::vector<int64_t> kStops = {2, 92542};

TEST(StopRuleTest, AStopIdEndsTheSequenceAndTheLengthLimitOtherwise) {
  Sampling s;
  EXPECT_EQ(FinishReasonAfter({}, 4, kStops, s), "");
  EXPECT_EQ(FinishReasonAfter({7, 8}, 4, kStops, s), "");
  EXPECT_EQ(FinishReasonAfter({7, 92542}, 4, kStops, s), "stop");
  EXPECT_EQ(FinishReasonAfter({7, 8, 9, 10}, 4, kStops, s), "length");
  // A stop id as the last allowed token is a stop, not a length cut.
  EXPECT_EQ(FinishReasonAfter({7, 8, 9, 2}, 4, kStops, s), "stop");
}

TEST(StopRuleTest, IgnoreEosRunsToTheLength) {
  Sampling s;
  s.ignore_eos = true;
  EXPECT_EQ(FinishReasonAfter({7, 2}, 4, kStops, s), "");
  EXPECT_EQ(FinishReasonAfter({7, 2, 2, 2}, 4, kStops, s), "length");
}

TEST(StopRuleTest, AStopIdWithinMinTokensDoesNotEndTheSequence) {
  Sampling s;
  s.min_new_tokens = 3;
  EXPECT_EQ(FinishReasonAfter({2}, 8, kStops, s), "");
  EXPECT_EQ(FinishReasonAfter({7, 8, 2}, 8, kStops, s), "");
  EXPECT_EQ(FinishReasonAfter({7, 8, 9, 2}, 8, kStops, s), "stop");
  EXPECT_EQ(FinishReasonAfter({7, 8, 9, 10, 11, 12, 13, 2}, 8, kStops, s), "stop");
}

}  // namespace
}  // namespace xcpipe::coordinator
