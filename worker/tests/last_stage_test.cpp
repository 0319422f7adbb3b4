// The last stage's token selection through the wire, on a real xcpipe-worker process (CPU)
// that holds the whole tiny XComposer2-VL fixture as one stage, driven by a scripted
// coordinator: min_new_tokens masks the stop ids the admission names, a replayed sequence counts
// its earlier tokens toward that minimum, and a step that ends inside the prompt (a piece of a
// long prompt) samples nothing.
#include <gtest/gtest.h>

#include <filesystem>

#include "scripted_coordinator.h"
#include "tiny_model.h"
#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/coordinator/local_cluster.h"

namespace xcpipe::worker {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

fs::path ModelDir() { return testing::TinyModelDir(); }
const std::vector<int64_t>& kPrompt = testing::kTinyPrompt;

class LastStageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(ModelDir())) GTEST_SKIP() << "fixtures not found at " << ModelDir();
    ASSERT_TRUE(coordinator_.ok());
    auto described = checkpoint::DescribeCheckpoint(ModelDir());
    ASSERT_TRUE(described.ok()) << described.status().ToString();
    capnp::MallocMessageBuilder m;
    auto a = m.initRoot<proto::Envelope>().initAssignStage();
    a.setEpoch(1);
    a.setStageIndex(0);
    a.setStageCount(1);
    a.setBlockBegin(0);
    a.setBlockEnd(static_cast<uint32_t>(described->spec.blocks.size()));
    a.setModelPath(fs::absolute(ModelDir()).string());
    a.setDtype("f32");
    a.setKvBudgetBytes(64ull << 20);
    a.setSpecOverrides(coordinator::FixtureSpecOverrides(ModelDir()));
    a.setMaxBatchRows(64);
    a.setDataPlane("tcp");
    ASSERT_TRUE(coordinator_.Send(m));
    auto ready = coordinator_.Await(proto::Envelope::STAGE_READY, 60s);
    ASSERT_TRUE(ready.has_value()) << "the stage did not load";
    ASSERT_EQ(ready->message->envelope().which(), proto::Envelope::STAGE_READY)
        << ready->message->envelope().getError().getMessage().cStr();
  }

  struct Admission {
    uint32_t min_new_tokens = 0;
    std::vector<int64_t> stop_ids;
    uint32_t generated = 0;
    uint32_t prefill_rows = static_cast<uint32_t>(kPrompt.size());
  };

  void Admit(uint64_t id, const Admission& adm) {
    capnp::MallocMessageBuilder m;
    auto a = m.initRoot<proto::Envelope>().initAdmitSequence();
    a.setEpoch(1);
    a.setSequenceId(id);
    a.setMaxTokens(32);
    a.initSampling().setMinNewTokens(adm.min_new_tokens);
    auto stops = a.initStopIds(static_cast<unsigned>(adm.stop_ids.size()));
    for (size_t i = 0; i < adm.stop_ids.size(); ++i) stops.set(static_cast<unsigned>(i), adm.stop_ids[i]);
    a.setGeneratedTokens(adm.generated);
    a.setPrefillRows(adm.prefill_rows);
    ASSERT_TRUE(coordinator_.Send(m));
  }

  // Runs rows [begin, end) of kPrompt for sequence `id` as one step; the token the last stage
  // answers (-1: none), or nullopt with a failure.
  std::optional<int64_t> Step(uint64_t id, size_t begin, size_t end) {
    capnp::MallocMessageBuilder m;
    auto f = m.initRoot<proto::Envelope>().initForward();
    f.setEpoch(1);
    f.setMicroBatchId(++micro_batch_);
    f.setStep(micro_batch_);
    auto seg = f.initSegments(1)[0];
    seg.setSequenceId(id);
    seg.setRows(static_cast<uint32_t>(end - begin));
    seg.setStartPos(static_cast<uint32_t>(begin));
    auto ids = f.initTokenIds(static_cast<unsigned>(end - begin));
    for (size_t i = begin; i < end; ++i) ids.set(static_cast<unsigned>(i - begin), kPrompt[i]);
    f.initImMask(static_cast<unsigned>(end - begin));  // zeros: no image rows
    if (!coordinator_.Send(m)) return std::nullopt;
    auto in = coordinator_.Await(proto::Envelope::STEP_RESULT, 30s);
    EXPECT_TRUE(in.has_value()) << "no step result";
    if (!in) return std::nullopt;
    auto env = in->message->envelope();
    EXPECT_EQ(env.which(), proto::Envelope::STEP_RESULT) << env.getError().getMessage().cStr();
    if (env.which() != proto::Envelope::STEP_RESULT) return std::nullopt;
    auto r = env.getStepResult();
    EXPECT_EQ(r.getSequenceIds().size(), 1u);
    if (r.getTokens().size() != 1) return std::nullopt;
    return r.getTokens()[0];
  }

  testing::ScriptedCoordinator coordinator_{"last-stage"};
  uint64_t micro_batch_ = 0;
};

