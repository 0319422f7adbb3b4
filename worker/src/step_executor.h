// StepExecutor: the compute half of a worker. It holds the StageModel of the assigned blocks and
// what the stage keeps per sequence between steps (the KV reservations through the model, the
// last stage's samplers, the first stage's image rows), and runs one step at a time: the forward
// pass on the stage model, its timing, and on the last stage the token selection from the logits.
//
// Time: the step timings (stage_micros, step_times()) and the arrival of activations are read
// from the Clock in the options, never from steady_clock directly.
//
// Contract:
//   * Values in, values out. Admissions, steps and releases come in as plain values; a step
//     returns its outcome (the tokens chosen, the logits asked for, or the hidden states for the
//     next stage, with the stage timings) or an error Status. The actor turns those into
//     messages: this class owns no socket, sends nothing and never touches the data plane.
//   * One thread: every call comes from the worker actor's thread (not thread-safe), except a
//     vision worker's EncodeImage, which runs on its encode thread while the actor thread waits
//     and calls nothing here but model() and the read-only figures its heartbeats send. The only
//     other threads a step uses are libtorch's own intra-op threads inside Forward.
//   * It never loads a model (the actor loads one with its progress callbacks and hands it over
//     with SetModel) and never blocks on anything but the compute.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "xcpipe/base/clock.h"
#include "xcpipe/base/status.h"
#include "xcpipe/model/beam_generation.h"
#include "xcpipe/model/sampling.h"
#include "xcpipe/model/stage_model.h"
#include "xcpipe/transport/stage_message.h"
#include "xcpipe/worker/resource_sampler.h"

namespace xcpipe::worker {

// A step waiting to run: from the control plane (first stage) or the data plane.
struct PendingStep {
  uint64_t epoch = 0, micro_batch = 0, step = 0;
  std::vector<model::Segment> segments;
  model::StepInput input;
  std::vector<int64_t> stage_micros;
  bool want_logits = false;
  // Beam groups (empty when the step has none), one entry per segment: the index of the segment
  // whose sequence it continues (-1: none; see Forward.beamParents), the token its row feeds
  // (the last stage's penalty contexts follow it) and its beam score (the last stage adds it).
  std::vector<int64_t> beam_parents;
  std::vector<int64_t> beam_tokens;
  std::vector<float> beam_scores;
  // Stage 0, images encoded by vision workers: the ids the step names (Forward.imageIds) and
  // each segment's image rows, until the rows have arrived and are placed in input.image_embeds.
  std::vector<uint64_t> image_ids;
  std::vector<int64_t> image_slots;
  transport::StageMessage keep_alive;  // owns the received bytes `input` points into
  Clock::time_point arrived{};         // when the step reached the actor (deferred steps age by it)
};

// An admission as the coordinator sends it (AdmitSequence), as values.
struct Admission {
  uint64_t sequence_id = 0;
  int64_t max_tokens = 0;
  uint64_t prefix_sequence_id = 0;
  int64_t prefix_rows = 0;         // 0: no shared prefix to copy
  model::SamplingParams sampling;  // stop_ids and min_new_tokens included
  int64_t generated_tokens = 0;    // new tokens generated before this admission (a replay)
  int64_t prefill_rows = 0;        // a step ending before this many rows samples nothing
  std::vector<int64_t> penalty_context;
  // A beam group: the other beams' sequences, reserved with this one, all or nothing (they take
  // its KV at the group's first decode step), and the candidates the last stage returns per
  // beam row (0: not a beam group). See AdmitSequence.
  std::vector<uint64_t> beam_sequence_ids;
  int64_t beam_candidates = 0;
};

// What one step produced.
struct StepOutcome {
  // Last stage: one token per segment, in segment order; -1 where no token is due (a sequence
  // gone, or a step ending inside the prompt).
  std::vector<int64_t> tokens;
  // Last stage, beam rows: the row's best candidates (best first); empty for other segments.
  std::vector<std::vector<model::BeamCandidate>> candidates;
  at::Tensor logits;                  // last stage with want_logits: [segments, V] float32 on the host, contiguous
  at::Tensor hidden;                  // other stages: the output hidden states [N, H], where the model left them
  std::vector<int64_t> stage_micros;  // the step's stage_micros with this stage's time appended
};

struct StepExecutorOptions {
  Clock* clock = &SteadyClock::Instance();  // never null; outlives the executor
};

class StepExecutor {
 public:
  explicit StepExecutor(StepExecutorOptions options = {});
  StepExecutor(const StepExecutor&) = delete;
  StepExecutor& operator=(const StepExecutor&) = delete;

  // A new assignment: this stage's place in the pipeline. Forgets every sequence's sampler and
  // image rows (the model's reservations go with ReleaseAllSequences, after the load).
  void Assign(uint32_t stage_index, uint32_t stage_count);
  bool is_last() const { return stage_index_ + 1 == stage_count_; }

  // The stage model: null before the first load and while one loads.
  model::StageModel* model() const { return model_.get(); }
  void SetModel(std::unique_ptr<model::StageModel> model) { model_ = std::move(model); }

