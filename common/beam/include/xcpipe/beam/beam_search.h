// Beam search with the semantics of Hugging Face transformers 4.33 (`generate(num_beams=N,
// do_sample=False)`: `beam_search`, `BeamSearchScorer`, `BeamHypotheses`), the version the official
// XComposer code runs. XComposer 1.0's chat() decodes this way by default (5 beams, repetition
// penalty 1.5, min_length 1, length_penalty 1.0).
//
// This module is the bookkeeping only, without libtorch, so that the coordinator (which must not
// link libtorch) can own a beam request's search while the workers compute. It is given each
// step's scores and says which beams continue, from which parent, with which token. Whoever owns
// the KV cache runs the model and reorders the beams' caches (in process: model::GenerateBeams;
// in a pipeline: the coordinator decides and every stage reorders). One step, as HF computes it:
//
//   scores[k]  = log_softmax(logits[k])                              float32, per beam k
//   scores[k][t] *= penalty (or /= when >= 0)  for each distinct t in beam k's input_ids
//   scores[k][eos] = -inf  while len(input_ids) < min_length or new tokens < min_new_tokens
//   total[k][t] = beam_score[k] + scores[k][t]                       float32
//   candidates = the C best of total flattened over [beam, token], C = max(2, 1 + #eos) * num_beams
//   walk the candidates best first: an EOS token among the first num_beams candidates closes a
//   hypothesis (its parent's ids, score total / len(parent input_ids) ** length_penalty); any other
//   token opens the next running beam, until num_beams are open.
//
// The log_softmax is torch's (the model library computes it: its rounding is what HF's is); the
// rest is here. Two ways in, which select identically:
//   dense   StepScores: every beam's whole row of log-probabilities (in process);
//   sparse  StepCandidates: every beam's C best (token, total) only, as RowCandidates computes
//           them from a row (the last pipeline stage, so that no vocabulary-wide row crosses
//           the control plane). The C best over [beam, token] are always among the union of
//           each beam's C best, with the same order (total, then flat index), so the walk above
//           sees the same candidates.
//
// "input_ids" is HF's: `initial_ids` (the prompt ids, or the placeholder BOS that generate() puts
// there when it is handed embeddings) followed by the beam's new tokens. It is what the repetition
// penalty covers, what min_length and max length count, and what the length penalty divides by:
// a hypothesis closed on EOS counts its parent's length (the EOS itself is not counted), a beam
// still running at the end counts all of its tokens. These length rules are 4.33's (later versions
// count only new tokens, from 4.36 on).
//
// Generation ends (done) when any of these hold after a step, as in 4.33's loop:
//   - the finished hypotheses are "done" (BeamHypotheses.is_done with num_beams kept and
//     early_stopping: kTrue as soon as num_beams are kept; kFalse when the best candidate
//     score of the step, divided by (len(input_ids) + 1) ** length_penalty, cannot beat the
//     worst kept; kNever likewise but divided by max_length ** length_penalty when
//     length_penalty > 0);
//   - len(input_ids) reached len(initial_ids) + max_new_tokens;
//   - every running beam's last token is the same one of `stop_when_all_beams_end_with` (the
//     official 1.0 StoppingCriteriaSub, which compares the last token of all beams at once).
// The result (Best / Hypotheses) is then HF's `finalize`: unless the hypotheses were "done", every
// running beam is offered to the kept hypotheses too, and the best score wins.
//
// Where we choose, since HF leaves it open or fails:
//   - Ties between candidates of equal total score go to the lower flat index (lower beam, then
//     lower token id); torch.topk leaves their order unspecified. Ties between hypotheses follow
//     HF's list order (eviction takes the earliest of the worst; the best is the latest of the best).
//   - 4.33 takes 2 * num_beams candidates and raises when fewer than num_beams of them are not
//     EOS tokens (possible with several EOS ids); we take max(2, 1 + #eos) * num_beams (what later
//     versions take): every step where 4.33 does not raise gives the same beams.
//   - Penalty ids outside [0, vocab) (e.g. -1 at image slots) are skipped.
//   - At the first step the sparse path gets the prompt's one row; the other beams' candidates
//     (beam score -1e9) are rebuilt from it. They can only matter when that row has fewer than C
//     finite scores, and then the rebuilt ones are exactly the dense ones (every finite score is
//     among the C given).
//
// Lifecycle:
//
//   Create(params) ──► running ──Step*(...)──► running ... ──Step*──► done ──► Best() / Hypotheses()
//                      (Best: FailedPrecondition)                     (Step*: FailedPrecondition)
//
// Not thread-safe: one owner drives it (a value type, copyable). Bad input is refused with a
// Status and leaves the state as it was: InvalidArgument for parameters out of range, rows of the
// wrong shape or with NaN/+inf, or an EOS id outside the vocabulary; FailedPrecondition for a step
// after the search is done or a result asked for before it is.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "xcpipe/base/status.h"

namespace xcpipe::checkpoint {
struct ModelSpec;
}

