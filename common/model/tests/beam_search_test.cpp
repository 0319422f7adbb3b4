// Beam search bookkeeping against small examples worked out by hand (vocabulary of 5, token 4 is
// EOS, 2 beams), and the KV reorder that follows a step's parents.
//
// Most rows are "uniform over a set": logit 0 on k tokens, -inf elsewhere. log_softmax then gives
// -ln(k) on those tokens in any row, so two totals written the same way below are equal bit for
// bit, and the tie rules are what decides. L2 = ln 2 = 0.693147, L3 = ln 3 = 1.098612.
#include "xcpipe/model/beam_generation.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <limits>

#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/model/stage_model.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::model {
namespace {

constexpr int64_t kVocab = 5;
constexpr int64_t kEos = 4;
const double L2 = std::log(2.0);
const double L3 = std::log(3.0);

// One row of logits: `value` at each given token (default 0), -inf elsewhere.
at::Tensor Row(std::vector<std::pair<int64_t, float>> logits) {
  at::Tensor r = at::full({kVocab}, -std::numeric_limits<float>::infinity(), at::kFloat);
  for (auto [t, v] : logits) r[t] = v;
  return r;
}
at::Tensor Uniform(std::vector<int64_t> tokens) {
  std::vector<std::pair<int64_t, float>> l;
  for (int64_t t : tokens) l.push_back({t, 0.0f});
  return Row(l);
}
at::Tensor Rows(std::vector<at::Tensor> rows) { return at::stack(rows); }

BeamSearchParams TwoBeams(int64_t max_new_tokens) {
  BeamSearchParams p;
  p.num_beams = 2;
  p.max_new_tokens = max_new_tokens;
  p.eos_ids = {kEos};
  p.initial_ids = {1};  // generate() handed embeddings: the placeholder BOS, length 1
  return p;
}

BeamSearch Make(const BeamSearchParams& p) {
  auto s = BeamSearch::Create(p);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return std::move(s).value();
}

BeamStepResult MustStep(BeamSearch& s, const at::Tensor& logits) {
  auto r = s.Step(logits);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(r).value() : BeamStepResult{};
}

using Ids = std::vector<int64_t>;

TEST(BeamSearchTest, TiesGoToTheLowerBeamThenTheLowerToken) {
  BeamSearch s = Make(TwoBeams(5));
  // Step 1, one prompt row uniform over {1,2,3}: each -L3. Beam 0's candidates lead (beam 1
  // starts at -1e9); tokens 1, 2, 3 tie and the lower ids open the beams: [1], [2].
  auto r = MustStep(s, Uniform({1, 2, 3}).unsqueeze(0));
  EXPECT_EQ(r.parents, (Ids{0, 0}));
  EXPECT_EQ(r.tokens, (Ids{1, 2}));
  EXPECT_TRUE(r.finished.empty());
  EXPECT_NEAR(s.beam_score(0), -L3, 1e-6);
  EXPECT_EQ(s.beam_score(0), s.beam_score(1));
  // Step 2, both rows uniform over {0,3}: all four totals are -L3 - L2. Flat order (beam * 5 +
  // token) 0, 3, 5, 8: beam 0's two tokens take both places, beam 1 is dropped.
  r = MustStep(s, Rows({Uniform({0, 3}), Uniform({0, 3})}));
  EXPECT_EQ(r.parents, (Ids{0, 0}));
  EXPECT_EQ(r.tokens, (Ids{0, 3}));
  EXPECT_EQ(s.beam_tokens(0), (Ids{1, 0}));
  EXPECT_EQ(s.beam_tokens(1), (Ids{1, 3}));
  EXPECT_NEAR(s.beam_score(1), -L3 - L2, 1e-6);
  EXPECT_FALSE(r.done);
}

// Step 1 uniform {0,1}: beams [0], [1] at -L2. Step 2: beam 0 sees only EOS (log-prob 0, total
// -L2), beam 1 tokens {2,3} (-L2 each, total -2*L2). Best first: beam 0's EOS (flat 4, rank 0 <
// 2 beams: closes H = [0] with length 2 = placeholder + one token, sum -L2), then beam 1's 2 and
// 3: the beams are [1,2] and [1,3], both -2*L2. Step 3: beam 0 sees only 0, beam 1 only 1
// (totals -2*L2): [1,2,0] and [1,3,1], and max_new_tokens = 3 ends it. Finalize offers both
// (length 1 + 3 = 4) to the kept list:
//   lp 0:  H = -L2,          [1,2,0] = -2*L2,    [1,3,1] not better than the worst: H wins,
//          returned as [0] + EOS (length 2 < max_length 4).
//   lp 1:  H = -L2/2,        [1,2,0] = -2*L2/4 = -L2/2 (a tie; [1,3,1] equal, not kept): HF's
//          sorted()+pop() returns the later of the tied, [1,2,0].
//   lp 2:  H = -L2/4,        [1,2,0] = [1,3,1] = -2*L2/16 = -L2/8: both kept, H evicted; the
//          later, [1,3,1], wins.
//   lp -1: H = -2*L2,        [1,2,0] = -8*L2: H wins.
struct LengthPenaltyCase {
  double length_penalty;
  Ids best;
  double score;
};
class BeamLengthPenaltyTest : public ::testing::TestWithParam<LengthPenaltyCase> {};

TEST_P(BeamLengthPenaltyTest, EarlyEosHypothesisAgainstLongerBeams) {
  BeamSearchParams p = TwoBeams(3);
  p.length_penalty = GetParam().length_penalty;
  BeamSearch s = Make(p);
  auto r = MustStep(s, Uniform({0, 1}).unsqueeze(0));
  EXPECT_EQ(r.tokens, (Ids{0, 1}));
  r = MustStep(s, Rows({Uniform({kEos}), Uniform({2, 3})}));
  ASSERT_EQ(r.finished.size(), 1u);  // beam 0 ended before the others
  EXPECT_EQ(r.finished[0].parent, 0);
  EXPECT_EQ(r.finished[0].eos_token, kEos);
  EXPECT_NEAR(r.finished[0].score, -L2 / std::pow(2.0, p.length_penalty), 1e-6);
  EXPECT_EQ(r.parents, (Ids{1, 1}));
  EXPECT_EQ(r.tokens, (Ids{2, 3}));
  EXPECT_FALSE(r.done);
  r = MustStep(s, Rows({Uniform({0}), Uniform({1})}));
  EXPECT_EQ(r.parents, (Ids{0, 1}));
  EXPECT_TRUE(r.done);
  EXPECT_EQ(s.stop_reason(), BeamStopReason::kMaxLength);
  auto best = s.Best();
  ASSERT_TRUE(best.ok()) << best.status().ToString();
  EXPECT_EQ(best->tokens, GetParam().best);
  EXPECT_NEAR(best->score, GetParam().score, 1e-6);
}

INSTANTIATE_TEST_SUITE_P(
    Penalties, BeamLengthPenaltyTest,
    ::testing::Values(LengthPenaltyCase{0.0, {0, kEos}, -L2}, LengthPenaltyCase{1.0, {1, 2, 0}, -L2 / 2},
                      LengthPenaltyCase{2.0, {1, 3, 1}, -L2 / 8}, LengthPenaltyCase{-1.0, {0, kEos}, -2 * L2}));

// early_stopping. a = ln(1 + 2 e^-3) = 0.094923 (log-sum-exp of logits {0, -3, -3}).
// Step 1 uniform {0,1}: [0], [1] at -L2 = -0.693147.
// Step 2, both rows EOS 0, tokens 2 and 3 at -3: EOS -a, tokens -3 - a. Totals: EOS -L2 - a =
//   -0.788070 on both beams (flat 4, 9: ranks 0 and 1, so both close: H1 = [0], H2 = [1], length
//   2, score -0.788070 / 2 = -0.394035), then beam 0's tokens 2, 3 at -L2 - 3 - a = -3.788070:
//   beams [0,2], [0,3]. Two hypotheses kept = num_beams, so is_done asks, with the step's best
//   total -0.788070 and cur_len 1 + 1 + 1 = 3:
//     True:  done at once. The running beams are not offered; H1, H2 tie: H2 = [1] + EOS.
//     False: worst -0.394035 >= -0.788070 / 3 = -0.262690? no.
//     never: worst >= -0.788070 / max_length 11 = -0.071643? no.
// Step 3, rows uniform {0}: totals -3.788070, beams [0,2,0], [0,3,0]; cur_len 4:
//     False: -0.394035 >= -3.788070 / 4 = -0.947018: done; H2 again.
//     never: -0.394035 >= -3.788070 / 11 = -0.344370? no, and it stays no: the same rows run to
//     max_new_tokens 10. Finalize offers [0,2,0,...] and [0,3,0,...] (length 11, -0.344370):
//     both beat the kept ones, H1 and H2 go, and the later beam wins: [0,3,0,0,0,0,0,0,0,0]
//     (length 11 = max_length: nothing appended).
struct EarlyStoppingCase {
  EarlyStopping mode;
  int64_t steps;
  BeamStopReason reason;
  Ids best;
  double score;
};
class BeamEarlyStoppingTest : public ::testing::TestWithParam<EarlyStoppingCase> {};

TEST_P(BeamEarlyStoppingTest, StopsAsHuggingFaceDoes) {
  const double a = std::log(1 + 2 * std::exp(-3.0));
  BeamSearchParams p = TwoBeams(10);
  p.early_stopping = GetParam().mode;
  BeamSearch s = Make(p);
  auto r = MustStep(s, Uniform({0, 1}).unsqueeze(0));
  const at::Tensor eos_first = Row({{kEos, 0.0f}, {2, -3.0f}, {3, -3.0f}});
  r = MustStep(s, Rows({eos_first, eos_first}));
  ASSERT_EQ(r.finished.size(), 2u);
  EXPECT_NEAR(r.finished[1].score, (-L2 - a) / 2, 1e-6);
  EXPECT_EQ(r.tokens, (Ids{2, 3}));
  EXPECT_NEAR(s.beam_score(0), -L2 - 3 - a, 1e-5);
  while (!r.done) {
    EXPECT_TRUE(s.Best().status().code() == StatusCode::kFailedPrecondition);
    r = MustStep(s, Rows({Uniform({0}), Uniform({0})}));
    if (s.new_tokens() > 10) break;
  }
  EXPECT_EQ(s.new_tokens(), GetParam().steps);
  EXPECT_EQ(s.stop_reason(), GetParam().reason);
  auto best = s.Best();
  ASSERT_TRUE(best.ok()) << best.status().ToString();
  EXPECT_EQ(best->tokens, GetParam().best);
  EXPECT_NEAR(best->score, GetParam().score, 1e-5);
  EXPECT_EQ(s.Step(Rows({Uniform({0}), Uniform({0})})).status().code(), StatusCode::kFailedPrecondition);
}

INSTANTIATE_TEST_SUITE_P(
    Modes, BeamEarlyStoppingTest,
    ::testing::Values(
        EarlyStoppingCase{EarlyStopping::kTrue, 2, BeamStopReason::kHypothesesDone, {1, kEos}, -0.394035},
        EarlyStoppingCase{EarlyStopping::kFalse, 3, BeamStopReason::kHypothesesDone, {1, kEos}, -0.394035},
        EarlyStoppingCase{EarlyStopping::kNever, 10, BeamStopReason::kMaxLength, {0, 3, 0, 0, 0, 0, 0, 0, 0, 0},
                          -0.344370}));

// min_new_tokens 2 (or min_length 3 = placeholder + 2): EOS is -inf for the first two steps,
// after log_softmax (the other log-probabilities are not renormalized).
// Step 1: logits EOS 0, token 0 -1, token 1 -2: log-sum-exp ln(1 + e^-1 + e^-2) = 0.407606, so
//   token 0 -1.407606, token 1 -2.407606; the EOS (-0.407606, the best) is forbidden.
//   Beams [0], [1].
// Step 2: both rows EOS 0, token 2 -1: log-sum-exp ln(1 + e^-1) = 0.313262; token 2 -1.313262.
//   EOS forbidden again. Totals: [0,2] -2.720868, [1,2] -3.720868.
// Step 3: EOS allowed. Beam 0: EOS 0, token 3 -1: EOS total -3.034130, token 3 -4.034130. Beam 1
//   sees only token 3 (log-prob 0): -3.720868. Best first: beam 0's EOS (rank 0) closes
//   H = [0,2], length 3, -3.034130 / 3 = -1.011377; then [1,2,3] (-3.720868) and [0,2,3]
//   (-4.034130). max_new_tokens 3 ends it. Finalize, length 4: [1,2,3] -0.930217 joins; [0,2,3]
//   -1.008533 beats H's -1.011377, which is evicted. Best [1,2,3], nothing appended.
class BeamMinLengthTest : public ::testing::TestWithParam<std::pair<int64_t, int64_t>> {};

TEST_P(BeamMinLengthTest, EosIsForbiddenUntilTheMinimum) {
  BeamSearchParams p = TwoBeams(3);
  p.min_length = GetParam().first;
  p.min_new_tokens = GetParam().second;
  BeamSearch s = Make(p);
  auto r = MustStep(s, Row({{kEos, 0.0f}, {0, -1.0f}, {1, -2.0f}}).unsqueeze(0));
  EXPECT_TRUE(r.finished.empty());
  EXPECT_EQ(r.tokens, (Ids{0, 1}));
  EXPECT_NEAR(s.beam_score(0), -1.407606, 1e-5);
  const at::Tensor eos_first = Row({{kEos, 0.0f}, {2, -1.0f}});
  r = MustStep(s, Rows({eos_first, eos_first}));
  EXPECT_TRUE(r.finished.empty());
  EXPECT_EQ(r.parents, (Ids{0, 1}));
  EXPECT_EQ(r.tokens, (Ids{2, 2}));
  r = MustStep(s, Rows({Row({{kEos, 0.0f}, {3, -1.0f}}), Uniform({3})}));
  ASSERT_EQ(r.finished.size(), 1u);
  EXPECT_NEAR(r.finished[0].score, -1.011377, 1e-5);
  EXPECT_EQ(r.parents, (Ids{1, 0}));
  EXPECT_TRUE(r.done);
  auto all = s.Hypotheses();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].tokens, (Ids{1, 2, 3}));
  EXPECT_NEAR((*all)[0].score, -0.930217, 1e-5);
  EXPECT_EQ((*all)[1].tokens, (Ids{0, 2, 3}));
  EXPECT_NEAR((*all)[1].score, -1.008533, 1e-5);
  EXPECT_FALSE((*all)[0].ended_on_eos);
}

