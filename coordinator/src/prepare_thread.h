// PrepareThread: where the coordinator prepares submits that carry images, off its actor thread.
// Coordinator-private. Architecture: docs/architecture.md, "The request lifecycle".
//
// Why: preparing an image request means decoding the image, resizing and normalizing it (for
// the HD versions, into up to 25 tiles) and tokenizing the prompt: measured on a 2-core host
// with the 4KHD preprocessing, 70 ms for a 490x490 PNG and 140-190 ms for a 3840x2160 one. On
// the actor thread that time stops every decoding request's next step from being scheduled,
// so one image stretched the gap between other requests' tokens by several decode steps. Text
// prompts (under 1 ms) and pretokenized submits stay on the actor thread.
//
// Contract:
//   * Post(job) queues the job; the thread runs RequestPreparer::Prepare on it (the preparer is
//     immutable and safe to share) and puts it, with the answer, on the done list. Jobs are
//     prepared one at a time, in the order posted.
//   * TakeDone() returns the finished jobs in the order posted and forgets them; the actor
//     thread calls it every turn and carries on with each as OnSubmit would have.
//   * pending() counts the jobs posted and not yet taken (the queue limits count them).
//   * The destructor stops after the job in progress; jobs not started are dropped (the
//     coordinator is going away; their clients time out and submit elsewhere).
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "xcpipe/coordinator/edge.h"

namespace xcpipe::coordinator::detail {

// What OnSubmit read from a submit that carries images (the message is gone by the time the
// answer is ready), and the answer.
struct SubmitIntake {
  std::string peer;
  uint64_t client_id = 0;
  Sampling sampling;
  int64_t max_new = 0;
  bool want_logits = false;
  std::chrono::milliseconds deadline{0};  // as asked (0: the coordinator's default)
  std::chrono::steady_clock::time_point received{};
  std::string prompt_json;
  std::vector<std::string> images;  // emptied once prepared
  size_t image_count = 0;
  StatusOr<std::vector<PreparedPrompt>> prepared = InternalError("not prepared yet");
};

class PrepareThread {
 public:
  explicit PrepareThread(const RequestPreparer* edge);
  ~PrepareThread();
  PrepareThread(const PrepareThread&) = delete;
  PrepareThread& operator=(const PrepareThread&) = delete;

  void Post(SubmitIntake job);
  std::vector<SubmitIntake> TakeDone();
  size_t pending() const;

 private:
  void Loop();

  const RequestPreparer* edge_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<SubmitIntake> todo_;
  std::vector<SubmitIntake> done_;
  size_t in_progress_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace xcpipe::coordinator::detail