namespace xcpipe::beam {

// HF's `early_stopping`: True, False (its default) or "never".
enum class EarlyStopping { kFalse, kTrue, kNever };
// "false", "true", "never" (HF's spellings False/True are accepted too); InvalidArgument otherwise.
StatusOr<EarlyStopping> ParseEarlyStopping(const std::string& text);
const char* EarlyStoppingName(EarlyStopping e);

// More beams than this are refused as a typo (the bookkeeping would cope).
constexpr int64_t kMaxBeams = 64;

struct BeamSearchParams {
  int64_t num_beams = 5;        // 2..kMaxBeams (HF runs greedy search for 1)
  int64_t max_new_tokens = 0;   // >= 1
  double length_penalty = 1.0;  // exponent of the length that divides a hypothesis' score
  EarlyStopping early_stopping = EarlyStopping::kFalse;
  int64_t min_length = 0;  // HF min_length: counts initial_ids too
  int64_t min_new_tokens = 0;
  double repetition_penalty = 1.0;  // 1 = off; > 0
  std::vector<int64_t> eos_ids;     // close a hypothesis (HF eos_token_id); may be empty
  // A token that ends generation once every running beam ends with it (a stopping criterion,
  // not an EOS: the beams keep it and carry on until all agree). Official 1.0: {103027, 103028}.
  std::vector<int64_t> stop_when_all_beams_end_with;
  // HF's input_ids before the first new token: the prompt's ids when the official chat() hands
  // generate() ids, {bos} when it hands it embeddings. Not empty.
  std::vector<int64_t> initial_ids;
};

// Refuses parameters out of range with a message naming the parameter.
Status ValidateBeamSearchParams(const BeamSearchParams& params);

// Candidates each beam row contributes: max(2, 1 + #eos) * num_beams.
int64_t CandidatesPerRow(const BeamSearchParams& params);
// New tokens before which EOS is masked: max(min_new_tokens, min_length - len(initial_ids)).
int64_t EosMaskedNewTokens(const BeamSearchParams& params);

// What the official chat() of the model's version does, for the fields that depend on it:
//   eos_ids, stop_when_all_beams_end_with:
//     1.0  passes no eos_token_id to generate(), so the config's EOS closes hypotheses; its stop
//          words (end of human, end of assistant) end generation through a StoppingCriteria that
//          needs every beam's last token to be the same one of them.
//     2.x  passes eos_token_id = [EOS, im_end]: both close hypotheses; no stop words.
//     Ids outside the model's vocabulary are left out (they can never be generated).
//   initial_ids: the prompt's ids where chat() hands generate() ids (the repetition penalty then
//     covers the prompt: checkpoint::PenaltyCoversPrompt), else the placeholder {bos}.
// The other fields (num_beams, penalties, lengths) are the caller's.
void SetOfficialBeamEnds(const checkpoint::ModelSpec& spec, BeamSearchParams& params);
std::vector<int64_t> OfficialInitialIds(const checkpoint::ModelSpec& spec, const std::vector<int64_t>& prompt_ids,
                                        bool has_images);

// The generate() arguments of a fixture as its manifest describes the file: "(num_beams=5,
// do_sample=False, min_length=1, repetition_penalty=1.5, length_penalty=1.0) with
// max_new_tokens=NT", where NT stands for the file's own token count (`tokens_in_file`).
// Arguments it does not name keep HF's defaults; num_beams and repetition_penalty must be named.
// The ends come from the model's version (SetOfficialBeamEnds); initial_ids are the caller's.
StatusOr<BeamSearchParams> BeamSettingsFromDescription(const std::string& description, const std::string& file,
                                                       const checkpoint::ModelSpec& spec, int64_t tokens_in_file);

enum class BeamStopReason {
  kRunning,
  kHypothesesDone,   // the kept hypotheses cannot be beaten (early_stopping rule above)
  kMaxLength,        // max_new_tokens reached
  kAllBeamsStopped,  // every running beam ends with the same stop token
};

// One candidate of one beam row: a token and its total (the beam's score plus the token's
// processed log-probability, float32 as HF adds them).
struct BeamCandidate {
  int64_t token = 0;
  float total = 0;
  bool operator==(const BeamCandidate&) const = default;
};

// The processing of one beam's row and its best `count` candidates, best first (higher total;
// ties to the lower token id). `log_probs` [vocab] is the row's log_softmax (float32) and is
// overwritten with the processed scores: the repetition penalty over the distinct ids of
// `penalty_context` (HF's input_ids of this beam; ids outside the vocabulary are skipped), then
// -inf at `eos_ids` when `forbid_eos`. The caller checks the row (no NaN/+inf) and the EOS ids.
std::vector<BeamCandidate> RowCandidates(float* log_probs, int64_t vocab, const std::vector<int64_t>& penalty_context,
                                         double repetition_penalty, const std::vector<int64_t>& eos_ids,
                                         bool forbid_eos, float beam_score, int64_t count);

struct FinishedBeam {
  int64_t parent = 0;     // row of the step it came from
  int64_t eos_token = 0;  // the EOS id it ended with
  double score = 0;       // sum of its scores / length ** length_penalty
};

struct BeamStepResult {
  // One entry per running beam after the step (always num_beams), in HF's order: new beam k
  // continues row parents[k] of the rows just given and appends tokens[k]. After the first
  // step given a single prompt row, every parent is 0.
  std::vector<int64_t> parents;
  std::vector<int64_t> tokens;
  std::vector<FinishedBeam> finished;  // closed on EOS this step (kept or not)
  // No more steps: nothing more to run; ask Best(). parents/tokens are still the beams that
  // HF's finalize sees (it reorders before it stops).
  bool done = false;
};

struct BeamHypothesis {
  // New tokens as HF's generate() returns them: the hypothesis' own tokens, then eos_ids[0]
  // when the hypothesis is shorter than max_length (HF appends it whatever ended the
  // hypothesis, and whichever EOS id closed it).
  std::vector<int64_t> tokens;
  double score = 0;       // sum_scores / length ** length_penalty
  double sum_scores = 0;  // the beam score: processed log-probabilities summed
  int64_t length = 0;     // HF's length: initial_ids plus own tokens
  bool ended_on_eos = false;
  int64_t eos_token = -1;  // the EOS id that closed it (-1 when none)
};

class BeamSearch {
 public:
  static StatusOr<BeamSearch> Create(BeamSearchParams params);