INSTANTIATE_TEST_SUITE_P(MinNewTokensOrMinLength, BeamMinLengthTest,
                         ::testing::Values(std::pair<int64_t, int64_t>{0, 2}, std::pair<int64_t, int64_t>{3, 0}));

// Repetition penalty 2 on log-probabilities (all negative: multiplied), per beam, over HF's
// input_ids: initial_ids {0} and the beam's own tokens.
// Step 1, uniform {0,1} (-L2 each): token 0 is an initial id, -2*L2. Beams [1] (-L2), [0]
//   (-2*L2): without the prompt's penalty the order would be [0], [1].
// Step 2, both rows uniform {0,1,2} (-L3 each).
//   Beam [1] (ids {0,1}): tokens 0, 1 -> -2*L3, 2 stays -L3: totals 0, 1: -L2 - 2*L3 = -2.890372,
//   2: -L2 - L3 = -1.791759.
//   Beam [0] (ids {0}): token 0 -> -2*L3; 1, 2 -L3: totals 0: -2*L2 - 2*L3 = -3.583519, 1 and 2:
//   -2*L2 - L3 = -2.484907.
//   Best first: [1,2] -1.791759, then beam 1's tie, token 1 before 2: [0,1] -2.484907.
//   (Beam 0's ids applied to beam 1 would give [0,2]; only the prompt's ids, [1,1].)
// max_new_tokens 2: finalize with length 3: [1,2] -0.597253 wins.
TEST(BeamSearchTest, RepetitionPenaltyCoversTheInitialIdsAndEachBeamsOwnTokens) {
  BeamSearchParams p = TwoBeams(2);
  p.initial_ids = {0};
  p.repetition_penalty = 2.0;
  BeamSearch s = Make(p);
  auto r = MustStep(s, Uniform({0, 1}).unsqueeze(0));
  EXPECT_EQ(r.tokens, (Ids{1, 0}));
  EXPECT_NEAR(s.beam_score(1), -2 * L2, 1e-6);
  r = MustStep(s, Rows({Uniform({0, 1, 2}), Uniform({0, 1, 2})}));
  EXPECT_EQ(r.parents, (Ids{0, 1}));
  EXPECT_EQ(r.tokens, (Ids{2, 1}));
  EXPECT_NEAR(s.beam_score(0), -L2 - L3, 1e-6);
  EXPECT_NEAR(s.beam_score(1), -2 * L2 - L3, 1e-6);
  ASSERT_TRUE(r.done);
  auto best = s.Best();
  ASSERT_TRUE(best.ok());
  EXPECT_EQ(best->tokens, (Ids{1, 2}));
  EXPECT_NEAR(best->score, (-L2 - L3) / 3, 1e-6);
}

