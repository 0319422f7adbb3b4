// The chaos history checker on hand-made histories: a clean one (with the protocol's benign
// repeats) passes, and each broken one (a duplicated token, a changed token, two endings, no
// ending, a reason outside the documented set, ...) fails, saying why.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "chaos_history.h"

namespace xcpipe::chaos {
namespace {

// A small builder: one client, requests numbered from 1.
struct H {
  std::vector<HistoryEvent> events;
  double t = 0;
  HistoryEvent& Add(uint64_t request, const std::string& kind) {
    HistoryEvent e;
    e.t_ms = t += 10;
    e.client = "c0";
    e.request = request;
    e.kind = kind;
    events.push_back(e);
    return events.back();
  }
  void Submit(uint64_t request, const std::string& prompt, uint32_t max_new = 4, const std::string& phase = "chaos") {
    auto& e = Add(request, "submit");
    e.prompt_key = prompt;
    e.max_new_tokens = max_new;
    e.phase = phase;
  }
  void Tokens(uint64_t request, uint32_t offset, std::vector<int64_t> tokens) {
    auto& e = Add(request, "tokens");
    e.offset = offset;
    e.tokens = std::move(tokens);
  }
  void Done(uint64_t request, uint32_t offset, std::vector<int64_t> tokens, std::vector<int64_t> all,
            const std::string& reason = "length") {
    auto& e = Add(request, "done");
    e.offset = offset;
    e.tokens = std::move(tokens);
    e.all_tokens = std::move(all);
    e.finish_reason = reason;
  }
  void Fail(uint64_t request, const std::string& reason, const std::string& message) {
    auto& e = Add(request, "error");
    e.finish_reason = reason;
    e.error = message;
  }
  // The liveness batch every passing history needs: one request of prompt "a" after the heal.
  void Liveness(uint64_t request = 100) {
    Submit(request, "a", 4, "liveness");
    Done(request, 0, {5, 7, 9, 11}, {5, 7, 9, 11});
  }
};

CheckOptions Options() {
  CheckOptions o;
  o.reference["a"] = {5, 7, 9, 11};
  o.reference["b"] = {3, 3, 4, 8};
  return o;
}

std::string Violations(const CheckResult& r) {
  std::string s;
  for (const auto& v : r.violations) s += v + "\n";
  return s;
}

bool Mentions(const CheckResult& r, const std::string& what) {
  for (const auto& v : r.violations)
    if (v.find(what) != std::string::npos) return true;
  return false;
}

TEST(ChaosHistoryTest, CleanHistoryWithRedeliveriesGapsAndRepeatedEndingsPasses) {
  H h;
  h.Submit(1, "a");
  h.Add(1, "accepted");
  h.Tokens(1, 0, {5});
  h.Tokens(1, 1, {7});
  h.Tokens(1, 0, {5, 7});  // a replay resends from the start: the same tokens at the same offsets
  h.Done(1, 2, {9, 11}, {5, 7, 9, 11});
  h.Done(1, 2, {9, 11}, {5, 7, 9, 11});  // a repeated submit answered with the final events again
  h.Submit(2, "b");
  h.Add(2, "retry").retry_after_ms = 200;  // not serving yet: not an ending
  h.Tokens(2, 0, {3});
  h.Tokens(2, 2, {4});  // the event for offset 1 was lost: a gap the final list fills
  h.Done(2, 3, {8}, {3, 3, 4, 8});
  h.Submit(3, "a");
  h.Fail(3, "Aborted", "replayed after 8 faults; giving up");
  h.Liveness();
  const auto r = CheckHistory(h.events, Options());
  EXPECT_TRUE(r.ok()) << Violations(r);
  EXPECT_EQ(r.requests, 4);
  EXPECT_EQ(r.completed, 3);
  EXPECT_EQ(r.failed.at("Aborted"), 1);
  EXPECT_EQ(r.redelivered_events, 2);  // the replay's resend, and the repeated final event's tokens
  EXPECT_EQ(r.repeated_endings, 1);
  EXPECT_EQ(r.liveness_completed, 1);
  EXPECT_TRUE(r.tokens_identical());
}

TEST(ChaosHistoryTest, DuplicatedTokenFails) {
  H h;
  h.Submit(1, "a");
  h.Tokens(1, 0, {5, 7});
  h.Tokens(1, 2, {7});  // a replay that resumes one token early: 7 again, at the next offset
  h.Done(1, 3, {9}, {5, 7, 7, 9});
  h.Liveness();
  const auto r = CheckHistory(h.events, Options());
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.duplicated, 1);
  EXPECT_TRUE(Mentions(r, "delivered twice")) << Violations(r);
}

TEST(ChaosHistoryTest, MoreTokensThanAskedFails) {
  H h;
  h.Submit(1, "a", 3);
  h.Done(1, 0, {5, 7, 9, 11}, {5, 7, 9, 11});
  h.Liveness();
  const auto r = CheckHistory(h.events, Options());
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.duplicated, 1);
  EXPECT_TRUE(Mentions(r, "more than the 3 asked for")) << Violations(r);
}

