// The request table: the part of the coordinator that speaks to clients.
// Coordinator-private; one actor thread owns its state. Architecture: docs/architecture.md,
// "The request lifecycle" (exactly-once delivery).
//
// Owns (members of Coordinator::Impl): `requests`, `finished` and `finished_order` (outcomes
// remembered for repeated submits), `prepare_thread` and `preparing` (submits with images being
// prepared off the actor thread, prepare_thread.h), `next_request`,
// `next_request_deadline_check`, the counters `completed` and `failed`. Entry points
// (request_table.cpp): OnSubmit, FinishSubmit, TakePreparedSubmits, PreparePretokenized,
// SendAccepted, SendFinal, AnswerRepeatedSubmit, StreamTokens, FinishSequence, FailRequest,
// CheckRequestDeadlines.
//
// Contract:
//   * A request is (client peer, client's request id). A repeated submit never runs it twice:
//     while its images are prepared, the repeat is not answered (the answer follows); while
//     it runs, the repeat is answered with where it stands; once it ended, with the remembered
//     outcome (the last kFinishedRemembered outcomes).
//   * Every accepted request ends in exactly one final event per prompt: completed (stop or
//     length) or failed with a reason the client can act on.
//   * Tokens a client was sent never change: every token event carries its offset, and the
//     final event carries every token, so a client fills gaps; a replay streams nothing it
//     already sent.
//   * Bad input is refused at intake with InvalidArgument naming the field (the edge's checks);
//     it never reaches a stage.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "xcpipe/coordinator/edge.h"

namespace xcpipe::coordinator::detail {

using Clock = std::chrono::steady_clock;

// What a client is told to wait before repeating a submit the cluster cannot take yet.
constexpr std::chrono::milliseconds kRetryAfterWhenNotServing{500};

// Why a submit is refused while no plan fits the workers left after a fault (capacity_lost).
constexpr const char* kCapacityLostRefusal =
    "the cluster lost a stage and the remaining workers cannot hold the model; retry when a worker has been "
    "restarted";

// Finished requests remembered per client for repeated submits (oldest forgotten first).
constexpr size_t kFinishedRemembered = 4096;

// The last event of one prompt, kept so that a repeated submit (its client missed the end) is
// answered with the outcome instead of running the request twice.
struct FinalEvent {
  uint32_t prompt_index = 0;
  std::vector<int64_t> tokens;
  std::string text, finish_reason, error;
  uint32_t prompt_tokens = 0;
};

struct Request {
  std::string peer;
  uint64_t client_id = 0;
  std::vector<uint64_t> sequences;
  size_t done = 0;
  Clock::time_point received{};  // set on submit (Impl::OnSubmit)
  Clock::time_point deadline = Clock::time_point::max();
  std::vector<FinalEvent> finals;  // prompts finished so far
};

}  // namespace xcpipe::coordinator::detail
