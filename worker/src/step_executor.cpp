#include "step_executor.h"

#include <ATen/ATen.h>

#include <algorithm>
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
}

Status StepExecutor::Admit(const Admission& a) {
  const uint64_t id = a.sequence_id;
  if (!model_) return FailedPreconditionError("no stage assigned");
  if (Status st = model_->ReserveSequence(id, a.max_tokens); !st.ok()) return st;
  if (a.prefix_rows > 0) {
    if (Status st = model_->CopyPrefix(a.prefix_sequence_id, id, a.prefix_rows); !st.ok()) {
      // Without the copy its steps would read an empty cache: keep it unadmitted, so they wait
      // and end as Aborted (the coordinator re-plans) instead of computing wrong tokens.
      model_->ReleaseSequence(id);
      return AbortedError(st.message());
    }
  }
  if (is_last()) {
    if (Status st = model::ValidateSamplingParams(a.sampling); !st.ok()) {
      model_->ReleaseSequence(id);
      return st;
    }
    SequenceState state{model::Sampler(a.sampling, a.generated_tokens), a.penalty_context, a.prefill_rows};
    sequences_.insert_or_assign(id, std::move(state));
  }
  return OkStatus();
}

void StepExecutor::Release(uint64_t sequence_id) {
  if (model_) model_->ReleaseSequence(sequence_id);
  sequences_.erase(sequence_id);
  image_rows_.erase(sequence_id);
}

bool StepExecutor::Admitted(const std::vector<model::Segment>& segments) const {
  for (const auto& s : segments)
    if (!model_->HoldsSequence(s.sequence_id)) return false;
  return true;
}

StatusOr<at::Tensor> StepExecutor::EncodeImage(const model::ImageInput& image) { return model_->EncodeImage(image); }

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
  step.input.segments = step.segments;
  step.keep_alive = std::move(message);
  return step;
}

StatusOr<StepOutcome> StepExecutor::Run(PendingStep& step) {
  const auto started = clock_.now();
  step.input.all_logits = false;
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
      if (it == sequences_.end() || seg.start_pos + seg.rows < it->second.prefill_rows) {
        outcome.tokens.push_back(-1);  // gone, or a piece of a long prompt: no token, no draw, no penalty row
        continue;
      }
      const int64_t token = it->second.sampler.Next(logits[static_cast<int64_t>(i)], it->second.context);
      it->second.context.push_back(token);
      outcome.tokens.push_back(token);
    }
    if (step.want_logits) outcome.logits = logits.contiguous();
  } else {
    outcome.hidden = std::move(out->hidden);
  }
  outcome.stage_micros = step.stage_micros;
  return outcome;
}

}  // namespace xcpipe::worker
