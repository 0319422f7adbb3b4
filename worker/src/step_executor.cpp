#include "step_executor.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <map>
#include <string>

namespace xcpipe::worker {
namespace {

at::ScalarType ToTorch(transport::DType d) {
  switch (d) {
    case transport::DType::kF32:
      return at::kFloat;
    case transport::DType::kBF16:
      return at::kBFloat16;
    case transport::DType::kF16:
      return at::kHalf;
    case transport::DType::kI64:
      return at::kLong;
    case transport::DType::kU8:
      return at::kByte;
    case transport::DType::kBool:
      return at::kBool;
  }
  return at::kFloat;
}

}  // namespace

StepExecutor::StepExecutor(StepExecutorOptions options) : clock_(*options.clock) {}

void StepExecutor::Assign(uint32_t stage_index, uint32_t stage_count) {
  stage_index_ = stage_index;
  stage_count_ = stage_count;
  sequences_.clear();
  image_rows_.clear();
  encoded_.clear();
}

Status StepExecutor::Admit(const Admission& a) {
  const uint64_t id = a.sequence_id;
  if (!model_) return FailedPreconditionError("no stage assigned");
  if (Status st = model_->ReserveSequence(id, a.max_tokens); !st.ok()) return st;
  // A beam group: every beam's room now or none (its steps then wait and the coordinator re-plans).
  std::vector<uint64_t> group = {id};
  for (uint64_t beam : a.beam_sequence_ids) {
    Status st = model_->HoldsSequence(beam) ? AlreadyExistsError("beam sequence " + std::to_string(beam) + " is held")
                                            : model_->ReserveSequence(beam, a.max_tokens);
    if (!st.ok()) {
      for (uint64_t held : group) model_->ReleaseSequence(held);
      return st.WithContext("beam group of sequence " + std::to_string(id));
    }
    group.push_back(beam);
  }
  if (a.prefix_rows > 0) {
    if (Status st = model_->CopyPrefix(a.prefix_sequence_id, id, a.prefix_rows); !st.ok()) {
      // Without the copy its steps would read an empty cache: keep it unadmitted, so they wait
      // and end as Aborted (the coordinator re-plans) instead of computing wrong tokens.
      for (uint64_t held : group) model_->ReleaseSequence(held);
      return AbortedError(st.message());
    }
  }
  if (is_last()) {
    if (Status st = model::ValidateSamplingParams(a.sampling); !st.ok()) {
      for (uint64_t held : group) model_->ReleaseSequence(held);
      return st;
    }
    const SequenceState state{.sampler = model::Sampler(a.sampling, a.generated_tokens),
                              .context = a.penalty_context,
                              .prefill_rows = a.prefill_rows,
                              .beam_candidates = a.beam_candidates,
                              .fed_tokens = 0,
                              .eos_masked_new_tokens = a.sampling.min_new_tokens,
                              .repetition_penalty = a.sampling.repetition_penalty,
                              .eos_ids = a.sampling.stop_ids};
    for (uint64_t member : group) sequences_.insert_or_assign(member, state);
  }
  return OkStatus();
}

void StepExecutor::Release(uint64_t sequence_id) {
  if (model_) model_->ReleaseSequence(sequence_id);
  sequences_.erase(sequence_id);
  image_rows_.erase(sequence_id);
  std::erase_if(encoded_, [sequence_id](const auto& e) { return e.second.sequence_id == sequence_id; });
}

Status StepExecutor::StoreEncodedImage(const transport::StageMessage& frame) {
  if (!model_ || !model_->holds_embed()) {
    return FailedPreconditionError("image embeddings sent to a worker that does not hold the embed block");
  }
  const auto* rows = frame.Find("image_embeds");
  if (frame.segments.size() != 1 || rows == nullptr || rows->shape().size() != 2 ||
      rows->shape()[0] != frame.segments[0].rows || rows->shape()[1] != model_->spec().llm.hidden ||
      rows->location() != transport::MemoryLocation::kHost) {
    return InvalidArgumentError("an image frame must carry one segment and image_embeds [rows, " +
                                std::to_string(model_->spec().llm.hidden) + "] in host memory with that many rows");
  }
  const at::ScalarType dtype = ToTorch(rows->dtype());
  if (dtype != at::kFloat && dtype != at::kBFloat16 && dtype != at::kHalf) {
    return InvalidArgumentError("image_embeds must be f32, bf16 or f16");
  }
  // A copy: the frame's pooled buffer goes back as soon as the message is dropped.
  at::Tensor copy = at::from_blob(const_cast<std::byte*>(rows->bytes().data()), rows->shape(), dtype).clone();
  encoded_.insert_or_assign(frame.micro_batch_id, EncodedImage{frame.segments[0].sequence_id, std::move(copy)});
  return OkStatus();
}

bool StepExecutor::HasEncodedImages(const std::vector<uint64_t>& image_ids) const {
  return std::all_of(image_ids.begin(), image_ids.end(), [this](uint64_t id) { return encoded_.count(id) > 0; });
}

StatusOr<std::vector<at::Tensor>> StepExecutor::TakeEncodedImages(const std::vector<uint64_t>& image_ids) {
  for (uint64_t id : image_ids) {
    if (!encoded_.count(id))
      return NotFoundError("image " + std::to_string(id) + " has not arrived from its vision worker");
  }
  std::vector<at::Tensor> out;
  for (uint64_t id : image_ids) {
    auto it = encoded_.find(id);
    if (it == encoded_.end())
      return InvalidArgumentError("image " + std::to_string(id) + " is named twice in one step");
    out.push_back(std::move(it->second.rows));
    encoded_.erase(it);
  }
  return out;
}

bool StepExecutor::Admitted(const std::vector<model::Segment>& segments) const {
  for (const auto& s : segments)
    if (!model_->HoldsSequence(s.sequence_id)) return false;
  return true;
}

StatusOr<at::Tensor> StepExecutor::EncodeImage(const model::ImageInput& image) { return model_->EncodeImage(image); }

void StepExecutor::RecordEncode(Clock::time_point started, Clock::time_point ended) {
  step_times_.Record(started, ended);
}

StatusOr<std::vector<at::Tensor>> StepExecutor::TakeImageRows(const std::vector<model::Segment>& segments,
                                                              const std::vector<int64_t>& slots,
                                                              std::vector<at::Tensor> images) {
  std::vector<at::Tensor> out;
  size_t next_image = 0;
  for (size_t i = 0; i < segments.size(); ++i) {
    int64_t need = slots[i];
    if (need == 0) continue;
    ImageRows& have = image_rows_[segments[i].sequence_id];
    while (need > 0) {
      if (have.pending.empty()) {
        if (next_image == images.size()) {
          image_rows_.erase(segments[i].sequence_id);
          return InvalidArgumentError("sequence " + std::to_string(segments[i].sequence_id) + " has " +
                                      std::to_string(need) + " image rows in this step that no image given covers");
        }
        have.pending.push_back(std::move(images[next_image++]));
        have.used = 0;
      }
      const at::Tensor& front = have.pending.front();
      const int64_t n = std::min(need, front.size(0) - have.used);
      out.push_back(front.narrow(0, have.used, n));
      have.used += n;
      need -= n;
      if (have.used == front.size(0)) {
        have.pending.erase(have.pending.begin());
        have.used = 0;
      }
    }
    if (have.pending.empty()) image_rows_.erase(segments[i].sequence_id);
  }
  if (next_image != images.size()) {
    return InvalidArgumentError(std::to_string(images.size() - next_image) +
                                " image(s) in this step fall on no image rows of it");
  }
  return out;
}

StatusOr<PendingStep> StepExecutor::FromActivations(transport::StageMessage message) const {
  PendingStep step;
  step.arrived = clock_.now();
  step.epoch = message.epoch;
  step.micro_batch = message.micro_batch_id;
  step.step = message.step;
  for (const auto& s : message.segments) step.segments.push_back({s.sequence_id, s.rows, s.start_pos});
  const auto* hidden = message.Find("hidden");
  const auto* mask = message.Find("im_mask");
  if (hidden == nullptr || mask == nullptr || hidden->shape().size() != 2) {
    return InvalidArgumentError("activation message lacks hidden [N, H] or im_mask [N]");
  }
  // Over NCCL to a stage on the device the hidden states arrive in device memory (a pooled
  // buffer `keep_alive` holds): computed on in place.
  auto where = at::TensorOptions().dtype(ToTorch(hidden->dtype()));
  if (hidden->location() == transport::MemoryLocation::kCudaDevice) where = where.device(at::kCUDA, hidden->device());
  step.input.hidden = at::from_blob(const_cast<std::byte*>(hidden->bytes().data()), hidden->shape(), where);
  step.input.im_mask =
      at::from_blob(const_cast<std::byte*>(mask->bytes().data()), mask->shape(), at::kByte).to(at::kBool);
  if (const auto* micros = message.Find("stage_micros")) {
    auto v = micros->as<int64_t>();
    step.stage_micros.assign(v.begin(), v.end());
  }
  if (const auto* flags = message.Find("flags"))
    step.want_logits = !flags->bytes().empty() && flags->bytes()[0] != std::byte{0};
  const auto* parents = message.Find("beam_parents");
  const auto* tokens = message.Find("beam_tokens");
  const auto* scores = message.Find("beam_scores");
  if (parents != nullptr || tokens != nullptr || scores != nullptr) {
    const size_t n = step.segments.size();
    if (parents == nullptr || tokens == nullptr || scores == nullptr || parents->dtype() != transport::DType::kI64 ||
        tokens->dtype() != transport::DType::kI64 || scores->dtype() != transport::DType::kF32 ||
        parents->as<int64_t>().size() != n || tokens->as<int64_t>().size() != n || scores->as<float>().size() != n) {
      return InvalidArgumentError("activation message has beam rows that do not match its " + std::to_string(n) +
                                  " segments");
    }
    auto p = parents->as<int64_t>();
    auto t = tokens->as<int64_t>();
    auto sc = scores->as<float>();
    step.beam_parents.assign(p.begin(), p.end());
    step.beam_tokens.assign(t.begin(), t.end());
    step.beam_scores.assign(sc.begin(), sc.end());
  }
  step.input.segments = step.segments;
  step.keep_alive = std::move(message);
  return step;
}

Status StepExecutor::ApplyBeamReorders(const PendingStep& step) {
  const size_t n = step.segments.size();
  if (step.beam_parents.empty()) return OkStatus();
  if (step.beam_parents.size() != n) {
    return InvalidArgumentError("step carries " + std::to_string(step.beam_parents.size()) + " beam parents for " +
                                std::to_string(n) + " segments");
  }
  // Segments joined by parent links form the groups; each group reorders on its own (a group's
  // rooms all have one capacity, another group's may differ).
  std::vector<size_t> root(n);
  for (size_t i = 0; i < n; ++i) root[i] = i;
  auto find = [&](size_t i) {
    while (root[i] != i) i = root[i] = root[root[i]];
    return i;
  };
  for (size_t i = 0; i < n; ++i) {
    const int64_t p = step.beam_parents[i];
    if (p < -1 || p >= static_cast<int64_t>(n)) {
      return InvalidArgumentError("beam parent " + std::to_string(p) + " of segment " + std::to_string(i) +
                                  " is not -1 or a segment index below " + std::to_string(n));
    }
    if (p >= 0) root[find(i)] = find(static_cast<size_t>(p));
  }
  std::map<size_t, std::vector<size_t>> groups;
  for (size_t i = 0; i < n; ++i)
    if (step.beam_parents[i] >= 0) groups[find(i)].push_back(i);
  for (const auto& [r, members] : groups) {
    std::vector<uint64_t> ids;
    std::vector<int64_t> parents;
    bool identity = true;
    for (size_t i : members) {
      ids.push_back(step.segments[i].sequence_id);
      const auto p = static_cast<size_t>(step.beam_parents[i]);
      parents.push_back(std::find(members.begin(), members.end(), p) - members.begin());
      identity = identity && p == i;
    }
    if (identity) continue;
    if (Status st = model_->ReorderSequences(ids, parents); !st.ok()) {
      return st.WithContext("stage " + std::to_string(stage_index_) + ": beam reorder");
    }
    if (is_last()) {
      std::vector<SequenceState*> states;
      for (uint64_t id : ids) {
        auto it = sequences_.find(id);
        if (it == sequences_.end())
          return FailedPreconditionError("beam sequence " + std::to_string(id) + " is not admitted");
        states.push_back(&it->second);
      }
      std::vector<std::vector<int64_t>> contexts;
      std::vector<int64_t> fed;
      for (size_t k = 0; k < ids.size(); ++k) {
        contexts.push_back(states[static_cast<size_t>(parents[k])]->context);
        fed.push_back(states[static_cast<size_t>(parents[k])]->fed_tokens);
      }
      for (size_t k = 0; k < ids.size(); ++k) {
        states[k]->context = std::move(contexts[k]);
        states[k]->fed_tokens = fed[k];
      }
    }
  }
  return OkStatus();
}

Status StepExecutor::PickBeamCandidates(const PendingStep& step, const at::Tensor& logits, StepOutcome& outcome) {
  std::vector<int64_t> rows;
  std::vector<std::vector<int64_t>> contexts;
  std::vector<bool> forbid;
  std::vector<float> scores;
  for (size_t i = 0; i < step.segments.size(); ++i) {
    const auto& seg = step.segments[i];
    auto it = sequences_.find(seg.sequence_id);
    if (it == sequences_.end() || it->second.beam_candidates == 0) continue;
    SequenceState& st = it->second;
    if (seg.start_pos + seg.rows < st.prefill_rows) continue;  // a piece of a long prompt
    if (seg.start_pos >= st.prefill_rows) {
      // A decode row: the token it feeds is the beam's newest (after the reorder above).
      if (i >= step.beam_tokens.size()) {
        return InvalidArgumentError("beam row of sequence " + std::to_string(seg.sequence_id) + " carries no token");
      }
      st.context.push_back(step.beam_tokens[i]);
      ++st.fed_tokens;
    }
    rows.push_back(static_cast<int64_t>(i));
    contexts.push_back(st.context);
    forbid.push_back(st.fed_tokens < st.eos_masked_new_tokens);
    scores.push_back(i < step.beam_scores.size() ? step.beam_scores[i] : 0.0f);
  }
  if (rows.empty()) return OkStatus();
  outcome.candidates.resize(step.segments.size());
  // One row at a time keeps each row's settings its own (groups may differ); the cost is the
  // log_softmax of one vocabulary row per beam, as a single batched call would pay.
  for (size_t j = 0; j < rows.size(); ++j) {
    const auto i = static_cast<size_t>(rows[j]);
    const SequenceState& st = sequences_.at(step.segments[i].sequence_id);
    auto picked = model::BeamRowCandidates(logits.narrow(0, rows[j], 1), {contexts[j]}, st.repetition_penalty,
                                           st.eos_ids, {forbid[j]}, {scores[j]}, st.beam_candidates);
    if (!picked.ok()) return picked.status().WithContext("sequence " + std::to_string(step.segments[i].sequence_id));
    outcome.candidates[i] = std::move((*picked)[0]);
  }
  return OkStatus();
}

StatusOr<StepOutcome> StepExecutor::Run(PendingStep& step) {
  const auto started = clock_.now();
  step.input.all_logits = false;
  if (Status st = ApplyBeamReorders(step); !st.ok()) return st;
  auto out = model_->Forward(step.input);
  if (!out.ok()) return out.status().WithContext("stage " + std::to_string(stage_index_));
  const auto finished = clock_.now();
  step_times_.Record(started, finished);
  step.stage_micros.push_back(std::chrono::duration_cast<std::chrono::microseconds>(finished - started).count());
  ++steps_completed_;
  StepOutcome outcome;
  if (is_last()) {
    // Sampling runs on the host: the logits rows are the one tensor that leaves the device here
    // (the copy waits for the step's kernels, so the step's inputs are no longer read after it).
    const at::Tensor logits = out->logits.to(at::kCPU);
    outcome.tokens.reserve(step.segments.size());
    for (size_t i = 0; i < step.segments.size(); ++i) {
      const auto& seg = step.segments[i];
      auto it = sequences_.find(seg.sequence_id);
      if (it == sequences_.end() || seg.start_pos + seg.rows < it->second.prefill_rows ||
          it->second.beam_candidates > 0) {
        // Gone, a piece of a long prompt (no token, no draw, no penalty row), or a beam row
        // (candidates below instead).
        outcome.tokens.push_back(-1);
        continue;
      }
      const int64_t token = it->second.sampler.Next(logits[static_cast<int64_t>(i)], it->second.context);
      it->second.context.push_back(token);
      outcome.tokens.push_back(token);
    }
    if (Status st = PickBeamCandidates(step, logits, outcome); !st.ok()) return st;
    if (step.want_logits) outcome.logits = logits.contiguous();
  } else {
    outcome.hidden = std::move(out->hidden);
  }
  outcome.stage_micros = step.stage_micros;
  return outcome;
}

}  // namespace xcpipe::worker
