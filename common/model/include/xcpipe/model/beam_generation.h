// Beam search in process: the model library's side of the bookkeeping in xcpipe/beam (see
// there for the semantics, Hugging Face transformers 4.33's). It adds what needs libtorch: a step
// from a logits tensor (log_softmax as torch computes it, which is HF's rounding) and
// GenerateBeams, which runs a whole model with its KV cache.
//
// Not thread-safe: one owner drives a BeamSearch (a value type, copyable). Bad input is refused
// with a Status and leaves the state as it was: InvalidArgument for logits of the wrong shape or
// with NaN/+inf; the bookkeeping's errors otherwise.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "xcpipe/base/status.h"
#include "xcpipe/beam/beam_search.h"

namespace xcpipe::model {

class StageModel;

using beam::BeamCandidate;
using beam::BeamHypothesis;
using beam::BeamSearchParams;
using beam::BeamStepResult;
using beam::BeamStopReason;
using beam::EarlyStopping;
using beam::FinishedBeam;
using beam::OfficialInitialIds;
using beam::SetOfficialBeamEnds;
using beam::ValidateBeamSearchParams;

class BeamSearch : public beam::BeamSearch {
 public:
  static StatusOr<BeamSearch> Create(BeamSearchParams params);

  // logits: [rows, V] floating, on any device (copied to the host as float32): one row per
  // running beam in the order of the last result's parents/tokens; the first step may give
  // a single row (the prompt's last position), which stands for every beam, as HF's first
  // step sees num_beams identical rows with beam scores {0, -1e9, ...}.
  StatusOr<BeamStepResult> Step(const at::Tensor& logits);

 private:
  explicit BeamSearch(beam::BeamSearch base) : beam::BeamSearch(std::move(base)) {}
};

// The sparse step's rows, as the last pipeline stage computes them: `logits` [rows, V] (any
// floating dtype and device), row i's log_softmax (float32, torch's) processed with
// penalty_contexts[i], the EOS mask and beam_scores[i], its best `count` candidates (see
// beam::RowCandidates). InvalidArgument for a shape that does not match or NaN/+inf logits.
StatusOr<std::vector<std::vector<BeamCandidate>>> BeamRowCandidates(
    const at::Tensor& logits, const std::vector<std::vector<int64_t>>& penalty_contexts, double repetition_penalty,
    const std::vector<int64_t>& eos_ids, const std::vector<bool>& forbid_eos, const std::vector<float>& beam_scores,
    int64_t count);

// ---- In-process generation with the whole model ----

// A prompt as the embed stage takes it (see StepInput): token ids with -1 at image rows and the
// image embeddings in slot order, or input embeddings instead of ids.
struct BeamPrompt {
  at::Tensor token_ids;                  // [T] int64 (undefined when embeds is given)
  at::Tensor embeds;                     // [T, H] (undefined when token_ids is given)
  std::vector<at::Tensor> image_embeds;  // with token_ids: [rows_i, H] per image
  at::Tensor im_mask;                    // [T] bool; undefined = no image rows
};

// Beam search over a model that holds every block (embed to head): the prompt is prefilled
// once into sequence `first_sequence_id`, the other beams (first_sequence_id + 1 ...) fork
// from it, and StageModel::ReorderSequences follows each step's parents. Reserves num_beams
// sequences of prompt + max_new_tokens rows and releases them before returning, whatever the
// outcome. Errors: FailedPrecondition when the model does not hold every block or a sequence id
// is taken; ResourceExhausted when the KV budget cannot hold the beams; the model's errors.
StatusOr<BeamHypothesis> GenerateBeams(StageModel& model, const BeamPrompt& prompt, const BeamSearchParams& params,
                                       uint64_t first_sequence_id = 0);

}  // namespace xcpipe::model