  // Dense: `log_probs` [rows, vocab] row-major, each row the log_softmax of a running beam's
  // logits in the order of the last result's parents/tokens (the first step may give a single
  // row, the prompt's last position, which stands for every beam, as HF's first step sees
  // num_beams identical rows with beam scores {0, -1e9, ...}). Overwritten while processed.
  StatusOr<BeamStepResult> StepScores(float* log_probs, int64_t rows, int64_t vocab);

  // Sparse: per running beam (or the prompt's one row at the first step) at least
  // min(CandidatesPerRow, vocab) candidates as RowCandidates gives them for that beam's
  // penalty context, EOS mask and beam_score(k) (0 for the first step's row). Candidates past
  // CandidatesPerRow are ignored. `vocab` is the model's (for the EOS check and messages).
  StatusOr<BeamStepResult> StepCandidates(const std::vector<std::vector<BeamCandidate>>& rows, int64_t vocab);

  // What a sparse row needs from the search for running beam k (before the next step):
  std::vector<int64_t> PenaltyContext(int64_t k) const;  // initial_ids + the beam's new tokens
  bool EosForbidden() const;                             // the min_length / min_new_tokens rule

  bool done() const { return reason_ != BeamStopReason::kRunning; }
  BeamStopReason stop_reason() const { return reason_; }
  int64_t new_tokens() const { return steps_; }  // steps taken = tokens in every running beam
  const BeamSearchParams& params() const { return params_; }
  // Running beam k's new tokens and beam score (sum of its processed scores, float32).
  const std::vector<int64_t>& beam_tokens(int64_t k) const { return beams_[static_cast<size_t>(k)]; }
  float beam_score(int64_t k) const { return beam_scores_[static_cast<size_t>(k)]; }

  // HF finalize: the best hypothesis (FailedPrecondition before done()).
  StatusOr<BeamHypothesis> Best() const;
  // Every hypothesis kept after finalize (at most num_beams), best first.
  StatusOr<std::vector<BeamHypothesis>> Hypotheses() const;

 protected:
  explicit BeamSearch(BeamSearchParams params);

 private:
  struct Kept {
    std::vector<int64_t> tokens;  // own tokens (no EOS)
    double score = 0;
    double sum_scores = 0;
    int64_t length = 0;
    int64_t eos_token = -1;
  };
  // BeamHypotheses: at most num_beams kept in insertion order, worst evicted.
  struct KeptList {
    std::vector<Kept> items;
    double worst = 1e9;
  };
  struct Ranked {
    float total;
    int64_t beam, token;
  };
  Status CheckStep(int64_t rows, int64_t vocab) const;
  // The walk over the step's best candidates (best first) and the stop rules.
  StatusOr<BeamStepResult> Process(const std::vector<Ranked>& best, bool broadcast, int64_t vocab);
  void Add(KeptList& list, Kept hyp) const;
  bool IsDone(const KeptList& list, double best_sum, int64_t cur_len) const;
  std::vector<Kept> Finalized() const;  // ordered as HF's sorted(): best last
  BeamHypothesis ToResult(const Kept& k) const;

  BeamSearchParams params_;
  std::vector<std::vector<int64_t>> beams_;
  std::vector<float> beam_scores_;
  KeptList kept_;
  bool hypotheses_done_ = false;  // HF's BeamSearchScorer._done
  int64_t steps_ = 0;
  int64_t vocab_ = 0;
  BeamStopReason reason_ = BeamStopReason::kRunning;
};

}  // namespace xcpipe::beam
