#include "xcpipe/model/beam_generation.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>
#include <string>

#include "xcpipe/model/stage_model.h"

namespace xcpipe::model {

namespace {

// logits [rows, V] -> torch's float32 log_softmax of each row on the host, contiguous; NaN and
// +inf refused (HF would carry them into every score).
StatusOr<at::Tensor> LogSoftmaxRows(const at::Tensor& logits) {
  if (!logits.defined() || logits.dim() != 2 || !at::isFloatingType(logits.scalar_type())) {
    return InvalidArgumentError("beam search logits must be a 2-D floating tensor [beams, vocab]");
  }
  try {
    at::Tensor x = logits.detach().to(at::kCPU).to(at::kFloat).contiguous();
    const float* raw = x.data_ptr<float>();
    const int64_t V = x.size(1);
    for (int64_t i = 0; i < x.numel(); ++i) {
      if (std::isnan(raw[i]) || raw[i] == std::numeric_limits<float>::infinity()) {
        return InvalidArgumentError("beam search logits hold NaN or +inf (row " + std::to_string(i / V) + ")");
      }
    }
    return at::log_softmax(x, 1).contiguous();  // HF: float32 log_softmax of each beam's row
  } catch (const c10::Error& e) {
    return InternalError(std::string("beam search log_softmax: ") + e.what_without_backtrace());
  }
}

}  // namespace

StatusOr<BeamSearch> BeamSearch::Create(BeamSearchParams params) {
  XCPIPE_ASSIGN_OR_RETURN(beam::BeamSearch base, beam::BeamSearch::Create(std::move(params)));
  return BeamSearch(std::move(base));
}

StatusOr<BeamStepResult> BeamSearch::Step(const at::Tensor& logits) {
  if (done()) return FailedPreconditionError("beam search step after the search is done");
  XCPIPE_ASSIGN_OR_RETURN(at::Tensor scores, LogSoftmaxRows(logits));
  return StepScores(scores.data_ptr<float>(), scores.size(0), scores.size(1));
}

StatusOr<std::vector<std::vector<BeamCandidate>>> BeamRowCandidates(
    const at::Tensor& logits, const std::vector<std::vector<int64_t>>& penalty_contexts, double repetition_penalty,
    const std::vector<int64_t>& eos_ids, const std::vector<bool>& forbid_eos, const std::vector<float>& beam_scores,
    int64_t count) {
  XCPIPE_ASSIGN_OR_RETURN(at::Tensor scores, LogSoftmaxRows(logits));
  const int64_t rows = scores.size(0), V = scores.size(1);
  if (static_cast<int64_t>(penalty_contexts.size()) != rows || static_cast<int64_t>(forbid_eos.size()) != rows ||
      static_cast<int64_t>(beam_scores.size()) != rows) {
    return InvalidArgumentError("beam rows: " + std::to_string(rows) + " logits rows, " +
                                std::to_string(penalty_contexts.size()) + " penalty contexts, " +
                                std::to_string(beam_scores.size()) + " beam scores; expected one each");
  }
  std::vector<std::vector<BeamCandidate>> out;
  out.reserve(static_cast<size_t>(rows));
  float* d = scores.data_ptr<float>();
  for (int64_t i = 0; i < rows; ++i) {
    const auto k = static_cast<size_t>(i);
    out.push_back(beam::RowCandidates(d + i * V, V, penalty_contexts[k], repetition_penalty, eos_ids, forbid_eos[k],
                                      beam_scores[k], count));
  }
  return out;
}

StatusOr<BeamHypothesis> GenerateBeams(StageModel& model, const BeamPrompt& prompt, const BeamSearchParams& params,
                                       uint64_t first_sequence_id) {
  if (!model.holds_embed() || !model.holds_head()) {
    return FailedPreconditionError("in-process beam search needs a model holding every block, embed to head");
  }
  if (prompt.token_ids.defined() == prompt.embeds.defined()) {
    return InvalidArgumentError("a beam prompt gives either token ids or input embeddings");
  }
  XCPIPE_ASSIGN_OR_RETURN(BeamSearch search, BeamSearch::Create(params));
  const int64_t T = prompt.embeds.defined() ? prompt.embeds.size(0) : prompt.token_ids.size(0);
  if (T < 1) return InvalidArgumentError("empty beam prompt");
  const int64_t nb = params.num_beams;
  std::vector<uint64_t> ids;
  for (int64_t k = 0; k < nb; ++k) {
    const uint64_t id = first_sequence_id + static_cast<uint64_t>(k);
    if (model.HoldsSequence(id)) {
      return FailedPreconditionError("beam sequence " + std::to_string(id) + " already holds KV room");
    }
    ids.push_back(id);
  }
  // Every beam's room is released on the way out, whatever happens.
  struct Release {
    StageModel& model;
    std::vector<uint64_t> held;
    ~Release() {
      for (uint64_t id : held) model.ReleaseSequence(id);
    }
  } release{model, {}};
  try {
    for (uint64_t id : ids) {
      XCPIPE_RETURN_IF_ERROR(model.ReserveSequence(id, T + params.max_new_tokens));
      release.held.push_back(id);
    }
    StepInput prefill;
    prefill.segments.push_back({ids[0], T, 0});
    if (prompt.embeds.defined()) {
      prefill.hidden = prompt.embeds;
    } else {
      prefill.token_ids = prompt.token_ids;
      prefill.image_embeds = prompt.image_embeds;
    }
    prefill.im_mask = prompt.im_mask.defined() ? prompt.im_mask : at::zeros({T}, at::kBool);
    auto out = model.Forward(prefill);
    if (!out.ok()) return out.status();
    XCPIPE_ASSIGN_OR_RETURN(BeamStepResult step, search.Step(out->logits));
    int64_t position = T;
    while (!step.done) {
      // After the first step every parent is 0: the beams fork from the prompt's KV.
      XCPIPE_RETURN_IF_ERROR(model.ReorderSequences(ids, step.parents));
      StepInput next;
      for (int64_t k = 0; k < nb; ++k) next.segments.push_back({ids[static_cast<size_t>(k)], 1, position});
      next.token_ids = at::tensor(step.tokens, at::kLong);
      next.im_mask = at::zeros({nb}, at::kBool);
      out = model.Forward(next);
      if (!out.ok()) return out.status();
      ++position;
      XCPIPE_ASSIGN_OR_RETURN(step, search.Step(out->logits));
    }
  } catch (const c10::Error& e) {
    return InternalError(std::string("beam generation: ") + e.what_without_backtrace());
  }
  return search.Best();
}

}  // namespace xcpipe::model