TEST_F(LastStageTest, MinNewTokensMasksTheStopIdsAndPiecesSampleNothing) {
  // The greedy token after the whole prompt, with nothing masked.
  Admit(1, {});
  const auto free = Step(1, 0, kPrompt.size());
  ASSERT_TRUE(free.has_value());
  ASSERT_GE(*free, 0);

  // The same prompt with that token named a stop id and one new token required: another token.
  Admit(2, {.min_new_tokens = 1, .stop_ids = {*free}});
  const auto masked = Step(2, 0, kPrompt.size());
  ASSERT_TRUE(masked.has_value());
  EXPECT_GE(*masked, 0);
  EXPECT_NE(*masked, *free) << "the stop id was sampled before min_new_tokens";

  // A replay that already generated 2 tokens of a minimum of 2: nothing is masked any more.
  Admit(3, {.min_new_tokens = 2, .stop_ids = {*free}, .generated = 2});
  const auto replayed = Step(3, 0, kPrompt.size());
  ASSERT_TRUE(replayed.has_value());
  EXPECT_EQ(*replayed, *free);

  // The prompt in two pieces: the first ends inside the prompt and samples no token; the
  // second gives the whole prompt's token.
  Admit(4, {});
  const auto first_piece = Step(4, 0, 5);
  ASSERT_TRUE(first_piece.has_value());
  EXPECT_EQ(*first_piece, -1);
  const auto second_piece = Step(4, 5, kPrompt.size());
  ASSERT_TRUE(second_piece.has_value());
  EXPECT_EQ(*second_piece, *free);
  std::cout << "greedy " << *free << ", masked " << *masked << ", replayed " << *replayed << ", pieces " << *first_piece
            << " then " << *second_piece << "\n";
}

TEST_F(LastStageTest, ARefusedAdmissionNamesItsSequenceAndNoMicroBatch) {
  // More tokens than the stage's whole KV budget: refused, and the error says which sequence
  // (not in the field of a micro-batch, which the coordinator would fail instead).
  capnp::MallocMessageBuilder m;
  auto a = m.initRoot<proto::Envelope>().initAdmitSequence();
  a.setEpoch(1);
  a.setSequenceId(77);
  a.setMaxTokens(1u << 30);
  a.initSampling();
  ASSERT_TRUE(coordinator_.Send(m));
  auto in = coordinator_.Await(proto::Envelope::ERROR, 20s);
  ASSERT_TRUE(in.has_value()) << "no error for an admission larger than the KV budget";
  auto e = in->message->envelope().getError();
  EXPECT_EQ(e.getCode(), proto::ErrorCode::RESOURCE_EXHAUSTED) << e.getMessage().cStr();
  EXPECT_EQ(e.getSequenceId(), 77u);
  EXPECT_EQ(e.getMicroBatchId(), 0u);
  EXPECT_EQ(e.getRequestId(), 0u);
  // The stage still serves: a sequence that fits steps as before.
  Admit(78, {});
  const auto token = Step(78, 0, kPrompt.size());
  ASSERT_TRUE(token.has_value());
  EXPECT_GE(*token, 0);
}

}  // namespace
}  // namespace xcpipe::worker
