// The last stage's token selection through the wire, on a real xcpipe-worker process (CPU)
// that holds the whole tiny XComposer2-VL fixture as one stage, driven by a scripted
// coordinator: min_new_tokens masks the stop ids the admission names, a replayed sequence counts
// its earlier tokens toward that minimum, and a step that ends inside the prompt (a piece of a
// long prompt) samples nothing. A beam group: reserved all or nothing, prefilled once, forked
// and reordered by the parents each step carries, its rows answered with candidates that equal
// those of each beam computed afresh.
#include <gtest/gtest.h>

#include <filesystem>

#include "scripted_coordinator.h"
#include "tiny_model.h"
#include "xcpipe/beam/beam_search.h"
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
    testing::AssignWholeTinyModel(m.initRoot<proto::Envelope>().initAssignStage(), described->spec.blocks.size());
    ASSERT_TRUE(coordinator_.Send(m));
    auto ready = coordinator_.Await(proto::Envelope::STAGE_READY, 60s);
    ASSERT_TRUE(ready.has_value()) << "the stage did not load";
    ASSERT_EQ(ready->message->envelope().which(), proto::Envelope::STAGE_READY)
        << ready->message->envelope().getError().getMessage().cStr();
    kv_per_token_ = ready->message->envelope().getStageReady().getKvBytesPerToken();
    vocab_ = described->spec.llm.vocab;
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

  // A beam group's admission: `first` and `others`, maxTokens each, the settings as the
  // coordinator sends them for `p` (beam rows answered with candidates).
  void AdmitBeams(uint64_t first, const std::vector<uint64_t>& others, uint32_t max_tokens,
                  const beam::BeamSearchParams& p, std::vector<int64_t> penalty_context, uint32_t prefill_rows,
                  bool forbid_eos_first) {
    capnp::MallocMessageBuilder m;
    auto a = m.initRoot<proto::Envelope>().initAdmitSequence();
    a.setEpoch(1);
    a.setSequenceId(first);
    a.setMaxTokens(max_tokens);
    auto sampling = a.initSampling();
    sampling.setRepetitionPenalty(p.repetition_penalty);
    sampling.setMinNewTokens(forbid_eos_first ? static_cast<uint32_t>(std::max<int64_t>(1, beam::EosMaskedNewTokens(p)))
                                              : 0);
    auto stops = a.initStopIds(static_cast<unsigned>(p.eos_ids.size()));
    for (size_t i = 0; i < p.eos_ids.size(); ++i) stops.set(static_cast<unsigned>(i), p.eos_ids[i]);
    auto ctx = a.initPenaltyContext(static_cast<unsigned>(penalty_context.size()));
    for (size_t i = 0; i < penalty_context.size(); ++i) ctx.set(static_cast<unsigned>(i), penalty_context[i]);
    a.setPrefillRows(prefill_rows);
    auto ids = a.initBeamSequenceIds(static_cast<unsigned>(others.size()));
    for (size_t i = 0; i < others.size(); ++i) ids.set(static_cast<unsigned>(i), others[i]);
    a.setBeamCandidates(static_cast<uint32_t>(beam::CandidatesPerRow(p)));
    ASSERT_TRUE(coordinator_.Send(m));
  }

  // One step of beam rows: each segment (id, rows of ids, start) with its parent index and beam
  // score; the candidates of each segment, or an empty result with a failure.
  std::vector<std::vector<beam::BeamCandidate>> BeamStep(const std::vector<uint64_t>& seq_ids,
                                                         const std::vector<std::vector<int64_t>>& rows,
                                                         const std::vector<int64_t>& starts,
                                                         const std::vector<int32_t>& parents,
                                                         const std::vector<float>& scores) {
    capnp::MallocMessageBuilder m;
    auto f = m.initRoot<proto::Envelope>().initForward();
    f.setEpoch(1);
    f.setMicroBatchId(++micro_batch_);
    f.setStep(micro_batch_);
    auto segs = f.initSegments(static_cast<unsigned>(seq_ids.size()));
    size_t total = 0;
    for (const auto& r : rows) total += r.size();
    auto ids = f.initTokenIds(static_cast<unsigned>(total));
    f.initImMask(static_cast<unsigned>(total));
    auto p = f.initBeamParents(static_cast<unsigned>(seq_ids.size()));
    auto sc = f.initBeamScores(static_cast<unsigned>(seq_ids.size()));
    unsigned row = 0;
    for (size_t i = 0; i < seq_ids.size(); ++i) {
      segs[i].setSequenceId(seq_ids[i]);
      segs[i].setRows(static_cast<uint32_t>(rows[i].size()));
      segs[i].setStartPos(static_cast<uint32_t>(starts[i]));
      for (int64_t t : rows[i]) ids.set(row++, t);
      p.set(static_cast<unsigned>(i), parents[i]);
      sc.set(static_cast<unsigned>(i), scores[i]);
    }
    std::vector<std::vector<beam::BeamCandidate>> out;
    if (!coordinator_.Send(m)) return out;
    auto in = coordinator_.Await(proto::Envelope::STEP_RESULT, 30s);
    EXPECT_TRUE(in.has_value()) << "no step result";
    if (!in) return out;
    auto env = in->message->envelope();
    EXPECT_EQ(env.which(), proto::Envelope::STEP_RESULT) << env.getError().getMessage().cStr();
    if (env.which() != proto::Envelope::STEP_RESULT) return out;
    auto r = env.getStepResult();
    EXPECT_EQ(r.getCandidateCounts().size(), seq_ids.size());
    size_t k = 0;
    const auto tokens = r.getCandidateTokens();
    const auto totals = r.getCandidateTotals();
    for (uint32_t count : r.getCandidateCounts()) {
      std::vector<beam::BeamCandidate> c;
      for (uint32_t j = 0; j < count && k < tokens.size(); ++j, ++k) c.push_back({tokens[k], totals[k]});
      out.push_back(std::move(c));
    }
    for (int64_t t : r.getTokens()) EXPECT_EQ(t, -1) << "a beam row was sampled";
    return out;
  }

  testing::ScriptedCoordinator coordinator_{"last-stage"};
  uint64_t micro_batch_ = 0;
  uint64_t kv_per_token_ = 0;
  int64_t vocab_ = 0;
};

