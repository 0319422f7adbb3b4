#include "xcpipe/beam/beam_search.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <regex>

#include "xcpipe/checkpoint/model_spec.h"

namespace xcpipe::beam {

namespace {

// HF's initial score of beams 1..N-1: at the first step every beam holds the same prompt, so
// only beam 0's candidates may win (unless the vocabulary has fewer than the candidates taken).
constexpr float kUnreachableBeamScore = -1e9f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Scored {
  float score;
  int64_t index;
};

// Higher score first; equal scores: the lower index.
bool Better(const Scored& a, const Scored& b) { return a.score > b.score || (a.score == b.score && a.index < b.index); }

// The `count` best of score(0..n-1), best first. One pass keeping the best so far in a heap whose
// top is the worst kept: scanning indices in increasing order, an equal score never displaces a
// kept one, which gives the tie rule above.
template <typename ScoreOf>
std::vector<Scored> BestOf(int64_t n, int64_t count, ScoreOf score_of) {
  std::vector<Scored> heap;
  count = std::min(count, n);
  heap.reserve(static_cast<size_t>(std::max<int64_t>(0, count)));
  for (int64_t i = 0; i < n; ++i) {
    Scored c{score_of(i), i};
    if (static_cast<int64_t>(heap.size()) < count) {
      heap.push_back(c);
      std::push_heap(heap.begin(), heap.end(), Better);
    } else if (count > 0 && c.score > heap.front().score) {
      std::pop_heap(heap.begin(), heap.end(), Better);
      heap.back() = c;
      std::push_heap(heap.begin(), heap.end(), Better);
    }
  }
  std::sort_heap(heap.begin(), heap.end(), Better);
  return heap;
}

// HF's logits processors on one beam's log-probabilities, in place: the repetition penalty over
// the distinct ids of the beam's input_ids (gather, penalize, scatter: a repeated id gets the
// once-penalized value), then the EOS mask.
void ProcessRow(float* row, int64_t vocab, const std::vector<int64_t>& context, double repetition_penalty,
                const std::vector<int64_t>& eos_ids, bool forbid_eos) {
  if (repetition_penalty != 1.0) {
    const float penalty = static_cast<float>(repetition_penalty);
    std::vector<int64_t> ids = context;
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    for (int64_t t : ids) {
      if (t < 0 || t >= vocab) continue;
      row[t] = row[t] < 0 ? row[t] * penalty : row[t] / penalty;
    }
  }
  if (forbid_eos) {
    for (int64_t eos : eos_ids)
      if (eos >= 0 && eos < vocab) row[eos] = kNegInf;
  }
}

bool IsBadScore(float v) { return std::isnan(v) || v == std::numeric_limits<float>::infinity(); }

}  // namespace

StatusOr<EarlyStopping> ParseEarlyStopping(const std::string& text) {
  if (text == "false" || text == "False") return EarlyStopping::kFalse;
  if (text == "true" || text == "True") return EarlyStopping::kTrue;
  if (text == "never") return EarlyStopping::kNever;
  return InvalidArgumentError("early_stopping '" + text + "' is not one of false, true, never");
}

const char* EarlyStoppingName(EarlyStopping e) {
  switch (e) {
    case EarlyStopping::kFalse:
      return "false";
    case EarlyStopping::kTrue:
      return "true";
    case EarlyStopping::kNever:
      return "never";
  }
  return "?";
}

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

int64_t CandidatesPerRow(const BeamSearchParams& p) {
  return std::max<int64_t>(2, 1 + static_cast<int64_t>(p.eos_ids.size())) * p.num_beams;
}

int64_t EosMaskedNewTokens(const BeamSearchParams& p) {
  return std::max<int64_t>(p.min_new_tokens, p.min_length - static_cast<int64_t>(p.initial_ids.size()));
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
  // An id the head cannot produce never ends anything (a test model's vocabulary may be smaller
  // than its tokenizer's special ids); the search would refuse it as outside the vocabulary.
  if (spec.llm.vocab > 0) {
    auto outside = [&](int64_t id) { return id >= spec.llm.vocab; };
    std::erase_if(params.eos_ids, outside);
    std::erase_if(params.stop_when_all_beams_end_with, outside);
  }
}

std::vector<int64_t> OfficialInitialIds(const checkpoint::ModelSpec& spec, const std::vector<int64_t>& prompt_ids,
                                        bool has_images) {
  if (checkpoint::PenaltyCoversPrompt(spec.arch, has_images) && !prompt_ids.empty()) return prompt_ids;
  return {spec.llm.bos_id};  // generate() seeds input_ids with a placeholder BOS
}

StatusOr<BeamSearchParams> BeamSettingsFromDescription(const std::string& text, const std::string& file,
                                                       const checkpoint::ModelSpec& spec, int64_t tokens_in_file) {
  static const std::regex kArgument(R"(([a-z_]+)=([A-Za-z0-9_.\-]+))");
  std::map<std::string, std::string> args;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), kArgument); it != std::sregex_iterator(); ++it) {
    std::string value = (*it)[2].str();
    while (!value.empty() && value.back() == '.') value.pop_back();  // the sentence's full stop
    args[(*it)[1].str()] = value;
  }
  auto number = [&](const std::string& key, std::optional<double> fallback) -> StatusOr<double> {
    auto it = args.find(key);
    if (it == args.end()) {
      if (fallback) return *fallback;
      return InvalidArgumentError("the description of " + file + " does not state " + key);
    }
    char* end = nullptr;
    const double v = std::strtod(it->second.c_str(), &end);
    if (end == it->second.c_str() || *end != '\0') {
      return InvalidArgumentError(key + "=" + it->second + " in the description of " + file + " is not a number");
    }
    return v;
  };
  if (args.count("do_sample") && args["do_sample"] != "False") {
    return InvalidArgumentError(file + " was sampled (do_sample=" + args["do_sample"] + "): not reproducible");
  }
  BeamSearchParams p;
  XCPIPE_ASSIGN_OR_RETURN(const double beams, number("num_beams", std::nullopt));
  XCPIPE_ASSIGN_OR_RETURN(p.repetition_penalty, number("repetition_penalty", std::nullopt));
  XCPIPE_ASSIGN_OR_RETURN(const double min_length, number("min_length", 0.0));
  XCPIPE_ASSIGN_OR_RETURN(const double min_new, number("min_new_tokens", 0.0));
  XCPIPE_ASSIGN_OR_RETURN(p.length_penalty, number("length_penalty", 1.0));
  p.num_beams = static_cast<int64_t>(beams);
  p.min_length = static_cast<int64_t>(min_length);
  p.min_new_tokens = static_cast<int64_t>(min_new);
  p.max_new_tokens = tokens_in_file;
  if (auto it = args.find("max_new_tokens"); it != args.end() && it->second != "NT") {
    XCPIPE_ASSIGN_OR_RETURN(const double max_new, number("max_new_tokens", std::nullopt));
    p.max_new_tokens = static_cast<int64_t>(max_new);
  }
  if (auto it = args.find("early_stopping"); it != args.end()) {
    auto parsed = ParseEarlyStopping(it->second);
    if (!parsed.ok()) return parsed.status().WithContext("the description of " + file);
    p.early_stopping = *parsed;
  }
  SetOfficialBeamEnds(spec, p);
  return p;
}

