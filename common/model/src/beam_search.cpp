#include "xcpipe/model/beam_search.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/model/stage_model.h"

namespace xcpipe::model {

namespace {

// HF's initial score of beams 1..N-1: at the first step every beam holds the same prompt, so
// only beam 0's candidates may win (unless the vocabulary has fewer than the candidates taken).
constexpr float kUnreachableBeamScore = -1e9f;
// Beyond this the bookkeeping still works, but nobody means it: refuse it as a typo.
constexpr int64_t kMaxBeams = 64;

struct Candidate {
  float score;
  int64_t flat;  // beam * V + token
};

// Higher total first; equal totals: the lower flat index (lower beam, then lower token id).
bool Better(const Candidate& a, const Candidate& b) {
  return a.score > b.score || (a.score == b.score && a.flat < b.flat);
}

// The `count` best of data[0, n), best first. One pass keeping the best so far in a heap whose
// top is the worst kept: scanning indices in increasing order, an equal score never displaces a
// kept one, which gives the tie rule above.
std::vector<Candidate> BestCandidates(const float* data, int64_t n, int64_t count) {
  std::vector<Candidate> heap;
  heap.reserve(static_cast<size_t>(count));
  for (int64_t i = 0; i < n; ++i) {
    Candidate c{data[i], i};
    if (static_cast<int64_t>(heap.size()) < count) {
      heap.push_back(c);
      std::push_heap(heap.begin(), heap.end(), Better);
    } else if (c.score > heap.front().score) {
      std::pop_heap(heap.begin(), heap.end(), Better);
      heap.back() = c;
      std::push_heap(heap.begin(), heap.end(), Better);
    }
  }
  std::sort_heap(heap.begin(), heap.end(), Better);
  return heap;
}

}  // namespace

Status ValidateBeamSearchParams(const BeamSearchParams& p) {
  if (p.num_beams < 2 || p.num_beams > kMaxBeams) {
    return InvalidArgumentError("num_beams " + std::to_string(p.num_beams) + " is out of range; expected 2 to " +
                                std::to_string(kMaxBeams) + " (1 beam is greedy decoding)");
  }
  if (p.max_new_tokens < 1) {
    return InvalidArgumentError("max_new_tokens " + std::to_string(p.max_new_tokens) + " must be at least 1");
  }
  if (!std::isfinite(p.length_penalty)) return InvalidArgumentError("length_penalty must be finite");
  if (!std::isfinite(p.repetition_penalty) || p.repetition_penalty <= 0.0) {
    return InvalidArgumentError("repetition_penalty " + std::to_string(p.repetition_penalty) +
                                " is out of range; expected > 0 (1 = off)");
  }
  if (p.min_length < 0) return InvalidArgumentError("min_length must not be negative");
  if (p.min_new_tokens < 0) return InvalidArgumentError("min_new_tokens must not be negative");
  if (p.initial_ids.empty()) {
    return InvalidArgumentError("initial_ids is empty; HF's input_ids start with the prompt ids or a placeholder BOS");
  }
  for (int64_t id : p.eos_ids) {
    if (id < 0) return InvalidArgumentError("EOS id " + std::to_string(id) + " is negative");
  }
  for (int64_t id : p.stop_when_all_beams_end_with) {
    if (id < 0) return InvalidArgumentError("stop id " + std::to_string(id) + " is negative");
  }
  return OkStatus();
}

void SetOfficialBeamEnds(const checkpoint::ModelSpec& spec, BeamSearchParams& params) {
  params.stop_when_all_beams_end_with.clear();
  if (spec.arch == checkpoint::ModelArch::kIxc1) {
    params.eos_ids = {spec.llm.eos_id};
    for (int64_t id : spec.llm.stop_ids) {
      if (id != spec.llm.eos_id) params.stop_when_all_beams_end_with.push_back(id);
    }
  } else {
    params.eos_ids = spec.llm.stop_ids;
  }
}

std::vector<int64_t> OfficialInitialIds(const checkpoint::ModelSpec& spec, const std::vector<int64_t>& prompt_ids,
                                        bool has_images) {
  if (checkpoint::PenaltyCoversPrompt(spec.arch, has_images) && !prompt_ids.empty()) return prompt_ids;
  return {spec.llm.bos_id};  // generate() seeds input_ids with a placeholder BOS
}

BeamSearch::BeamSearch(BeamSearchParams params) : params_(std::move(params)) {
  initial_unique_ = params_.initial_ids;
  std::sort(initial_unique_.begin(), initial_unique_.end());
  initial_unique_.erase(std::unique(initial_unique_.begin(), initial_unique_.end()), initial_unique_.end());
  beams_.assign(static_cast<size_t>(params_.num_beams), {});
  beam_scores_.assign(static_cast<size_t>(params_.num_beams), kUnreachableBeamScore);
  beam_scores_[0] = 0.0f;
}

StatusOr<BeamSearch> BeamSearch::Create(BeamSearchParams params) {
  XCPIPE_RETURN_IF_ERROR(ValidateBeamSearchParams(params));
  return BeamSearch(std::move(params));
}

StatusOr<BeamStepResult> BeamSearch::Step(const at::Tensor& logits) {
  if (done()) return FailedPreconditionError("beam search step after the search is done");
  const int64_t nb = params_.num_beams;
  if (!logits.defined() || logits.dim() != 2 || !at::isFloatingType(logits.scalar_type())) {
    return InvalidArgumentError("beam search logits must be a 2-D floating tensor [beams, vocab]");
  }
  const int64_t rows = logits.size(0), V = logits.size(1);
  const bool broadcast = steps_ == 0 && rows == 1;
  if (rows != nb && !broadcast) {
    return InvalidArgumentError("beam search logits have " + std::to_string(rows) + " rows; expected " +
                                std::to_string(nb) + (steps_ == 0 ? " (or 1 at the first step)" : ""));
  }
  if (V < 1 || (vocab_ != 0 && V != vocab_)) {
    return InvalidArgumentError("beam search logits have a vocabulary of " + std::to_string(V) +
                                (vocab_ != 0 ? ", the previous step's had " + std::to_string(vocab_) : ""));
  }
  for (int64_t eos : params_.eos_ids) {
    if (eos >= V) return InvalidArgumentError("EOS id " + std::to_string(eos) + " is outside the vocabulary of " + std::to_string(V));
  }

  at::Tensor scores;
  try {
    at::Tensor x = logits.detach().to(at::kCPU).to(at::kFloat);
    if (broadcast) x = x.expand({nb, V});
    x = x.contiguous();
    const float* raw = x.data_ptr<float>();
    for (int64_t i = 0; i < nb * V; ++i) {
      if (std::isnan(raw[i]) || raw[i] == std::numeric_limits<float>::infinity()) {
        return InvalidArgumentError("beam search logits hold NaN or +inf (row " + std::to_string(i / V) + ")");
      }
    }
    scores = at::log_softmax(x, 1).contiguous();  // HF: float32 log_softmax of each beam's row
  } catch (const c10::Error& e) {
    return InternalError(std::string("beam search log_softmax: ") + e.what_without_backtrace());
  }
  float* d = scores.data_ptr<float>();
  for (int64_t i = 0; i < nb * V; ++i) {
    if (std::isnan(d[i])) return InvalidArgumentError("beam search logits row " + std::to_string(i / V) + " is all -inf");
  }

  // HF's logits processors see each beam's input_ids: initial_ids + its new tokens.
  const int64_t initial_len = static_cast<int64_t>(params_.initial_ids.size());
  const int64_t cur_len = initial_len + steps_;
  const bool forbid_eos = cur_len < params_.min_length || steps_ < params_.min_new_tokens;
  const float penalty = static_cast<float>(params_.repetition_penalty);
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  std::vector<int64_t> context;
  for (int64_t k = 0; k < nb; ++k) {
    float* row = d + k * V;
    if (params_.repetition_penalty != 1.0) {
      // RepetitionPenaltyLogitsProcessor on log-probabilities: gather every id of input_ids,
      // penalize, scatter back; a repeated id gets the once-penalized value.
      const auto& own = beams_[static_cast<size_t>(k)];
      context = initial_unique_;
      context.insert(context.end(), own.begin(), own.end());
      std::sort(context.begin(), context.end());
      context.erase(std::unique(context.begin(), context.end()), context.end());
      for (int64_t t : context) {
        if (t < 0 || t >= V) continue;
        row[t] = row[t] < 0 ? row[t] * penalty : row[t] / penalty;
      }
    }
    if (forbid_eos) {
      for (int64_t eos : params_.eos_ids) row[eos] = kNegInf;
    }
    const float beam = beam_scores_[static_cast<size_t>(k)];
    for (int64_t t = 0; t < V; ++t) row[t] = row[t] + beam;
  }

  const int64_t per_beam = std::max<int64_t>(2, 1 + static_cast<int64_t>(params_.eos_ids.size()));
  const std::vector<Candidate> best = BestCandidates(d, nb * V, std::min(per_beam * nb, nb * V));
  auto is_eos = [&](int64_t t) {
    return std::find(params_.eos_ids.begin(), params_.eos_ids.end(), t) != params_.eos_ids.end();
  };

  // BeamSearchScorer.process, nothing committed until the step is known to be good.
  BeamStepResult result;
  std::vector<float> next_scores;
  std::vector<Kept> closed;
  for (size_t rank = 0; rank < best.size() && static_cast<int64_t>(result.tokens.size()) < nb; ++rank) {
    const int64_t parent = best[rank].flat / V, token = best[rank].flat % V;
    if (is_eos(token)) {
      if (static_cast<int64_t>(rank) >= nb) continue;  // only the first num_beams may close a hypothesis
      Kept h;
      h.tokens = beams_[static_cast<size_t>(parent)];  // the parent's ids: the EOS is not counted
      h.sum_scores = best[rank].score;
      h.length = cur_len;
      h.score = h.sum_scores / std::pow(static_cast<double>(h.length), params_.length_penalty);
      h.eos_token = token;
      result.finished.push_back({broadcast ? 0 : parent, token, h.score});
      closed.push_back(std::move(h));
    } else {
      result.parents.push_back(parent);
      result.tokens.push_back(token);
      next_scores.push_back(best[rank].score);
    }
  }
  if (static_cast<int64_t>(result.tokens.size()) < nb) {
    return InvalidArgumentError("only " + std::to_string(result.tokens.size()) + " of the " +
                                std::to_string(best.size()) + " best candidates are not EOS tokens; " +
                                std::to_string(nb) + " beams need a larger vocabulary than " + std::to_string(V));
  }

  for (auto& h : closed) Add(kept_, std::move(h));
  // HF's process passes the length the candidates' scores were computed on (input_ids + 1).
  hypotheses_done_ = hypotheses_done_ || IsDone(kept_, static_cast<double>(best.front().score), cur_len + 1);
  std::vector<std::vector<int64_t>> next(static_cast<size_t>(nb));
  for (int64_t k = 0; k < nb; ++k) {
    next[static_cast<size_t>(k)] = beams_[static_cast<size_t>(result.parents[static_cast<size_t>(k)])];
    next[static_cast<size_t>(k)].push_back(result.tokens[static_cast<size_t>(k)]);
  }
  beams_ = std::move(next);
  beam_scores_ = std::move(next_scores);
  ++steps_;
  vocab_ = V;
  if (broadcast) std::fill(result.parents.begin(), result.parents.end(), 0);

  if (hypotheses_done_) {
    reason_ = BeamStopReason::kHypothesesDone;
  } else if (steps_ >= params_.max_new_tokens) {
    reason_ = BeamStopReason::kMaxLength;
  } else {
    for (int64_t stop : params_.stop_when_all_beams_end_with) {
      if (std::all_of(beams_.begin(), beams_.end(), [&](const auto& b) { return b.back() == stop; })) {
        reason_ = BeamStopReason::kAllBeamsStopped;
        break;
      }
    }
  }
  result.done = done();
  return result;
}

void BeamSearch::Add(KeptList& list, Kept hyp) const {
  const size_t keep = static_cast<size_t>(params_.num_beams);
  if (list.items.size() >= keep && !(hyp.score > list.worst)) return;
  const double score = hyp.score;
  list.items.push_back(std::move(hyp));
  if (list.items.size() > keep) {
    // HF sorts (score, index) pairs: the lowest score goes, the earliest among equals; the
    // worst is then the next pair's score.
    size_t evict = 0;
    for (size_t i = 1; i < list.items.size(); ++i) {
      if (list.items[i].score < list.items[evict].score) evict = i;
    }
    list.items.erase(list.items.begin() + static_cast<std::ptrdiff_t>(evict));
    list.worst = std::min_element(list.items.begin(), list.items.end(), [](const Kept& a, const Kept& b) {
                   return a.score < b.score;
                 })->score;
  } else {
    list.worst = std::min(score, list.worst);
  }
}

bool BeamSearch::IsDone(const KeptList& list, double best_sum, int64_t cur_len) const {
  if (static_cast<int64_t>(list.items.size()) < params_.num_beams) return false;
  const double lp = params_.length_penalty;
  switch (params_.early_stopping) {
    case EarlyStopping::kTrue:
      return true;
    case EarlyStopping::kFalse:
      return list.worst >= best_sum / std::pow(static_cast<double>(cur_len), lp);
    case EarlyStopping::kNever: {
      const int64_t max_length = static_cast<int64_t>(params_.initial_ids.size()) + params_.max_new_tokens;
      const double highest = lp > 0.0 ? best_sum / std::pow(static_cast<double>(max_length), lp)
                                      : best_sum / std::pow(static_cast<double>(cur_len), lp);
      return list.worst >= highest;
    }
  }
  return false;
}

std::vector<BeamSearch::Kept> BeamSearch::Finalized() const {
  KeptList list = kept_;
  if (!hypotheses_done_) {
    const int64_t length = static_cast<int64_t>(params_.initial_ids.size()) + steps_;
    for (size_t k = 0; k < beams_.size(); ++k) {
      Kept h;
      h.tokens = beams_[k];
      h.sum_scores = beam_scores_[k];
      h.length = length;
      h.score = h.sum_scores / std::pow(static_cast<double>(length), params_.length_penalty);
      Add(list, std::move(h));
    }
  }
  // HF: sorted(..., key=score) and pop() from the end: the best is the last of the best.
  std::stable_sort(list.items.begin(), list.items.end(), [](const Kept& a, const Kept& b) { return a.score < b.score; });
  return list.items;
}

BeamHypothesis BeamSearch::ToResult(const Kept& k) const {
  BeamHypothesis h;
  h.tokens = k.tokens;
  const int64_t max_length = static_cast<int64_t>(params_.initial_ids.size()) + params_.max_new_tokens;
  if (!params_.eos_ids.empty() && k.length < max_length) h.tokens.push_back(params_.eos_ids.front());
  h.score = k.score;
  h.sum_scores = k.sum_scores;
  h.length = k.length;
  h.ended_on_eos = k.eos_token >= 0;
  h.eos_token = k.eos_token;
  return h;
}

StatusOr<BeamHypothesis> BeamSearch::Best() const {
  if (!done()) return FailedPreconditionError("beam search result asked for before the search is done");
  std::vector<Kept> all = Finalized();
  if (all.empty()) return InternalError("beam search finished with no hypothesis");
  return ToResult(all.back());
}

StatusOr<std::vector<BeamHypothesis>> BeamSearch::Hypotheses() const {
  if (!done()) return FailedPreconditionError("beam search result asked for before the search is done");
  std::vector<Kept> all = Finalized();
  std::vector<BeamHypothesis> out;
  for (auto it = all.rbegin(); it != all.rend(); ++it) out.push_back(ToResult(*it));
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