// Three beams on the wire, the search kept here as the coordinator keeps it. After every step,
// each running beam's row is checked against the same beam computed afresh (its own sequence,
// prefilled with the prompt and the beam's tokens, no fork, no reorder): the same candidates, so
// the group's KV followed its parents exactly.
TEST_F(LastStageTest, ABeamGroupForksReordersAndMatchesEachBeamComputedAfresh) {
  beam::BeamSearchParams p;
  p.num_beams = 3;
  p.max_new_tokens = 4;
  p.repetition_penalty = 1.5;
  p.min_length = 2;  // EOS masked at the first step (input_ids is {bos})
  p.eos_ids = {2};
  p.initial_ids = {1};
  auto created = beam::BeamSearch::Create(p);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  beam::BeamSearch search = *created;
  const std::vector<uint64_t> group = {10, 11, 12};
  const auto T = static_cast<int64_t>(kPrompt.size());
  AdmitBeams(group[0], {group[1], group[2]}, 32, p, p.initial_ids, static_cast<uint32_t>(T), search.EosForbidden());

  auto rows = BeamStep({group[0]}, {kPrompt}, {0}, {-1}, {0.0f});
  ASSERT_EQ(rows.size(), 1u);
  auto step = search.StepCandidates(rows, vocab_);
  ASSERT_TRUE(step.ok()) << step.status().ToString();
  uint64_t fresh = 100;
  int64_t reorders = 0;
  while (!step->done) {
    const int64_t pos = T + search.new_tokens() - 1;
    std::vector<std::vector<int64_t>> feed;
    std::vector<int32_t> parents;
    std::vector<float> scores;
    for (int64_t k = 0; k < p.num_beams; ++k) {
      feed.push_back({step->tokens[static_cast<size_t>(k)]});
      parents.push_back(static_cast<int32_t>(step->parents[static_cast<size_t>(k)]));
      scores.push_back(search.beam_score(k));
      reorders += step->parents[static_cast<size_t>(k)] != k;
    }
    rows = BeamStep(group, feed, {pos, pos, pos}, parents, scores);
    ASSERT_EQ(rows.size(), group.size());
    for (int64_t k = 0; k < p.num_beams; ++k) {
      // Beam k afresh: prompt + its tokens prefilled at once, its penalty context given whole.
      std::vector<int64_t> whole = kPrompt;
      whole.insert(whole.end(), search.beam_tokens(k).begin(), search.beam_tokens(k).end());
      const uint64_t id = fresh++;
      AdmitBeams(id, {}, 32, p, search.PenaltyContext(k), static_cast<uint32_t>(whole.size()), search.EosForbidden());
      auto alone = BeamStep({id}, {whole}, {0}, {-1}, {search.beam_score(k)});
      ASSERT_EQ(alone.size(), 1u);
      const auto& got = rows[static_cast<size_t>(k)];
      ASSERT_EQ(got.size(), alone[0].size());
      for (size_t j = 0; j < 3; ++j) {
        EXPECT_EQ(got[j].token, alone[0][j].token) << "beam " << k << " step " << search.new_tokens() << " rank " << j;
        EXPECT_NEAR(got[j].total, alone[0][j].total, 1e-3) << "beam " << k << " rank " << j;
      }
    }
    step = search.StepCandidates(rows, vocab_);
    ASSERT_TRUE(step.ok()) << step.status().ToString();
  }
  auto best = search.Best();
  ASSERT_TRUE(best.ok()) << best.status().ToString();
  EXPECT_GT(reorders, 0) << "no step reordered the beams; the check proves less than it says";
  std::cout << "best of " << p.num_beams << " beams after " << search.new_tokens() << " steps (" << reorders
            << " beams moved):";
  for (int64_t t : best->tokens) std::cout << " " << t;
  std::cout << " score " << best->score << "\n";
}