std::vector<BeamCandidate> RowCandidates(float* row, int64_t vocab, const std::vector<int64_t>& penalty_context,
                                         double repetition_penalty, const std::vector<int64_t>& eos_ids,
                                         bool forbid_eos, float beam_score, int64_t count) {
  ProcessRow(row, vocab, penalty_context, repetition_penalty, eos_ids, forbid_eos);
  const std::vector<Scored> best = BestOf(vocab, count, [&](int64_t t) { return row[t] + beam_score; });
  std::vector<BeamCandidate> out;
  out.reserve(best.size());
  for (const Scored& s : best) out.push_back({s.index, s.score});
  return out;
}

BeamSearch::BeamSearch(BeamSearchParams params) : params_(std::move(params)) {
  beams_.assign(static_cast<size_t>(params_.num_beams), {});
  beam_scores_.assign(static_cast<size_t>(params_.num_beams), kUnreachableBeamScore);
  beam_scores_[0] = 0.0f;
}

StatusOr<BeamSearch> BeamSearch::Create(BeamSearchParams params) {
  XCPIPE_RETURN_IF_ERROR(ValidateBeamSearchParams(params));
  return BeamSearch(std::move(params));
}

std::vector<int64_t> BeamSearch::PenaltyContext(int64_t k) const {
  std::vector<int64_t> context = params_.initial_ids;
  const auto& own = beams_[static_cast<size_t>(k)];
  context.insert(context.end(), own.begin(), own.end());
  return context;
}

