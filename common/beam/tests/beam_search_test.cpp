// The bookkeeping without libtorch: a small example worked out by hand (ties, a beam that ends
// on EOS before the others, early stopping), run through both ways in (whole rows, and each
// row's best candidates as the last pipeline stage sends them), and the two ways against each
// other on many random steps.
//
// Rows here are log-probabilities given directly (the model library computes the log_softmax);
// the values are binary fractions, so every sum below is exact.
#include "xcpipe/beam/beam_search.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "xcpipe/checkpoint/model_spec.h"

namespace xcpipe::beam {
namespace {

constexpr int64_t kVocab = 5;
constexpr int64_t kEos = 4;
using Ids = std::vector<int64_t>;
using Row = std::vector<float>;

BeamSearch Make(const BeamSearchParams& p) {
  auto s = BeamSearch::Create(p);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return std::move(s).value();
}

// One step given whole rows (dense).
BeamStepResult DenseStep(BeamSearch& s, std::vector<Row> rows) {
  std::vector<float> flat;
  for (const auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
  auto r = s.StepScores(flat.data(), static_cast<int64_t>(rows.size()), static_cast<int64_t>(rows[0].size()));
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(r).value() : BeamStepResult{};
}

// One step given each row's best candidates, computed as the last stage computes them.
BeamStepResult SparseStep(BeamSearch& s, std::vector<Row> rows) {
  const auto& p = s.params();
  std::vector<std::vector<BeamCandidate>> candidates;
  for (size_t k = 0; k < rows.size(); ++k) {
    const auto beam = static_cast<int64_t>(k);
    candidates.push_back(RowCandidates(rows[k].data(), static_cast<int64_t>(rows[k].size()), s.PenaltyContext(beam),
                                       p.repetition_penalty, p.eos_ids, s.EosForbidden(), s.beam_score(beam),
                                       CandidatesPerRow(p)));
  }
  auto r = s.StepCandidates(candidates, static_cast<int64_t>(rows[0].size()));
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(r).value() : BeamStepResult{};
}

// Vocabulary 5, token 4 is EOS, 2 beams (4 candidates a step), initial_ids {1} (length 1).
//
// Step 1, the prompt's row: t0 -1, t1 -1, t2 -2, t3 -3, EOS -4. t0 and t1 tie: the lower id first.
//   Beams [0] (-1), [1] (-1).
// Step 2: beam [0]: EOS -0.5, t2 -1, t3 -2, t0 -3, t1 -3; beam [1]: t2 -0.5, t3 -0.5, EOS -3,
//   t0 -4, t1 -4. Totals: beam 0's EOS -1.5, beam 1's t2 and t3 -1.5: a three-way tie, taken in
//   flat order (4, 7, 8). Rank 0 is an EOS: beam [0] ends before the others, hypothesis H1 = [0],
//   length 2, score -1.5 / 2 = -0.75. Beams [1,2], [1,3], both -1.5. One kept < 2: not done.
// Step 3: both rows EOS -0.25, t0 -1, the rest -2. Totals: EOS -1.75 on both (ranks 0, 1), t0
//   -2.5 on both. H2 = [1,2] and H3 = [1,3], length 3, score -1.75 / 3 = -0.583333 each; H3
//   evicts H1 (the worst). Beams [1,2,0], [1,3,0] at -2.5. Two kept = num_beams:
//     early_stopping true:  done now.
//     early_stopping false: done when the worst kept (-0.583333) >= best total / (len + 1):
//                           -1.75 / 4 = -0.4375: no.
// Step 4 (false only): both rows t1 -0.5, the rest -3. Totals: t1 -3 on both, the rest -5.5.
//   Beams [1,2,0,1], [1,3,0,1] at -3. -0.583333 >= -3 / 5 = -0.6: done.
// Either way the hypotheses were done, so the running beams are not offered; H2 and H3 tie and
// HF's sorted()+pop() returns the later, H3, with eos_ids[0] appended (length 3 < max_length 6).
struct HandCase {
  EarlyStopping mode;
  int64_t steps;
  bool sparse;
};
class BeamHandExampleTest : public ::testing::TestWithParam<HandCase> {};

TEST_P(BeamHandExampleTest, TiesEarlyEosAndEarlyStopping) {
  BeamSearchParams p;
  p.num_beams = 2;
  p.max_new_tokens = 5;
  p.eos_ids = {kEos};
  p.initial_ids = {1};
  p.early_stopping = GetParam().mode;
  BeamSearch s = Make(p);
  auto step = [&](std::vector<Row> rows) { return GetParam().sparse ? SparseStep(s, rows) : DenseStep(s, rows); };

  auto r = step({{-1, -1, -2, -3, -4}});
  EXPECT_EQ(r.parents, (Ids{0, 0}));
  EXPECT_EQ(r.tokens, (Ids{0, 1}));
  EXPECT_TRUE(r.finished.empty());

  r = step({{-3, -3, -1, -2, -0.5f}, {-4, -4, -0.5f, -0.5f, -3}});
  ASSERT_EQ(r.finished.size(), 1u);
  EXPECT_EQ(r.finished[0].parent, 0);
  EXPECT_EQ(r.finished[0].eos_token, kEos);
  EXPECT_DOUBLE_EQ(r.finished[0].score, -0.75);
  EXPECT_EQ(r.parents, (Ids{1, 1}));
  EXPECT_EQ(r.tokens, (Ids{2, 3}));
  EXPECT_EQ(s.beam_score(0), -1.5f);
  EXPECT_FALSE(r.done);

  r = step({{-1, -2, -2, -2, -0.25f}, {-1, -2, -2, -2, -0.25f}});
  ASSERT_EQ(r.finished.size(), 2u);
  EXPECT_EQ(r.finished[1].parent, 1);
  EXPECT_DOUBLE_EQ(r.finished[1].score, -1.75 / 3);
  EXPECT_EQ(r.parents, (Ids{0, 1}));
  EXPECT_EQ(r.tokens, (Ids{0, 0}));
  if (GetParam().mode == EarlyStopping::kFalse) {
    EXPECT_FALSE(r.done);
    r = step({{-3, -0.5f, -3, -3, -3}, {-3, -0.5f, -3, -3, -3}});
    EXPECT_EQ(r.tokens, (Ids{1, 1}));
    EXPECT_EQ(s.beam_tokens(1), (Ids{1, 3, 0, 1}));
  }
  EXPECT_TRUE(r.done);
  EXPECT_EQ(s.new_tokens(), GetParam().steps);
  EXPECT_EQ(s.stop_reason(), BeamStopReason::kHypothesesDone);
  auto best = s.Best();
  ASSERT_TRUE(best.ok()) << best.status().ToString();
  EXPECT_EQ(best->tokens, (Ids{1, 3, kEos}));
  EXPECT_TRUE(best->ended_on_eos);
  EXPECT_DOUBLE_EQ(best->score, -1.75 / 3);
  auto all = s.Hypotheses();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[1].tokens, (Ids{1, 2, kEos}));
}

INSTANTIATE_TEST_SUITE_P(DenseAndSparse, BeamHandExampleTest,
                         ::testing::Values(HandCase{EarlyStopping::kTrue, 3, false},
                                           HandCase{EarlyStopping::kTrue, 3, true},
                                           HandCase{EarlyStopping::kFalse, 4, false},
                                           HandCase{EarlyStopping::kFalse, 4, true}),
                         [](const ::testing::TestParamInfo<HandCase>& info) {
                           return std::string("early_stopping_") + EarlyStoppingName(info.param.mode) +
                                  (info.param.sparse ? "_sparse" : "_dense");
                         });

// Random rows with many ties (values on a coarse grid, some -inf), several EOS ids, a repetition
// penalty, a minimum length and every early-stopping mode: the sparse path must select exactly
// what the dense path selects, step by step, to the same best hypothesis.
TEST(BeamSparseTest, SelectsExactlyAsTheDensePath) {
  constexpr int64_t kV = 23;
  int compared_steps = 0;
  for (uint32_t seed = 1; seed <= 300; ++seed) {
    std::mt19937 rng(seed);
    BeamSearchParams p;
    p.num_beams = 2 + static_cast<int64_t>(rng() % 4);
    p.max_new_tokens = 1 + static_cast<int64_t>(rng() % 8);
    p.eos_ids = rng() % 2 ? Ids{3} : Ids{3, 7};
    p.stop_when_all_beams_end_with = {5};
    p.initial_ids = {1, 2, 9};
    p.repetition_penalty = rng() % 2 ? 1.5 : 1.0;
    p.min_length = static_cast<int64_t>(rng() % 5);
    p.length_penalty = std::vector<double>{1.0, 0.0, 2.0, -1.0}[rng() % 4];
    p.early_stopping =
        std::vector<EarlyStopping>{EarlyStopping::kFalse, EarlyStopping::kTrue, EarlyStopping::kNever}[rng() % 3];
    BeamSearch dense = Make(p), sparse = Make(p);
    auto random_row = [&] {
      Row row(kV);
      for (auto& v : row) {
        const uint32_t r = rng() % 16;
        v = r == 0 ? -std::numeric_limits<float>::infinity() : -0.125f * static_cast<float>(rng() % 40) - 0.1f;
      }
      return row;
    };
    for (int64_t rows = 1; !dense.done(); rows = p.num_beams) {
      std::vector<Row> given;
      for (int64_t k = 0; k < rows; ++k) given.push_back(random_row());
      const auto a = DenseStep(dense, given);
      const auto b = SparseStep(sparse, given);
      ASSERT_EQ(a.parents, b.parents) << "seed " << seed;
      ASSERT_EQ(a.tokens, b.tokens) << "seed " << seed;
      ASSERT_EQ(a.finished.size(), b.finished.size()) << "seed " << seed;
      ASSERT_EQ(a.done, b.done) << "seed " << seed;
      for (int64_t k = 0; k < p.num_beams; ++k) ASSERT_EQ(dense.beam_score(k), sparse.beam_score(k)) << "seed " << seed;
      ++compared_steps;
    }
    auto x = dense.Best(), y = sparse.Best();
    ASSERT_TRUE(x.ok() && y.ok());
    EXPECT_EQ(x->tokens, y->tokens) << "seed " << seed;
    EXPECT_EQ(x->score, y->score) << "seed " << seed;
  }
  EXPECT_GT(compared_steps, 600);
}

TEST(BeamSparseTest, BadCandidatesAreRefusedAndChangeNothing) {
  BeamSearchParams p;
  p.num_beams = 2;
  p.max_new_tokens = 3;
  p.eos_ids = {kEos};
  p.initial_ids = {1};
  BeamSearch s = Make(p);
  std::vector<BeamCandidate> four = {{0, -1}, {1, -1}, {2, -2}, {3, -3}};
  EXPECT_EQ(s.StepCandidates({{{0, -1}, {1, -1}}}, kVocab).status().code(), StatusCode::kInvalidArgument);  // too few
  EXPECT_EQ(s.StepCandidates({four, four, four}, kVocab).status().code(), StatusCode::kInvalidArgument);    // rows
  auto bad_token = four;
  bad_token[2].token = kVocab;
  EXPECT_EQ(s.StepCandidates({bad_token}, kVocab).status().code(), StatusCode::kInvalidArgument);
  auto nan = four;
  nan[1].total = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(s.StepCandidates({nan}, kVocab).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.StepCandidates({four}, 3).status().code(), StatusCode::kInvalidArgument);  // EOS outside
  EXPECT_EQ(s.new_tokens(), 0);
  auto r = s.StepCandidates({four}, kVocab);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->tokens, (Ids{0, 1}));
}

TEST(BeamParamsTest, RangesAreNamed) {
  BeamSearchParams p;
  p.num_beams = kMaxBeams + 1;
  p.max_new_tokens = 4;
  p.initial_ids = {1};
  Status st = ValidateBeamSearchParams(p);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("num_beams"), std::string::npos);
  EXPECT_NE(st.message().find("2 to 64"), std::string::npos);
  EXPECT_EQ(ParseEarlyStopping("sometimes").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(*ParseEarlyStopping("never"), EarlyStopping::kNever);
  p.num_beams = 5;
  p.eos_ids = {2, 92542};
  EXPECT_EQ(CandidatesPerRow(p), 15);
  p.min_length = 3;
  p.min_new_tokens = 1;
  EXPECT_EQ(EosMaskedNewTokens(p), 2);
}

// The official 1.0 fixture's description, as its manifest states it.
TEST(BeamParamsTest, SettingsFromAFixtureDescription) {
  checkpoint::ModelSpec v1;
  v1.arch = checkpoint::ModelArch::kIxc1;
  v1.llm.eos_id = 2;
  v1.llm.stop_ids = {2, 103027, 103028};
  auto p = BeamSettingsFromDescription(
      "official chat()/generate() defaults (num_beams=5, do_sample=False, min_length=1, repetition_penalty=1.5, "
      "length_penalty=1.0) with max_new_tokens=NT.",
      "f.npy", v1, 8);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->num_beams, 5);
  EXPECT_EQ(p->repetition_penalty, 1.5);
  EXPECT_EQ(p->min_length, 1);
  EXPECT_EQ(p->max_new_tokens, 8);
  EXPECT_EQ(p->eos_ids, (Ids{2}));
  EXPECT_EQ(p->stop_when_all_beams_end_with, (Ids{103027, 103028}));
  EXPECT_EQ(BeamSettingsFromDescription("(num_beams=5, do_sample=True)", "f.npy", v1, 8).status().code(),
            StatusCode::kInvalidArgument);
}

// A small test model whose tokenizer has special ids beyond the model's vocabulary: those ids can
// never be generated, so they close nothing (instead of failing every step).
TEST(BeamParamsTest, OfficialEndsOutsideTheVocabularyAreLeftOut) {
  checkpoint::ModelSpec small;
  small.arch = checkpoint::ModelArch::kIxc2Vl;
  small.llm.vocab = 2048;
  small.llm.stop_ids = {2, 92542};
  BeamSearchParams p;
  SetOfficialBeamEnds(small, p);
  EXPECT_EQ(p.eos_ids, (Ids{2}));
}

}  // namespace
}  // namespace xcpipe::beam
