// The batch scheduler's decisions as functions over values: whether a sequence's KV fits the
// stages, and which micro-batches to send next. The coordinator (batch_scheduler.cpp) gathers
// the values from its tables, calls these, and turns the answer into messages; nothing here
// sends, reads a clock or keeps state, so every rule is testable alone
// (coordinator/tests/batch_scheduler_test.cpp). Architecture: docs/architecture.md, "The
// request lifecycle".
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace xcpipe::coordinator {

// One stage's KV accounting, in bytes (kv_per_token 0: the stage keeps no KV, e.g. vision only).
struct StageKv {
  uint64_t kv_per_token = 0;
  uint64_t kv_reserved = 0;
  uint64_t kv_budget = 0;
};

enum class KvRoom {
  kFits,   // every stage has room for max_tokens more tokens now: admit
  kWait,   // some stage is full now, but the sequence fits an empty cache: wait for releases
  kNever,  // the sequence is larger than some stage's whole KV budget: it can never be admitted
};

// Admission reserves max_tokens (prompt + new tokens) on every stage at once, so a sequence
// once admitted never runs a stage out of KV.
KvRoom CheckKvRoom(const std::vector<StageKv>& stages, uint64_t max_tokens);

// A sequence ready for its next step: the rows it still has to put in the stages' caches
// (its whole prompt, the part after a copied shared head, a replay's prompt plus its tokens,
// or 1 when decoding).
struct ReadySequence {
  uint64_t id = 0;
  int64_t pending_rows = 0;
};

struct MicroBatchPlan {
  std::vector<std::pair<uint64_t, int64_t>> members;  // (sequence id, rows this step), in order
  int64_t rows = 0;                                   // their sum
};

struct SchedulePlan {
  std::vector<MicroBatchPlan> micro_batches;  // to send now, in order
  uint64_t in_pieces = 0;                     // the long prompt being prefilled in pieces (0: none)
};

struct ScheduleLimits {
  size_t stage_count = 1;      // micro-batches in flight at most: one per stage
  size_t in_flight = 0;        // micro-batches in flight now
  int64_t active = 0;          // sequences admitted and not finished (ready or in flight)
  int64_t piece_rows = 0;      // prefill_chunk_rows: a prompt with more rows left goes in pieces (0: off)
  int64_t step_row_limit = 0;  // rows one micro-batch may carry (a single member may exceed it)
  uint64_t in_pieces = 0;      // the prompt already going in pieces (0: none)
};

// Fills the free micro-batch slots from `ready` (in arrival order). Each micro-batch takes
// about active / stage_count sequences, so the groups rotate through the pipeline and every
// stage has work; a micro-batch closes early rather than exceed step_row_limit. A prompt with
// more than piece_rows rows left goes piece_rows at a time, one such prompt at a time: other
// long prompts wait (are skipped) until it is through; short ones and decodes go on around it.
SchedulePlan PlanMicroBatches(const std::vector<ReadySequence>& ready, const ScheduleLimits& limits);

}  // namespace xcpipe::coordinator