TEST(ChaosHistoryTest, TokenChangedAfterDeliveryFails) {
  H h;
  h.Submit(1, "a");
  h.Tokens(1, 0, {5, 7});
  h.Tokens(1, 1, {8});  // position 1 was 7
  h.Done(1, 2, {9, 11}, {5, 8, 9, 11});
  h.Liveness();
  const auto r = CheckHistory(h.events, Options());
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.changed, 1);
  EXPECT_TRUE(Mentions(r, "changed after delivery: 7 then 8")) << Violations(r);
}

TEST(ChaosHistoryTest, FinalListContradictingTheStreamFails) {
  H h;
  h.Submit(1, "a");
  h.Tokens(1, 0, {5, 7, 9});
  h.Done(1, 3, {}, {5, 7, 10, 11});
  h.Liveness();
  const auto r = CheckHistory(h.events, Options());
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.changed, 1);
}

TEST(ChaosHistoryTest, TwoDifferentEndingsFail) {
  H h;
  h.Submit(1, "a");
  h.Done(1, 0, {5, 7, 9, 11}, {5, 7, 9, 11});
  h.Fail(1, "Aborted", "replayed after 8 faults");
  h.Liveness();
  const auto r = CheckHistory(h.events, Options());
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(Mentions(r, "ended twice")) << Violations(r);
}

TEST(ChaosHistoryTest, MissingEndingFails) {
  H h;
  h.Submit(1, "a");
  h.Tokens(1, 0, {5, 7});
  h.Add(1, "gave_up");
  h.Liveness();
  const auto r = CheckHistory(h.events, Options());
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.lost, 1);
  EXPECT_TRUE(Mentions(r, "never ended")) << Violations(r);
}

TEST(ChaosHistoryTest, UnknownFailureReasonFails) {
  H h;
  h.Submit(1, "a");
  h.Fail(1, "Internal", "the sequence table is corrupt");
  h.Liveness();
  const auto r = CheckHistory(h.events, Options());
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.failed.at("Internal"), 1);
  EXPECT_TRUE(Mentions(r, "outside the documented set")) << Violations(r);
}

TEST(ChaosHistoryTest, FailureWithoutMessageFails) {
  H h;
  h.Submit(1, "a");
  h.Fail(1, "Aborted", "");
  h.Liveness();
  EXPECT_FALSE(CheckHistory(h.events, Options()).ok());
}

TEST(ChaosHistoryTest, TokensDifferingFromTheFaultFreeRunFail) {
  H h;
  h.Submit(1, "a");
  h.Done(1, 0, {5, 9, 11}, {5, 9, 11}, "stop");  // position 1 dropped
  h.Liveness();
  const auto r = CheckHistory(h.events, Options());
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.differing, 1);
  EXPECT_TRUE(Mentions(r, "missing")) << Violations(r);
}

TEST(ChaosHistoryTest, TokenAfterTheEndingFails) {
  H h;
  h.Submit(1, "a");
  h.Done(1, 0, {5, 7, 9, 11}, {5, 7, 9, 11});
  h.Tokens(1, 4, {13});
  h.Liveness();
  const auto r = CheckHistory(h.events, Options());
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(Mentions(r, "after the request ended")) << Violations(r);
}

TEST(ChaosHistoryTest, LivenessBatchMustBeServed) {
  H h;
  h.Submit(100, "a", 4, "liveness");
  h.Fail(100, "Unavailable", "not serving");
  auto r = CheckHistory(h.events, Options());
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(Mentions(r, "liveness batch was not served")) << Violations(r);
  H none;
  none.Submit(1, "a");
  none.Done(1, 0, {5, 7, 9, 11}, {5, 7, 9, 11});
  r = CheckHistory(none.events, Options());
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(Mentions(r, "no liveness batch")) << Violations(r);
}

TEST(ChaosHistoryTest, EventsOfAnUnsubmittedRequestFail) {
  H h;
  h.Tokens(7, 0, {5});
  h.Liveness();
  EXPECT_FALSE(CheckHistory(h.events, Options()).ok());
}

TEST(ChaosHistoryTest, HistoryRoundTripsThroughJsonLines) {
  H h;
  h.Submit(1, "b");
  h.Tokens(1, 0, {3});
  h.Done(1, 1, {3, 4, 8}, {3, 3, 4, 8});
  h.Fail(2, "Aborted", "x");
  const auto path = std::filesystem::temp_directory_path() / ("chaos-history-" + std::to_string(getpid()) + ".jsonl");
  {
    std::ofstream out(path);
    for (const auto& e : h.events) out << ToJson(e).dump() << "\n";
  }
  std::vector<HistoryEvent> back;
  std::string error;
  ASSERT_TRUE(ReadHistory(path.string(), back, error)) << error;
  std::filesystem::remove(path);
  ASSERT_EQ(back.size(), h.events.size());
  for (size_t i = 0; i < back.size(); ++i) EXPECT_EQ(ToJson(back[i]), ToJson(h.events[i]));
}

}  // namespace
}  // namespace xcpipe::chaos
