// The batch scheduler's state: the sequences it admits and steps, and the shared prompt head.
// Coordinator-private; one actor thread owns it. The scheduler's rules are value functions in
// xcpipe/coordinator/batch_scheduler.h. Architecture: docs/architecture.md, "The request
// lifecycle".
//
// Owns (members of Coordinator::Impl): `sequences`, `queue` (waiting for admission, in arrival
// order), `in_flight` (micro-batch -> its members), `step_deadlines`, `prefix`,
// `releases_to_repeat`, `next_id`, `step_counter`. Entry points (batch_scheduler.cpp): Admit,
// Schedule, OnStepResult, CheckStepDeadlines, ReleaseOnStages, RepeatReleases,
// DropSharedPrefix, RemoveHolder.
//
// Contract:
//   * Admission reserves a sequence's whole room (prompt + new tokens) on every stage at once
//     (CheckKvRoom), in arrival order, at most max_sequences active; a sequence once admitted
//     never runs a stage out of KV, and one larger than a stage's budget fails at once.
//   * Every admitted sequence is in exactly one state; kInFlight sequences are in exactly one
//     micro-batch of `in_flight`, and at most one micro-batch per stage is in flight.
//   * A step result is taken once: a result of another epoch, of a micro-batch no longer in
//     flight, or naming other sequences is dropped.
//   * A finished or failed sequence's KV is released on every stage, and the release repeated
//     with the next kReleaseRepeats heartbeats (a lost release would hold the room until the
//     next plan); the coordinator's own accounting is freed at once.
//   * A micro-batch not heard of for kStepDeadline counts as lost and starts a recovery.
//   * A beam request is one Sequence whose beams are sequences of their own on the stages
//     (beam_group.h): admitted and released all together, reserving reserved_tokens().
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <optional>

#include <kj/common.h>

#include "beam_group.h"
#include "xcpipe/coordinator/edge.h"

namespace xcpipe::coordinator::detail {

using Clock = std::chrono::steady_clock;

// A micro-batch counts as lost (a dropped forward or step result) when nothing has shown it
// alive for this long: it was sent, or a stage's heartbeat named it, or an earlier one, as being
// computed (workers heartbeat every 250 ms while a step runs, so a long prefill keeps extending
// the deadlines of everything queued behind it).
constexpr std::chrono::milliseconds kStepDeadline{2000};

// A releaseSequences is sent again with this many following heartbeats: one that is lost would
// keep the sequence's KV room reserved on that stage until the next plan (a worker ignores ids
// it does not hold, so a repeat is harmless).
constexpr int kReleaseRepeats = 4;

// kHeld: the shared-prefix holder after its prefill: it keeps its KV on every stage for
// others to copy and takes no more steps.
enum class SeqState { kQueued, kReady, kInFlight, kDone, kHeld };

struct Sequence {
  uint64_t id = 0;
  uint64_t request = 0;  // internal request id
  uint32_t prompt_index = 0;
  PreparedPrompt prompt;
  std::vector<int64_t> generated;
  int64_t max_new = 0;
  Sampling sampling;
  SeqState state = SeqState::kQueued;
  int64_t cached = 0;  // tokens in the stages' caches
  uint64_t max_tokens = 0;
  Clock::time_point admitted_at;
  size_t text_sent = 0;                             // bytes of decoded text already streamed
  std::optional<Clock::time_point> first_token_at;  // monitoring: time to first token, decode speed
  bool want_logits = false;
  int fault_replays = 0;          // times a fault sent it back to prefill (bounded: kMaxFaultReplays)
  bool use_prefix = false;        // its prompt starts with the shared head: admitted with a copy of its KV
  bool is_prefix = false;         // the holder of the shared head's KV (no request; see SharedPrefix)
  bool in_pieces = false;         // its prompt is being prefilled piece by piece (prefill_chunk_rows)
  std::optional<BeamGroup> beam;  // a beam request: its search and its beams' sequences
  // Vision workers (vision_pool.h): the job of each image of its prompt under this plan, in
  // prompt order; empty while none was made (or vision runs on stage 0).
  std::vector<uint64_t> image_ids;
  // Tokens of KV every stage reserves for it: max_tokens for each beam.
  uint64_t reserved_tokens() const { return max_tokens * (beam ? beam->ids.size() : 1); }
};

// Where each image of a prompt starts: its rows are the next run of -1 ids, in image order.
std::vector<int64_t> ImageFirstRows(const PreparedPrompt& p);
// One preprocessed image as it travels to stage 0 (forward) or to a vision worker (encodeImage).
template <typename ImageTensorBuilder>
void ImageToWire(const PreparedImage& image, ImageTensorBuilder out) {
  out.setChannels(static_cast<uint32_t>(image.channels));
  out.setHeight(static_cast<uint32_t>(image.height));
  out.setWidth(static_cast<uint32_t>(image.width));
  out.setGridH(static_cast<uint32_t>(image.grid_h));
  out.setGridW(static_cast<uint32_t>(image.grid_w));
  out.setPixels(
      kj::arrayPtr(reinterpret_cast<const kj::byte*>(image.pixels.data()), image.pixels.size() * sizeof(float)));
}

// The shared prompt prefix: every chat prompt starts with the template's system text
// (RequestPreparer::shared_head). Its KV is computed once per plan by a holder sequence of its
// own and copied into each admitted sequence whose prompt starts with it, which then prefills
// only the rest: the same work for every such prompt, whatever arrives with it, so tokens do
// not depend on the mix. A new plan (epoch) drops the holder; the next admission makes another.
struct SharedPrefix {
  std::vector<int64_t> head;  // empty: off
  uint64_t holder = 0;        // the holder's sequence id this epoch (0: none yet)
  bool ready = false;         // the holder's prefill step completed on every stage
  uint64_t hits = 0, rows_saved = 0;
};

}  // namespace xcpipe::coordinator::detail
