// StepExecutor on its own, without a socket or a worker process: the tiny XComposer2-VL fixture
// (decoder blocks, embed and head) as one stage, its steps timed on a SimulatedClock that moves
// 1 ms per decoder layer, so the stage timings it reports are exact.
#include "../src/step_executor.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "tiny_model.h"
#include "xcpipe/base/clock.h"
#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::worker {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

fs::path ModelDir() { return testing::TinyModelDir(); }
const std::vector<int64_t>& kPrompt = testing::kTinyPrompt;

class StepExecutorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(ModelDir())) GTEST_SKIP() << "fixtures not found at " << ModelDir();
    auto described = checkpoint::DescribeCheckpoint(ModelDir());
    ASSERT_TRUE(described.ok()) << described.status().ToString();
    const auto& blocks = described->spec.blocks;
    // Every block but the vision tower (text steps only): embed, the decoder layers, the head.
    size_t begin = 0;
    while (begin < blocks.size() && blocks[begin].kind == checkpoint::BlockKind::kVision) ++begin;
    model::StageOptions so;
    so.dtype = model::ComputeDType::kF32;
    so.kv_budget_bytes = 64ull << 20;
    so.prefault = false;
    so.huge_pages = false;
    // Each decoder layer "takes" 1 ms of simulated time.
    so.decoder_layer_timed = [this](int64_t) {
      clock_.Advance(1ms);
      ++layers_run_;
    };
    auto loaded = model::StageModel::Load(ModelDir(), described->spec, model::BlockRange{begin, blocks.size()}, so);
    ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
    executor_.Assign(0, 1);  // the only stage: first and last
    executor_.SetModel(std::move(loaded).value());
    executor_.step_times().Reset(clock_.now());
  }

  Admission AdmitPrompt(uint64_t id) {
    Admission a;
    a.sequence_id = id;
    a.max_tokens = 32;
    a.prefill_rows = static_cast<int64_t>(kPrompt.size());
    return a;
  }

  // A first-stage step of rows [begin, end) of kPrompt for sequence `id`.
  PendingStep PromptStep(uint64_t id, size_t begin, size_t end) {
    PendingStep step;
    step.arrived = clock_.now();
    step.segments = {{id, static_cast<int64_t>(end - begin), static_cast<int64_t>(begin)}};
    std::vector<int64_t> ids(kPrompt.begin() + static_cast<std::ptrdiff_t>(begin),
                             kPrompt.begin() + static_cast<std::ptrdiff_t>(end));
    step.input.token_ids = at::tensor(ids, at::kLong);
    step.input.im_mask = at::zeros({static_cast<int64_t>(ids.size())}, at::kBool);
    step.input.segments = step.segments;
    return step;
  }

  SimulatedClock clock_;
  int64_t layers_run_ = 0;
  StepExecutor executor_{StepExecutorOptions{&clock_}};
};

TEST_F(StepExecutorTest, StageTimingsComeFromTheClock) {
  ASSERT_TRUE(executor_.Admit(AdmitPrompt(1)).ok());
  PendingStep step = PromptStep(1, 0, kPrompt.size());
  ASSERT_TRUE(executor_.Admitted(step.segments));
  step.stage_micros = {1234};  // an earlier stage's time travels on unchanged
  const auto started = clock_.now();

  auto out = executor_.Run(step);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ASSERT_GT(layers_run_, 0);
  const int64_t layer_micros = 1000 * layers_run_;
  EXPECT_EQ(clock_.now() - started, std::chrono::microseconds(layer_micros));
  EXPECT_EQ(out->stage_micros, (std::vector<int64_t>{1234, layer_micros}));
  ASSERT_EQ(out->tokens.size(), 1u);
  EXPECT_GE(out->tokens[0], 0) << "the last stage samples after the whole prompt";
  EXPECT_FALSE(out->logits.defined()) << "logits only when asked for";
  EXPECT_EQ(executor_.steps_completed(), 1u);

  // Idle for as long as the step took, then a decode step of the sampled token.
  clock_.Advance(std::chrono::microseconds(layer_micros));
  const int64_t layers_before = layers_run_;
  PendingStep decode;
  decode.segments = {{1, 1, static_cast<int64_t>(kPrompt.size())}};
  decode.input.token_ids = at::tensor(std::vector<int64_t>{out->tokens[0]}, at::kLong);
  decode.input.im_mask = at::zeros({1}, at::kBool);
  decode.input.segments = decode.segments;
  decode.want_logits = true;
  auto next = executor_.Run(decode);
  ASSERT_TRUE(next.ok()) << next.status().ToString();
  EXPECT_EQ(next->stage_micros, (std::vector<int64_t>{1000 * (layers_run_ - layers_before)}));
  ASSERT_TRUE(next->logits.defined());
  EXPECT_EQ(next->logits.size(0), 1);

  // The monitoring window saw exactly those two steps and the idle gap between them.
  const StepTimeSummary summary = executor_.step_times().Summarize(clock_.now());
  EXPECT_EQ(summary.steps, 2u);
  EXPECT_EQ(summary.p99_micros, static_cast<uint64_t>(layer_micros));
  EXPECT_EQ(executor_.step_times().busy_micros_total(), static_cast<uint64_t>(2 * layer_micros));
  EXPECT_GT(summary.idle_fraction, 0.0);
  EXPECT_LT(summary.idle_fraction, 1.0);
}

TEST_F(StepExecutorTest, APieceOfALongPromptSamplesNothing) {
  ASSERT_TRUE(executor_.Admit(AdmitPrompt(7)).ok());
  PendingStep head = PromptStep(7, 0, 5);
  auto first = executor_.Run(head);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->tokens, (std::vector<int64_t>{-1})) << "a step ending inside the prompt samples no token";
  PendingStep tail = PromptStep(7, 5, kPrompt.size());
  auto second = executor_.Run(tail);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  ASSERT_EQ(second->tokens.size(), 1u);
  EXPECT_GE(second->tokens[0], 0);
}

TEST_F(StepExecutorTest, AdmissionErrorsAreValuesAndReleaseForgets) {
  Admission bad = AdmitPrompt(3);
  bad.sampling.temperature = -1;  // out of range
  Status st = executor_.Admit(bad);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.ToString();
  EXPECT_FALSE(executor_.Admitted({{3, 1, 0}})) << "a refused admission holds nothing";

  ASSERT_TRUE(executor_.Admit(AdmitPrompt(4)).ok());
  EXPECT_TRUE(executor_.Admitted({{4, 1, 0}}));
  executor_.Release(4);
  EXPECT_FALSE(executor_.Admitted({{4, 1, 0}}));

  StepExecutor empty{StepExecutorOptions{&clock_}};
  EXPECT_EQ(empty.Admit(AdmitPrompt(5)).code(), StatusCode::kFailedPrecondition) << "no model yet";
}

}  // namespace
}  // namespace xcpipe::worker