bool BeamSearch::EosForbidden() const {
  const int64_t cur_len = static_cast<int64_t>(params_.initial_ids.size()) + steps_;
  return cur_len < params_.min_length || steps_ < params_.min_new_tokens;
}

Status BeamSearch::CheckStep(int64_t rows, int64_t vocab) const {
  if (done()) return FailedPreconditionError("beam search step after the search is done");
  const int64_t nb = params_.num_beams;
  if (rows != nb && !(steps_ == 0 && rows == 1)) {
    return InvalidArgumentError("beam search step has " + std::to_string(rows) + " rows; expected " +
                                std::to_string(nb) + (steps_ == 0 ? " (or 1 at the first step)" : ""));
  }
  if (vocab < 1 || (vocab_ != 0 && vocab != vocab_)) {
    return InvalidArgumentError("beam search rows have a vocabulary of " + std::to_string(vocab) +
                                (vocab_ != 0 ? ", the previous step's had " + std::to_string(vocab_) : ""));
  }
  for (int64_t eos : params_.eos_ids) {
    if (eos >= vocab) {
      return InvalidArgumentError("EOS id " + std::to_string(eos) + " is outside the vocabulary of " +
                                  std::to_string(vocab));
    }
  }
  return OkStatus();
}

StatusOr<BeamStepResult> BeamSearch::StepScores(float* log_probs, int64_t rows, int64_t vocab) {
  XCPIPE_RETURN_IF_ERROR(CheckStep(rows, vocab));
  const int64_t nb = params_.num_beams, V = vocab;
  const bool broadcast = rows == 1 && nb > 1;
  for (int64_t i = 0; i < rows * V; ++i) {
    if (std::isnan(log_probs[i]))
      return InvalidArgumentError("beam search row " + std::to_string(i / V) + " is all -inf");
  }
  std::vector<float> expanded;
  float* d = log_probs;
  if (broadcast) {
    expanded.resize(static_cast<size_t>(nb * V));
    for (int64_t k = 0; k < nb; ++k) std::copy(log_probs, log_probs + V, expanded.begin() + k * V);
    d = expanded.data();
  }
  const bool forbid_eos = EosForbidden();
  for (int64_t k = 0; k < nb; ++k) {
    float* row = d + k * V;
    ProcessRow(row, V, PenaltyContext(k), params_.repetition_penalty, params_.eos_ids, forbid_eos);
    const float beam = beam_scores_[static_cast<size_t>(k)];
    for (int64_t t = 0; t < V; ++t) row[t] = row[t] + beam;
  }
  const std::vector<Scored> best = BestOf(nb * V, CandidatesPerRow(params_), [&](int64_t i) { return d[i]; });
  std::vector<Ranked> ranked;
  ranked.reserve(best.size());
  for (const Scored& s : best) ranked.push_back({s.score, s.index / V, s.index % V});
  return Process(ranked, broadcast, V);
}

