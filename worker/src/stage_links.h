// StageLinks: a worker's data plane, the links to the previous and the next pipeline stage.
//
// What it owns:
//   * the TCP listener announced in hello, for the life of the process: TCP frames, or NCCL
//     headers, from the previous stage arrive there whatever the assignment;
//   * the DataPlane of the current assignment (TCP: connected to the next stage after the load;
//     NCCL: communicators started before the load and joined on NCCL's own threads), and while
//     NCCL links join, those links;
//   * two threads: the receiver, which takes complete, validated messages from the plane,
//     copies NCCL-delivered tensors where the stage computes, queues them and calls
//     `on_received`; and the reaper, which aborts and releases a retired plane off the caller's
//     thread (ncclCommAbort may take longer than a heartbeat interval).
//
// Time: join deadlines and progress are read from the Clock given; socket waits (connect, send,
// receive deadlines) run in real time.
//
// Threads and locks: every method is called from the worker actor's thread. plane_mutex_ guards
// the published plane and which plane the receiver is in (the actor writes `plane_` only under
// it and reads it without); queue_mutex_ guards the received messages.
//
// What it never does: it never touches the control plane, the stage model or the actor's
// state. Errors come back as Status values (naming the stage and the link) for the caller to
// report; `on_received` is the one call it makes out, from the receiver thread.
#pragma once

#include <ATen/core/Tensor.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "xcpipe/base/clock.h"
#include "xcpipe/base/status.h"
#include "xcpipe/transport/data_plane.h"
#include "xcpipe/transport/stage_message.h"
#include "xcpipe/transport/tcp_link.h"

namespace xcpipe::transport {
class NcclDataPlane;
}

namespace xcpipe::worker {

// "cuda:N" -> N; nullopt for any other device ("cpu").
std::optional<int> CudaOrdinal(const std::string& device);

// The data-plane part of an assignment (AssignStage), as values.
struct LinkAssignment {
  uint64_t epoch = 0;
  uint32_t stage_index = 0, stage_count = 0;
  std::string data_plane;    // "tcp", "nccl"; empty: "tcp" (older coordinators)
  std::string next_address;  // the next stage's data address ("host:port"); empty on the last stage
  std::vector<uint8_t> previous_nccl_id, next_nccl_id;  // ncclUniqueIds of the NCCL links
};

// One step's output for the next stage.
struct Activations {
  uint64_t epoch = 0, micro_batch = 0, step = 0;
  std::vector<transport::Segment> segments;
  at::Tensor hidden;   // [N, H] as the stage computed it (on its device or the host)
  at::Tensor im_mask;  // [N] bool
  std::vector<int64_t> stage_micros;
  bool want_logits = false;
  // Beam groups (PendingStep): sent as side tensors only when not empty.
  std::vector<int64_t> beam_parents, beam_tokens;
  std::vector<float> beam_scores;
};

// Where joining NCCL links stand (see PollJoin).
struct JoinPoll {
  enum class Kind {
    kNone,      // no links joining
    kWaiting,   // still joining, nothing to say
    kProgress,  // still joining; time to tell the coordinator the assignment is being worked on
    kJoined,    // joined: the plane is published, the stage is ready
    kFailed,    // failed or timed out: `failure` says which link; the caller retires the plane
  };
  Kind kind = Kind::kNone;
  Status failure;
};

class StageLinks {
 public:
  // `device`: where the stage computes ("cpu", "cuda:N"): NCCL-delivered hidden states stay on
  // a CUDA device, everything else is copied to the host. `clock` outlives the links.
  StageLinks(std::string device, Clock& clock);
  ~StageLinks();  // Stop()
  StageLinks(const StageLinks&) = delete;
  StageLinks& operator=(const StageLinks&) = delete;

  // Binds the listener (port 0: any free port).
  Status Listen(const transport::TcpEndpoint& local);
  const transport::TcpEndpoint& local_endpoint() const { return receiver_->local_endpoint(); }
  // Starts the receiver thread; `on_received` is called on it after each message is queued.
  void StartReceiving(std::function<void()> on_received);
  // The messages received since the last call, oldest first.
  std::deque<transport::StageMessage> TakeReceived();
  size_t received_count();

  // The part of an assignment that does not depend on the weights: retires the previous plane,
  // checks the data plane asked for and, for NCCL, starts the communicators (before the load).
  Status Start(const LinkAssignment& assignment);
  // After the load: TCP connects to the next stage now and publishes the plane; NCCL links go
  // on joining (links_pending(); see PollJoin).
  Status Finish();
  // Loaded, waiting for its NCCL links before the stage is ready.
  bool links_pending() const { return links_pending_; }
  // While the weights load: lets joining links post their warm-up as soon as they can, so a
  // neighbour that finished loading first is not kept waiting (failures show in PollJoin).
  void AdvanceJoin();
  // Advances joining NCCL links; never blocks.
  JoinPoll PollJoin();
  // Takes the current plane (and links still joining) out of service. `next_is_nccl`: the plane
  // that follows reads headers in the other mode or of another epoch.
  void Retire(bool next_is_nccl = false);
  // Stops the receiver thread and retires the plane (process exit). Idempotent.
  void Stop();

  // The data plane of the assignment: "tcp" or "nccl".
  const std::string& kind() const { return data_plane_; }
  // Bytes sent over every plane of this process.
  uint64_t bytes_sent() const;
  // Hands a step's output to the next stage (bounded wait: kSendDeadline).
  Status SendActivations(const Activations& activations);

 private:
  bool is_last() const { return stage_index_ + 1 == stage_count_; }
  void Publish(std::shared_ptr<transport::DataPlane> ready);
  void ReceiverLoop();

  const std::string device_;
  Clock& clock_;
  std::unique_ptr<transport::TcpReceiverLink> receiver_;
  // The data plane of the current assignment once usable (TCP: connected; NCCL: joined); null
  // before that, between assignments and for a single-stage pipeline. The actor sends through
  // it; the receiver thread takes a copy for each Receive and says which plane it is in, so a
  // new assignment can wait until it has left the old one. Written by the actor only, under
  // plane_mutex_ (the actor reads it without the lock).
  std::mutex plane_mutex_;
  std::condition_variable plane_cv_;
  std::shared_ptr<transport::DataPlane> plane_;
  const transport::DataPlane* receiving_on_ = nullptr;  // guarded by plane_mutex_
  std::thread plane_reaper_;                            // aborts and releases a retired plane (see Retire)
#ifdef XCPIPE_HAVE_CUDA
  // NCCL links of the current assignment while they join (polled by the actor's loop).
  std::shared_ptr<transport::NcclDataPlane> joining_;
  Clock::time_point join_deadline_, next_join_progress_;
#endif
  bool links_pending_ = false;
  std::thread receiver_thread_;
  std::atomic<bool> stop_{false};
  std::function<void()> on_received_;
  std::mutex queue_mutex_;
  std::deque<transport::StageMessage> queue_;
  uint64_t bytes_sent_before_ = 0;  // by the planes retired so far

  // The assignment.
  std::string data_plane_ = "tcp";
  uint64_t epoch_ = 0;
  uint32_t stage_index_ = 0, stage_count_ = 0;
  std::string next_address_;
};

}  // namespace xcpipe::worker