// The official 1.0 stopping criterion: generation ends when every beam's last token is the
// same stop token; the beams keep it. Step 1 uniform {0,3}: [0], [3]. Step 2 both rows see only
// token 3: [0,3], [3,3], both -L2, all end with 3. Finalize, length 3: the kept list is empty,
// so both join (fewer than num_beams kept) at -L2/3, and the later of the tie wins: [3,3]. HF
// appends eos_ids[0] to a result shorter than max_length (6): [3,3,4].
TEST(BeamSearchTest, AllBeamsEndingWithAStopTokenEndsGeneration) {
  BeamSearchParams p = TwoBeams(5);
  p.stop_when_all_beams_end_with = {2, 3};
  BeamSearch s = Make(p);
  auto r = MustStep(s, Uniform({0, 3}).unsqueeze(0));
  EXPECT_FALSE(r.done);
  r = MustStep(s, Rows({Uniform({3}), Uniform({3})}));
  EXPECT_TRUE(r.done);
  EXPECT_EQ(s.stop_reason(), BeamStopReason::kAllBeamsStopped);
  auto best = s.Best();
  ASSERT_TRUE(best.ok());
  EXPECT_EQ(best->tokens, (Ids{3, 3, kEos}));
  EXPECT_FALSE(best->ended_on_eos);
  EXPECT_NEAR(best->score, -L2 / 3, 1e-6);
}

