// The vision pool: the part of the coordinator that runs the vision block apart from the
// language pipeline (CoordinatorOptions::vision_stage "separate", or "auto" choosing it).
// Coordinator-private; one actor thread owns its state. Architecture: docs/architecture.md,
// "Vision workers".
//
// Owns (members of Coordinator::Impl): `vision_mode` and `vision_reason` (of the current plan),
// `vision` (the plan's vision workers), `image_jobs` (every image of a live sequence, by image
// id) and the figures (`images_encoded_total`, `encode_ms`). Entry points (vision_pool.cpp):
// SendVisionAssignment, PumpVision, OnImageEncoded, OnVisionError, OnVisionWorkerLost,
// ImagesReadyForStep, ForgetImageJobs.
//
// The image path:
//   accepted --PumpVision--> kWaiting --encodeImage to the least busy vision worker--> kEncoding
//     --imageEncoded (the rows were handed to stage 0's image inbox)--> kReady
//     --the step holding the image's first row is sent, naming it (Forward.imageIds)--> kConsumed
//   A vision worker lost, or silent past kEncodeResend, puts its kEncoding images back to
//   kWaiting (another vision worker encodes them; an answer of an older epoch is ignored).
//
// Contract:
//   * A step that holds an image's first row is sent only once that image is kReady (the
//     scheduler skips the sequence until then): stage 0 never runs the vision tower in this
//     mode, and never waits long for rows (they were handed over before the answer came).
//   * Every image of a live sequence has exactly one job; a job outlives neither its sequence
//     (its rows at stage 0 are dropped by the release of the sequence) nor the plan (a new plan
//     starts stage 0 with an empty inbox: every job is made again, and a replayed sequence's
//     images are encoded again).
//   * Losing a vision worker loses no request: its images are encoded by the others; losing the
//     last one re-plans (vision on stage 0 when no separate plan fits the workers left).
//   * At most kEncodesPerWorker encodes wait on one vision worker and at most kImagesAhead
//     encoded images wait at stage 0 (or one prompt's images, when a prompt has more), so neither
//     a vision worker's queue nor stage 0's memory grows with the backlog.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "xcpipe/planner/cost_model.h"

namespace xcpipe::coordinator::detail {

using Clock = std::chrono::steady_clock;

// Encodes sent to one vision worker and not answered yet, at most.
constexpr int kEncodesPerWorker = 2;
// Encoded images waiting at stage 0 for their step, at most (bounds the inbox's memory); more
// when one prompt holds more images.
constexpr size_t kImagesAhead = 32;
// An encode not answered this long is sent again (to any vision worker); after kEncodeAttempts
// attempts the request fails with the reason.
constexpr std::chrono::milliseconds kEncodeResend{20000};
constexpr int kEncodeAttempts = 4;
// Encode times a vision worker's median (status) is taken over.
constexpr size_t kRecentEncodes = 64;

struct ImageJob {
  enum class State { kWaiting, kEncoding, kReady, kConsumed };
  uint64_t sequence = 0;
  size_t index = 0;  // which image of the sequence's prompt
  State state = State::kWaiting;
  std::string worker;        // kEncoding: the vision worker's peer
  Clock::time_point sent{};  // kEncoding: when the encode was sent
  int attempts = 0;
};

// A vision worker of the current plan.
struct VisionWorker {
  std::string peer;
  size_t first = 0, end = 0;       // the vision block's range
  uint64_t planned_bytes = 0;      // the plan's memory for it (weights, activations at the worst
                                   // tile grid, workspace)
  planner::StageBytes predicted;   // the same by category
  double predicted_encode_ms = 0;  // the plan's encode time per image (0: not predicted)
  bool ready = false;
  int encoding = 0;               // encodes sent and not answered
  uint64_t encoded = 0;           // images it encoded under this plan
  std::vector<double> recent_ms;  // encode times of its last kRecentEncodes images
  std::chrono::steady_clock::time_point last_load_news;
};

}  // namespace xcpipe::coordinator::detail