StatusOr<BeamStepResult> BeamSearch::StepCandidates(const std::vector<std::vector<BeamCandidate>>& rows,
                                                    int64_t vocab) {
  XCPIPE_RETURN_IF_ERROR(CheckStep(static_cast<int64_t>(rows.size()), vocab));
  const int64_t nb = params_.num_beams;
  const int64_t count = std::min(CandidatesPerRow(params_), vocab);
  for (size_t k = 0; k < rows.size(); ++k) {
    if (static_cast<int64_t>(rows[k].size()) < count) {
      return InvalidArgumentError("beam row " + std::to_string(k) + " gives " + std::to_string(rows[k].size()) +
                                  " candidates; expected " + std::to_string(count));
    }
    for (const BeamCandidate& c : rows[k]) {
      if (c.token < 0 || c.token >= vocab) {
        return InvalidArgumentError("beam row " + std::to_string(k) + " names token " + std::to_string(c.token) +
                                    " outside the vocabulary of " + std::to_string(vocab));
      }
      if (IsBadScore(c.total)) return InvalidArgumentError("beam row " + std::to_string(k) + " holds NaN or +inf");
    }
  }
  const bool broadcast = rows.size() == 1 && nb > 1;
  std::vector<Ranked> all;
  for (int64_t k = 0; k < nb; ++k) {
    const auto& row = rows[broadcast ? 0 : static_cast<size_t>(k)];
    std::vector<Ranked> mine;
    for (int64_t i = 0; i < count; ++i) {
      // The first step's row was scored with beam score 0: the others' totals are rebuilt from it.
      const float total = broadcast && k > 0 ? row[static_cast<size_t>(i)].total + beam_scores_[static_cast<size_t>(k)]
                                             : row[static_cast<size_t>(i)].total;
      mine.push_back({total, k, row[static_cast<size_t>(i)].token});
    }
    all.insert(all.end(), mine.begin(), mine.end());
  }
  std::sort(all.begin(), all.end(), [](const Ranked& a, const Ranked& b) {
    return a.total > b.total || (a.total == b.total && (a.beam < b.beam || (a.beam == b.beam && a.token < b.token)));
  });
  if (static_cast<int64_t>(all.size()) > CandidatesPerRow(params_))
    all.resize(static_cast<size_t>(CandidatesPerRow(params_)));
  return Process(all, broadcast, vocab);
}

StatusOr<BeamStepResult> BeamSearch::Process(const std::vector<Ranked>& best, bool broadcast, int64_t V) {
  const int64_t nb = params_.num_beams;
  const int64_t cur_len = static_cast<int64_t>(params_.initial_ids.size()) + steps_;
  auto is_eos = [&](int64_t t) {
    return std::find(params_.eos_ids.begin(), params_.eos_ids.end(), t) != params_.eos_ids.end();
  };
  // BeamSearchScorer.process, nothing committed until the step is known to be good.
  BeamStepResult result;
  std::vector<float> next_scores;
  std::vector<Kept> closed;
  for (size_t rank = 0; rank < best.size() && static_cast<int64_t>(result.tokens.size()) < nb; ++rank) {
    const int64_t parent = best[rank].beam, token = best[rank].token;
    if (is_eos(token)) {
      if (static_cast<int64_t>(rank) >= nb) continue;  // only the first num_beams may close a hypothesis
      Kept h;
      h.tokens = beams_[static_cast<size_t>(parent)];  // the parent's ids: the EOS is not counted
      h.sum_scores = best[rank].total;
      h.length = cur_len;
      h.score = h.sum_scores / std::pow(static_cast<double>(h.length), params_.length_penalty);
      h.eos_token = token;
      result.finished.push_back({broadcast ? 0 : parent, token, h.score});
      closed.push_back(std::move(h));
    } else {
      result.parents.push_back(parent);
      result.tokens.push_back(token);
      next_scores.push_back(best[rank].total);
    }
  }
  if (static_cast<int64_t>(result.tokens.size()) < nb) {
    return InvalidArgumentError("only " + std::to_string(result.tokens.size()) + " of the " +
                                std::to_string(best.size()) + " best candidates are not EOS tokens; " +
                                std::to_string(nb) + " beams need a larger vocabulary than " + std::to_string(V));
  }

  for (auto& h : closed) Add(kept_, std::move(h));
  // HF's process passes the length the candidates' scores were computed on (input_ids + 1).
  hypotheses_done_ = hypotheses_done_ || IsDone(kept_, static_cast<double>(best.front().total), cur_len + 1);
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
  std::stable_sort(list.items.begin(), list.items.end(),
                   [](const Kept& a, const Kept& b) { return a.score < b.score; });
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

}  // namespace xcpipe::beam