  // Reserves the sequence's KV room (copying a shared prefix when named) and, on the last stage,
  // creates its sampler. A beam group's sequences are reserved together, all or nothing. An
  // error leaves the sequence (and its group) unadmitted; the caller reports it.
  Status Admit(const Admission& admission);
  // Frees the sequence's KV room, sampler and image rows (unknown ids are ignored).
  void Release(uint64_t sequence_id);
  // Whether every sequence of the step has been admitted on this stage.
  bool Admitted(const std::vector<model::Segment>& segments) const;

  // Stage 0: the image embeddings of one image (the vision block).
  StatusOr<at::Tensor> EncodeImage(const model::ImageInput& image);
  // A vision worker's encode, timed by its caller: records [started, ended] in step_times()
  // (the worker's busy time and idle share count it as a step). Called on the actor thread once
  // the encode is done: step_times() is read there too (heartbeats).
  void RecordEncode(Clock::time_point started, Clock::time_point ended);
  // Stage 0: this step's image embedding rows for each segment, in row order: `slots` rows per
  // segment (its -1 token ids), taken from the sequence's rows left over from earlier steps,
  // encoding `images` (the step's, in segment order) as a segment runs short. Rows of an image
  // left over stay for the sequence's next step.
  StatusOr<std::vector<at::Tensor>> TakeImageRows(const std::vector<model::Segment>& segments,
                                                  const std::vector<int64_t>& slots, std::vector<at::Tensor> images);
  // Stage 0 when vision workers encode the images (Forward.imageIds): the frame a vision worker
  // sent for one image (microBatchId = the image id, one segment naming its sequence and rows,
  // one tensor "image_embeds" [rows, H]) is checked against the stage's hidden size and kept
  // until a step takes it or the sequence is released (a repeat replaces it; a new assignment
  // forgets them all). InvalidArgument naming what the frame lacks; FailedPrecondition when the
  // stage does not hold the embed block.
  Status StoreEncodedImage(const transport::StageMessage& frame);
  bool HasEncodedImages(const std::vector<uint64_t>& image_ids) const;
  // The rows of each image named, in order, taken out of the store; NotFound naming the first
  // one missing (nothing is taken then).
  StatusOr<std::vector<at::Tensor>> TakeEncodedImages(const std::vector<uint64_t>& image_ids);
  size_t encoded_images_held() const { return encoded_.size(); }
  // An activation message from the previous stage as a step arriving now (its tensors are used
  // in place; the step keeps the message alive).
  StatusOr<PendingStep> FromActivations(transport::StageMessage message) const;

  // Runs the step on the model (the model must be set and the step admitted): first the beam
  // groups' reorders (every stage; the last stage's penalty contexts too), then the forward
  // pass; the last stage then picks a token, or a beam row's candidates. Records the
  // compute time, as the clock measures it, in step_times() and appends it to the step's
  // stage_micros.
  StatusOr<StepOutcome> Run(PendingStep& step);

  uint64_t steps_completed() const { return steps_completed_; }
  StepTimeWindow& step_times() { return step_times_; }
  const StepTimeWindow& step_times() const { return step_times_; }

 private:
  struct SequenceState {
    model::Sampler sampler;
    std::vector<int64_t> context;  // penalty context: before generation + every sampled token
    int64_t prefill_rows = 0;      // a step ending before this many rows samples nothing
    // Beam rows (beam_candidates > 0): no sampler draw; the context grows by the token each
    // step feeds the row (after the reorder), and EOS is masked while fewer than
    // eos_masked_new_tokens were fed since the penalty context given at admission.
    int64_t beam_candidates = 0;
    int64_t fed_tokens = 0;
    int64_t eos_masked_new_tokens = 0;
    double repetition_penalty = 1.0;
    std::vector<int64_t> eos_ids;
  };
  // The beam groups' reorders of one step (PendingStep::beam_parents) on the model, and on the
  // last stage on the penalty contexts.
  Status ApplyBeamReorders(const PendingStep& step);
  // The last stage's beam rows: their candidates, in outcome.candidates.
  Status PickBeamCandidates(const PendingStep& step, const at::Tensor& logits, StepOutcome& outcome);
  // Stage 0: the image embedding rows of each sequence whose prompt is still prefilling, in
  // prompt order, and how many of them its steps have used. An image is encoded when the step
  // holding its first row arrives; a prompt prefilled in pieces takes the rest with later steps.
  struct ImageRows {
    std::vector<at::Tensor> pending;  // encoded images not used up, oldest first
    int64_t used = 0;                 // rows of pending.front() already placed
  };

  Clock& clock_;
  uint32_t stage_index_ = 0, stage_count_ = 0;
  std::unique_ptr<model::StageModel> model_;
  std::map<uint64_t, SequenceState> sequences_;
  std::map<uint64_t, ImageRows> image_rows_;
  struct EncodedImage {
    uint64_t sequence_id = 0;
    at::Tensor rows;
  };
  std::map<uint64_t, EncodedImage> encoded_;  // by image id (StoreEncodedImage)
  uint64_t steps_completed_ = 0;
  StepTimeWindow step_times_;
};

}  // namespace xcpipe::worker