TEST(BeamSearchTest, BadInputIsRefusedAndChangesNothing) {
  BeamSearchParams p = TwoBeams(3);
  p.num_beams = 1;
  EXPECT_EQ(BeamSearch::Create(p).status().code(), StatusCode::kInvalidArgument);
  p = TwoBeams(0);
  EXPECT_EQ(BeamSearch::Create(p).status().code(), StatusCode::kInvalidArgument);
  p = TwoBeams(3);
  p.initial_ids.clear();
  EXPECT_EQ(BeamSearch::Create(p).status().code(), StatusCode::kInvalidArgument);
  p = TwoBeams(3);
  p.repetition_penalty = 0;
  EXPECT_EQ(BeamSearch::Create(p).status().code(), StatusCode::kInvalidArgument);

  BeamSearch s = Make(TwoBeams(3));
  EXPECT_EQ(s.Step(at::zeros({3, kVocab})).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.Step(at::zeros({kVocab})).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.Step(at::zeros({1, kVocab}, at::kLong)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.Step(at::zeros({1, 3})).status().code(), StatusCode::kInvalidArgument);  // EOS 4 outside
  at::Tensor nan = Uniform({0, 1}).unsqueeze(0);
  nan[0][2] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(s.Step(nan).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.Step(Row({}).unsqueeze(0)).status().code(), StatusCode::kInvalidArgument);  // all -inf
  EXPECT_EQ(s.new_tokens(), 0);
  EXPECT_EQ(s.Best().status().code(), StatusCode::kFailedPrecondition);
  MustStep(s, Uniform({0, 1}).unsqueeze(0));
  // After the first step one row no longer stands for every beam, and the vocabulary is fixed.
  EXPECT_EQ(s.Step(Uniform({0}).unsqueeze(0)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.Step(at::zeros({2, kVocab + 1})).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.new_tokens(), 1);
  EXPECT_EQ(s.beam_tokens(1), (Ids{1}));
}

// The official chat() per version: 1.0 closes hypotheses on the config's EOS only and stops when
// every beam ends with end-of-human or end-of-assistant; 2.x closes them on EOS and im_end. Its
// input_ids are the prompt's where it hands generate() ids (2.x text prompts), else {bos}.
TEST(BeamSearchTest, OfficialEndsAndInitialIdsFollowTheVersion) {
  checkpoint::ModelSpec v1;
  v1.arch = checkpoint::ModelArch::kIxc1;
  v1.llm.eos_id = 2;
  v1.llm.bos_id = 1;
  v1.llm.stop_ids = {2, 103027, 103028};
  BeamSearchParams p;
  SetOfficialBeamEnds(v1, p);
  EXPECT_EQ(p.eos_ids, (Ids{2}));
  EXPECT_EQ(p.stop_when_all_beams_end_with, (Ids{103027, 103028}));
  EXPECT_EQ(OfficialInitialIds(v1, {1, 5, 6}, false), (Ids{1}));

  checkpoint::ModelSpec v2 = v1;
  v2.arch = checkpoint::ModelArch::kIxc2Vl;
  v2.llm.stop_ids = {2, 92542};
  SetOfficialBeamEnds(v2, p);
  EXPECT_EQ(p.eos_ids, (Ids{2, 92542}));
  EXPECT_TRUE(p.stop_when_all_beams_end_with.empty());
  EXPECT_EQ(OfficialInitialIds(v2, {1, 1, 92543}, false), (Ids{1, 1, 92543}));
  EXPECT_EQ(OfficialInitialIds(v2, {1, -1, 92543}, true), (Ids{1}));
}

// ---- KV reorder on a real (tiny) model ----

namespace fs = std::filesystem;

// Sequences 10, 11, 12 hold three different prompts A, B, C. After ReorderSequences with
// parents {2, 0, 0}, 10 continues C and 11, 12 continue A: 10 takes C's room, 11 takes A's and
// 12 needs a copy of A, which must be read before 10's move replaces it. One decode step on each
// must then give the logits of C, A, A prefilled afresh with the same next token.
TEST(BeamReorderTest, SequencesContinueTheirParentsWithoutClobbering) {
  const fs::path dir = testing::FixturesDir() / "ixc2_vl" / "checkpoint";
  if (!fs::exists(dir)) GTEST_SKIP() << "fixtures not found at " << dir;
  auto described = checkpoint::DescribeCheckpoint(dir);
  ASSERT_TRUE(described.ok()) << described.status().ToString();
  auto loaded = StageModel::Load(dir, described->spec, WholeModel(described->spec), {});
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  StageModel& model = **loaded;
  const std::vector<Ids> prompts = {{1, 1, 92543, 1008}, {1, 364, 9843, 346}, {1, 5368, 777, 2000}};
  const int64_t T = 4, next_token = 3000;
  const std::vector<uint64_t> ids = {10, 11, 12};

  auto prefill = [&](uint64_t id, const Ids& tokens) {
    EXPECT_TRUE(model.ReserveSequence(id, T + 2).ok());
    StepInput in;
    in.segments = {{id, static_cast<int64_t>(tokens.size()), 0}};
    in.token_ids = at::tensor(tokens, at::kLong);
    in.im_mask = at::zeros({static_cast<int64_t>(tokens.size())}, at::kBool);
    auto out = model.Forward(in);
    EXPECT_TRUE(out.ok()) << out.status().ToString();
    return out.ok() ? out->logits : at::Tensor();
  };
  for (size_t i = 0; i < 3; ++i) prefill(ids[i], prompts[i]);
  const uint64_t reserved = model.kv_bytes_reserved();

  EXPECT_EQ(model.ReorderSequences(ids, {2, 0}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(model.ReorderSequences(ids, {2, 0, 3}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(model.ReorderSequences({10, 11, 99}, {0, 0, 0}).code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(model.ReorderSequences(ids, {2, 0, 0}).ok());
  EXPECT_EQ(model.kv_bytes_reserved(), reserved);

  StepInput step;
  for (uint64_t id : ids) step.segments.push_back({id, 1, T});
  step.token_ids = at::full({3}, next_token, at::kLong);
  step.im_mask = at::zeros({3}, at::kBool);
  auto out = model.Forward(step);
  ASSERT_TRUE(out.ok()) << out.status().ToString();

  const std::vector<size_t> parent = {2, 0, 0};
  for (size_t i = 0; i < 3; ++i) {
    Ids whole = prompts[parent[i]];
    whole.push_back(next_token);
    at::Tensor want = prefill(100 + i, whole);
    ASSERT_TRUE(want.defined());
    EXPECT_TRUE(at::allclose(out->logits[static_cast<int64_t>(i)], want[0], 1e-4, 1e-4))
        << "sequence " << ids[i] << ": max diff " << (out->logits[static_cast<int64_t>(i)] - want[0]).abs().max().item<float>();
  }
  model.ReleaseAllSequences();
}

}  // namespace
}  // namespace xcpipe::model
