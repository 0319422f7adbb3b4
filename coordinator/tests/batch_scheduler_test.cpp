// The batch scheduler's rules as values (batch_scheduler.h): KV admission and micro-batch
// formation, with prefill pieces and the row limit.
#include "xcpipe/coordinator/batch_scheduler.h"

#include <gtest/gtest.h>

namespace xcpipe::coordinator {
namespace {

using Members = std::vector<std::pair<uint64_t, int64_t>>;

TEST(KvRoomTest, FitsWaitsOrNever) {
  // Two stages of 100 bytes per token, budgets 10,000 and 20,000 bytes.
  std::vector<StageKv> stages = {{100, 0, 10000}, {100, 0, 20000}};
  EXPECT_EQ(CheckKvRoom(stages, 100), KvRoom::kFits);
  EXPECT_EQ(CheckKvRoom(stages, 101), KvRoom::kNever);  // larger than the first stage's whole cache
  stages[0].kv_reserved = 9000;
  EXPECT_EQ(CheckKvRoom(stages, 10), KvRoom::kFits);
  EXPECT_EQ(CheckKvRoom(stages, 11), KvRoom::kWait);  // fits once reservations are released
  // A stage without KV (kv_per_token 0) never limits admission.
  EXPECT_EQ(CheckKvRoom({{0, 0, 0}, {100, 0, 1000}}, 10), KvRoom::kFits);
}

TEST(PlanMicroBatchesTest, OneMicroBatchPerFreeStageOfAboutActiveOverStagesSequences) {
  // 7 decoding sequences on 3 stages: groups of ceil(7/3) = 3, at most 3 micro-batches.
  std::vector<ReadySequence> ready;
  for (uint64_t id = 1; id <= 7; ++id) ready.push_back({id, 1});
  ScheduleLimits limits{.stage_count = 3, .in_flight = 0, .active = 7, .piece_rows = 0, .step_row_limit = 64};
  const auto plan = PlanMicroBatches(ready, limits);
  ASSERT_EQ(plan.micro_batches.size(), 3u);
  EXPECT_EQ(plan.micro_batches[0].members, (Members{{1, 1}, {2, 1}, {3, 1}}));
  EXPECT_EQ(plan.micro_batches[1].members, (Members{{4, 1}, {5, 1}, {6, 1}}));
  EXPECT_EQ(plan.micro_batches[2].members, (Members{{7, 1}}));
  EXPECT_EQ(plan.micro_batches[2].rows, 1);
  // Two micro-batches already in flight: one slot left.
  limits.in_flight = 2;
  EXPECT_EQ(PlanMicroBatches(ready, limits).micro_batches.size(), 1u);
  limits.in_flight = 3;
  EXPECT_TRUE(PlanMicroBatches(ready, limits).micro_batches.empty());
}

TEST(PlanMicroBatchesTest, TheRowLimitClosesAMicroBatchButNeverRefusesAFirstMember) {
  const std::vector<ReadySequence> ready = {{1, 300}, {2, 300}, {3, 900}, {4, 1}};
  ScheduleLimits limits{.stage_count = 4, .in_flight = 0, .active = 16, .piece_rows = 0, .step_row_limit = 512};
  const auto plan = PlanMicroBatches(ready, limits);
  ASSERT_EQ(plan.micro_batches.size(), 4u);
  EXPECT_EQ(plan.micro_batches[0].members, (Members{{1, 300}}));
  EXPECT_EQ(plan.micro_batches[1].members, (Members{{2, 300}}));
  EXPECT_EQ(plan.micro_batches[2].members, (Members{{3, 900}}));  // alone, over the limit
  EXPECT_EQ(plan.micro_batches[3].members, (Members{{4, 1}}));
  EXPECT_EQ(plan.in_pieces, 0u);
}

TEST(PlanMicroBatchesTest, OneLongPromptAtATimeGoesInPiecesWhileOthersGoAround) {
  // Sequences 1 and 3 are long prompts; 2 and 4 decode. Pieces of 64 rows.
  const std::vector<ReadySequence> ready = {{1, 500}, {2, 1}, {3, 400}, {4, 1}};
  ScheduleLimits limits{.stage_count = 1, .in_flight = 0, .active = 4, .piece_rows = 64, .step_row_limit = 128};
  auto plan = PlanMicroBatches(ready, limits);
  ASSERT_EQ(plan.micro_batches.size(), 1u);
  EXPECT_EQ(plan.micro_batches[0].members, (Members{{1, 64}, {2, 1}, {4, 1}}));  // 3 waits for 1
  EXPECT_EQ(plan.in_pieces, 1u);
  // While 1 is still in pieces, 3 keeps waiting even when it comes first.
  limits.in_pieces = 1;
  plan = PlanMicroBatches({{3, 400}, {1, 436}}, limits);
  ASSERT_EQ(plan.micro_batches.size(), 1u);
  EXPECT_EQ(plan.micro_batches[0].members, (Members{{1, 64}}));
  // The last piece of 1 is short and goes whole; 3 still waits until that piece is through
  // (the coordinator clears in_pieces when its step result comes back).
  plan = PlanMicroBatches({{1, 52}, {3, 400}}, limits);
  EXPECT_EQ(plan.micro_batches[0].members, (Members{{1, 52}}));
  EXPECT_EQ(plan.in_pieces, 1u);
  limits.in_pieces = 0;
  plan = PlanMicroBatches({{3, 400}, {2, 1}}, limits);
  EXPECT_EQ(plan.micro_batches[0].members, (Members{{3, 64}, {2, 1}}));
  EXPECT_EQ(plan.in_pieces, 3u);
}

TEST(PlanMicroBatchesTest, NothingReadyIsNothingToSend) {
  const auto plan = PlanMicroBatches({}, ScheduleLimits{.stage_count = 2, .active = 3, .step_row_limit = 64});
  EXPECT_TRUE(plan.micro_batches.empty());
}

}  // namespace
}  // namespace xcpipe::coordinator