// A group whose beams fit one at a time but not together is refused whole: nothing stays
// reserved, so a single sequence of the same size is admitted afterwards.
TEST_F(LastStageTest, ABeamGroupIsReservedAllOrNothing) {
  ASSERT_GT(kv_per_token_, 0u);
  const auto tokens = static_cast<uint32_t>((64ull << 20) / kv_per_token_ * 6 / 10);  // 60% of the budget each
  beam::BeamSearchParams p;
  p.num_beams = 3;
  p.eos_ids = {2};
  p.initial_ids = {1};
  AdmitBeams(20, {21, 22}, tokens, p, p.initial_ids, static_cast<uint32_t>(kPrompt.size()), false);
  auto in = coordinator_.Await(proto::Envelope::ERROR, 20s);
  ASSERT_TRUE(in.has_value()) << "a group larger than the KV budget was not refused";
  auto e = in->message->envelope().getError();
  EXPECT_EQ(e.getCode(), proto::ErrorCode::RESOURCE_EXHAUSTED) << e.getMessage().cStr();
  EXPECT_EQ(e.getSequenceId(), 20u);
  // Had the first beam kept its room, 60% more would not fit now.
  AdmitBeams(21, {}, tokens, p, p.initial_ids, static_cast<uint32_t>(kPrompt.size()), false);
  auto rows = BeamStep({21}, {kPrompt}, {0}, {-1}, {0.0f});
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(static_cast<int64_t>(rows[0].size()), beam::CandidatesPerRow(p));
}

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
