// The rebalancer's rule as values (rebalance_rule.h): when a window of serving asks for a new
// plan, with which speeds, and how a worker left without decoder layers gets measured again.
#include "xcpipe/coordinator/rebalance_rule.h"

#include <gtest/gtest.h>

#include <cmath>

namespace xcpipe::coordinator {
namespace {

constexpr double kThreshold = 0.2;

TEST(RebalanceRuleTest, BalancedOrIdleStagesKeepThePlanAsItIs) {
  std::map<std::string, WorkerSpeed> speeds = {{"a", {.slowdown = 2.0, .measured = 2.0}}};
  // Within 20% of the mean: nothing is measured, nothing changes.
  auto v = JudgeRebalanceWindow({{"a", "", 11, 4000}, {"b", "", 10, 2000}, {"c", "", 9, 2000}}, speeds, kThreshold);
  EXPECT_FALSE(v.replan);
  EXPECT_EQ(v.speeds.at("a").slowdown, 2.0);
  EXPECT_NE(v.why.find("balanced"), std::string::npos) << v.why;
  // Unbalanced, but the stages compute too little per step to tell placement from noise.
  v = JudgeRebalanceWindow({{"a", "", 0.9, 400}, {"b", "", 0.1, 100}}, speeds, kThreshold);
  EXPECT_FALSE(v.replan);
  EXPECT_NE(v.why.find("too little"), std::string::npos) << v.why;
}

TEST(RebalanceRuleTest, ASlowerWorkerIsMeasuredAgainstTheMedianAndAsksForAPlan) {
  // b's layers take 2.5 times the median's: its stage is the bottleneck.
  auto v = JudgeRebalanceWindow({{"a", "", 20, 7000}, {"b", "", 75, 17500}, {"c", "", 28, 7100}}, {}, kThreshold);
  ASSERT_TRUE(v.replan) << v.why;
  EXPECT_NEAR(v.speeds.at("b").slowdown, 17500.0 / 7100.0, 1e-9);
  EXPECT_NEAR(v.speeds.at("a").slowdown, 7000.0 / 7100.0, 1e-9);
  EXPECT_NEAR(v.speeds.at("c").slowdown, 1.0, 1e-9);
  EXPECT_NEAR(v.speeds.at("b").measured, v.speeds.at("b").slowdown, 1e-9);
  EXPECT_NE(v.why.find("b 1/1.00 -> 1/2.46"), std::string::npos) << v.why;
  // Extreme measures are clamped.
  v = JudgeRebalanceWindow({{"a", "", 20, 100}, {"b", "", 900, 100000}, {"c", "", 20, 100}}, {}, kThreshold);
  EXPECT_EQ(v.speeds.at("b").slowdown, kRebalanceMaxSlowdown);
}

TEST(RebalanceRuleTest, SpeedsAsPlannedKeepThePlanAndThePlannedSpeeds) {
  const std::map<std::string, WorkerSpeed> speeds = {{"a", {.slowdown = 1.0, .measured = 1.0}},
                                                     {"b", {.slowdown = 2.5, .measured = 2.5}},
                                                     {"c", {.slowdown = 1.0, .measured = 1.0}}};
  // Unbalanced by the granularity of blocks, each speed within 15% of the planned one.
  auto v =
      JudgeRebalanceWindow({{"a", "", 20, 7000}, {"b", "", 40, 7000 * 2.7}, {"c", "", 20, 7300}}, speeds, kThreshold);
  EXPECT_FALSE(v.replan) << v.why;
  EXPECT_NE(v.why.find("as planned"), std::string::npos) << v.why;
  // The plan's speed stays the one it was made with, so that small drifts add up against it...
  EXPECT_EQ(v.speeds.at("b").slowdown, 2.5);
  // ... and three drifts of 10% in the same direction end in a new plan.
  std::map<std::string, WorkerSpeed> s = speeds;
  bool replanned = false;
  for (double f : {1.1, 1.2, 1.3}) {
    auto w =
        JudgeRebalanceWindow({{"a", "", 20, 7000}, {"b", "", 45, 7000 * 2.5 * f}, {"c", "", 20, 7000}}, s, kThreshold);
    s = w.speeds;
    replanned = replanned || w.replan;
  }
  EXPECT_TRUE(replanned);
}

// The trap this rule exists for: a noisy window made worker b look 4.6 times slower than it
// is; the plan with that speed gave it no decoder layer, so it can never be measured again.
TEST(RebalanceRuleTest, AWorkerLeftWithoutDecoderLayersIsProbedUntilMeasuredAgain) {
  std::map<std::string, WorkerSpeed> speeds = {{"a", {.slowdown = 1.0, .measured = 1.0}},
                                               {"b", {.slowdown = 4.6, .measured = 4.6}},
                                               {"c", {.slowdown = 1.0, .measured = 1.0}}};
  // b holds the vision block and the embedding only; a and c carry every layer.
  auto v = JudgeRebalanceWindow({{"b", "", 0.1, 0}, {"a", "", 36, 9000}, {"c", "", 38, 9100}}, speeds, kThreshold);
  ASSERT_TRUE(v.replan) << v.why;
  EXPECT_NEAR(v.speeds.at("b").slowdown, std::sqrt(4.6), 1e-9);
  EXPECT_TRUE(v.speeds.at("b").probing);
  EXPECT_EQ(v.speeds.at("b").measured, 4.6);  // the last measure is remembered
  EXPECT_NE(v.why.find("probing"), std::string::npos) << v.why;
  // Still without layers (the guess gave the same plan): the guess halves again.
  const double first_guess = v.speeds.at("b").slowdown;
  v = JudgeRebalanceWindow({{"b", "", 0.1, 0}, {"a", "", 36, 9000}, {"c", "", 38, 9100}}, v.speeds, kThreshold);
  ASSERT_TRUE(v.replan);
  EXPECT_NEAR(v.speeds.at("b").slowdown, std::sqrt(first_guess), 1e-9);
  // Given a layer, it measures 2.5: not as before the probe, so not confirmed, and the new
  // speed is planned with.
  v = JudgeRebalanceWindow({{"a", "", 20, 7000}, {"c", "", 22, 7000}, {"b", "", 30, 17500}}, v.speeds, kThreshold);
  EXPECT_TRUE(v.replan);
  EXPECT_NEAR(v.speeds.at("b").slowdown, 2.5, 1e-9);
  EXPECT_FALSE(v.speeds.at("b").probing);
  EXPECT_FALSE(v.speeds.at("b").confirmed);
}

TEST(RebalanceRuleTest, AProbeThatMeasuresTheSameSpeedAgainIsNotRepeated) {
  // b really is 4 times slower: probed, measured 4.1 (as before), then left without layers.
  std::map<std::string, WorkerSpeed> speeds = {{"b", {.slowdown = 4.0, .measured = 4.0}}};
  auto v = JudgeRebalanceWindow({{"b", "", 0.1, 0}, {"a", "", 36, 9000}, {"c", "", 38, 9000}}, speeds, kThreshold);
  ASSERT_TRUE(v.replan);
  v = JudgeRebalanceWindow({{"a", "", 30, 9000}, {"b", "", 45, 9000 * 4.1}, {"c", "", 30, 9000}}, v.speeds, kThreshold);
  EXPECT_TRUE(v.replan);  // the guess was 2.0, the measure 4.1
  EXPECT_TRUE(v.speeds.at("b").confirmed);
  EXPECT_NEAR(v.speeds.at("b").slowdown, 4.1, 1e-9);
  v = JudgeRebalanceWindow({{"b", "", 0.1, 0}, {"a", "", 36, 9000}, {"c", "", 38, 9000}}, v.speeds, kThreshold);
  EXPECT_FALSE(v.replan) << v.why;
  EXPECT_EQ(v.speeds.at("b").slowdown, 4.1);
  // A worker never judged slow is not probed either: there is nothing to learn.
  v = JudgeRebalanceWindow({{"d", "", 0.1, 0}, {"a", "", 36, 9000}, {"c", "", 38, 9000}}, {}, kThreshold);
  EXPECT_FALSE(v.replan) << v.why;
}

}  // namespace
}  // namespace xcpipe::coordinator
