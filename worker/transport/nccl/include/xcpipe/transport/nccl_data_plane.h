// NcclDataPlane: the DataPlane between two CUDA stages. The header of each hand-off travels
// over a TCP link (tcp_link.h, flag "payload out of band"); the tensor bytes go device to
// device with ncclSend/ncclRecv on a 2-rank communicator per link. The coordinator creates one
// ncclUniqueId per stage link and hands it to both ends over the control plane.
//
// CUDA builds only (XCPIPE_HAVE_CUDA); compiled from worker/transport/nccl/.
//
// NcclLink (one communicator with one neighbour):
//
//   Start() --> [Initializing] --ncclCommGetAsyncError == success--> [Ready] <--Exchange ok--+
//                   |  deadline passed or async error                   |                  |
//                   v                                                   +------------------+
//               [Aborted] <--- deadline passed (the watchdog thread calls ncclCommAbort) ---
//                              or an NCCL/CUDA error during Exchange
//   [Aborted] is terminal: the peer sees its own operation fail or time out; both ends need a
//   new unique id (the coordinator re-plans: every call returns Aborted).
//
// Communicators are non-blocking (ncclCommInitRankConfig with blocking = 0): no NCCL call
// blocks the caller; completion is polled (ncclCommGetAsyncError, then a CUDA event). A
// watchdog thread per link aborts the communicator when an armed operation passes its
// deadline, even if the caller's thread were stuck; every NCCL call on the communicator and the
// abort are serialised by one mutex, so the abort never races a call.
//
// Thread-safety: as DataPlane. Ownership: a link owns its communicator, CUDA stream and event
// (unique_ptr with deleters) and its watchdog thread; the plane owns its links and a pool of
// device receive buffers. Received tensors live in device memory (location kCudaDevice) and
// keep their pooled buffer alive. Tensors to send may be on the device (sent in place; the
// caller has finished writing them, i.e. synchronised its compute stream) or on the host
// (copied to a device staging buffer first). No checksums: NCCL transports are reliable and
// the bytes never pass through the host.
//
// Failure: every call has a deadline; NCCL/CUDA errors become Aborted (link lost) or
// Unavailable (no device), TCP header errors are as in tcp_link.h. Nothing throws.
//
// NcclDataPlane (one stage's links; what a worker holds per assignment):
//
//   Start() --> [Joining] --PollReady() true: both communicators joined and warmed up--> [Ready]
//                  |  an NCCL error, or Abort() (the caller's join deadline passed)          |
//                  v                                                                        |
//               [Aborted] <--------------- Abort(), or an NCCL error in Send/Receive --------+
//   Send/Receive belong to [Ready]. Create() = Start() + WaitReady(): the blocking form.
//
// In a worker (worker/src/worker_actor.cpp) the headers share the worker's one TCP listener,
// whose address it announced in its hello and keeps across epochs (shared_header_in): the
// header path of stage k -> k+1 is the same listener and sender pair the TCP data plane uses,
// in PayloadMode::kOutOfBand. Each new assignment builds a new plane with fresh unique ids.
#pragma once

#ifndef XCPIPE_HAVE_CUDA
#error "nccl_data_plane.h needs a CUDA build (XCPIPE_HAVE_CUDA); use TcpDataPlane otherwise"
#endif

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>

#include "xcpipe/cuda/nccl.h"
#include "xcpipe/transport/data_plane.h"
#include "xcpipe/transport/tcp_link.h"

namespace xcpipe::transport {

struct NcclLinkOptions {
  cuda::NcclUniqueIdBytes unique_id{};
  int nranks = 2;  // 2 for a stage link; 1 makes a self-link (tests on one GPU)
  int rank = 0;    // 0 on the sending stage (k), 1 on the receiving stage (k+1)
  int device = 0;  // CUDA ordinal this process drives
};

struct DeviceBytes {
  const void* data = nullptr;
  size_t bytes = 0;
};
struct MutableDeviceBytes {
  void* data = nullptr;
  size_t bytes = 0;
};

class NcclLink {
 public:
  enum class State : uint8_t { kInitializing, kReady, kAborted };

  // Begins the (non-blocking) communicator initialisation. Unavailable without a device.
  static StatusOr<std::unique_ptr<NcclLink>> Start(const NcclLinkOptions& options);
  ~NcclLink();
  NcclLink(const NcclLink&) = delete;
  NcclLink& operator=(const NcclLink&) = delete;

  // Waits until both ranks have joined. DeadlineExceeded (and the link aborted) when the peer
  // does not join in time.
  Status WaitReady(Deadline deadline);

  // One look at the initialisation that never blocks and arms no watchdog (the caller keeps its
  // own deadline and calls Abort when it passes): true once both ranks have joined (state
  // kReady). Aborted when NCCL reported an error (the link is then aborted).
  StatusOr<bool> PollReady();

  // Posts every send to and receive from `peer` in one NCCL group and waits until the device
  // has finished them. Buffers must stay valid until it returns.
  Status Exchange(int peer, std::span<const DeviceBytes> sends, std::span<const MutableDeviceBytes> receives,
                  Deadline deadline);

  // The non-blocking halves of Exchange (no watchdog: the caller bounds the wait and aborts).
  // Post needs state kReady and at most one group in flight; the buffers must stay valid until
  // PollPosted returns true or an error, or the link is aborted.
  Status Post(int peer, std::span<const DeviceBytes> sends, std::span<const MutableDeviceBytes> receives);
  StatusOr<bool> PollPosted();

  // Aborts the communicator (idempotent). Later calls return Aborted naming `reason`.
  void Abort(const std::string& reason);

  State state() const { return state_.load(); }
  int device() const { return options_.device; }
  // Opaque CUDA stream the link's operations run on (cudaStream_t), for staging copies.
  void* stream() const;

 private:
  struct Handles;
  explicit NcclLink(const NcclLinkOptions& options);
  // One look at the communicator's state and, with `record_event`, at the event recorded once
  // the posted group was issued: true when done. An NCCL or CUDA error aborts the link.
  StatusOr<bool> PollOnceLocked(bool record_event, const char* what);
  Status PollUntilDone(Deadline deadline, bool record_event, const char* what);
  void Arm(Deadline deadline);
  void Disarm();
  void WatchdogLoop();

  const NcclLinkOptions options_;
  std::unique_ptr<Handles> handles_;  // communicator, stream, event; guarded by comm_mutex_
  std::mutex comm_mutex_;
  std::atomic<State> state_{State::kInitializing};
  std::string abort_reason_;  // guarded by comm_mutex_
  bool event_recorded_ = false;  // guarded by comm_mutex_: the posted group's completion event is recorded

  std::mutex watchdog_mutex_;
  std::condition_variable watchdog_cv_;
  std::optional<Deadline> armed_;  // guarded by watchdog_mutex_
  bool stopping_ = false;          // guarded by watchdog_mutex_
  std::thread watchdog_;
};

// One side of a stage link as the coordinator describes it.
struct NcclPeerLink {
  cuda::NcclUniqueIdBytes unique_id{};
  // previous link: where this stage listens for headers (ignored with shared_header_in);
  // next link: where the next stage does.
  TcpEndpoint header_endpoint;
};

struct NcclDataPlaneOptions {
  int device = 0;
  std::optional<NcclPeerLink> previous;  // this stage is rank 1 of that communicator
  std::optional<NcclPeerLink> next;      // this stage is rank 0 of that communicator
  TcpLinkOptions header_link;            // limits, socket options (checksums do not apply)
  size_t device_pool_max_cached_bytes = size_t{4} << 30;
  // Headers from the previous stage are read from this listener instead of one the plane binds
  // (previous->header_endpoint is then ignored): a worker keeps one data address across epochs.
  // Borrowed: it must outlive the plane; Close() leaves it open.
  TcpReceiverLink* shared_header_in = nullptr;
  // The epoch these communicators belong to (0: not checked). Receive refuses a header of
  // another epoch without posting a receive: it was sent for another communicator (a previous
  // plan's sender), and matching it here would put this link's byte stream out of step.
  uint64_t epoch = 0;
  // Once a header has arrived, its bytes get at least this long even when the Receive deadline
  // is sooner: the sender is already in ncclSend, and a deadline sized for polling (a receiver
  // thread that wakes every 200 ms) must not make the watchdog abort a transfer under way.
  std::chrono::milliseconds payload_timeout{5000};
};

class DeviceBufferPool;

class NcclDataPlane final : public DataPlane {
 public:
  // Binds (or borrows) the header links and starts both communicators without waiting: both
  // neighbours must start theirs at about the same time, then PollReady() or WaitReady()
  // finishes the join. Unavailable without a device; InvalidArgument without any link.
  static StatusOr<std::unique_ptr<NcclDataPlane>> Start(NcclDataPlaneOptions options);
  // Start() and WaitReady(init_deadline). Both neighbours must call Create concurrently.
  static StatusOr<std::unique_ptr<NcclDataPlane>> Create(NcclDataPlaneOptions options, Deadline init_deadline);
  ~NcclDataPlane() override;

  // One step of the join that never blocks: true once both communicators have joined and each
  // link has carried a 1-byte warm-up exchange (NCCL sets up point-to-point connections on
  // first use; doing it here keeps that cost out of the first hand-off's short deadline). An
  // error (Aborted: an NCCL error) means the plane is dead. Call from one thread, before the
  // plane is used for Send/Receive.
  StatusOr<bool> PollReady();
  // PollReady until true or `deadline`; at the deadline aborts both communicators and returns
  // DeadlineExceeded naming the links still joining.
  Status WaitReady(Deadline deadline);
  bool ready() const { return ready_.load(); }
  // Whether each link has joined and warmed up (true for a link this stage does not have), and
  // the links still joining in words ("the link from the previous stage", "the link to the next
  // stage", or both joined by " and "; empty once ready). From the thread that polls.
  bool previous_joined() const;
  bool next_joined() const;
  std::string JoiningLinks() const;
  // Aborts both communicators (idempotent, any thread; ncclCommAbort may take a while, so a
  // caller with a heartbeat to keep runs it on another thread). A Send or Receive in progress
  // returns Aborted promptly; so does every later call.
  void Abort(const std::string& reason);

  std::string_view kind() const override { return "nccl"; }
  Status Send(const StageMessage& message, Deadline deadline) override;
  StatusOr<StageMessage> Receive(Deadline deadline) override;
  void Close() override;
  DataPlaneStats stats() const override;

  std::optional<TcpEndpoint> header_listen_endpoint() const;

 private:
  struct Warmup;
  NcclDataPlane();
  TcpReceiverLink* header_in() const { return header_in_ ? header_in_.get() : options_.shared_header_in; }
  NcclDataPlaneOptions options_;
  std::unique_ptr<TcpReceiverLink> header_in_;  // null with options_.shared_header_in
  std::unique_ptr<TcpSenderLink> header_out_;
  std::unique_ptr<NcclLink> previous_;
  std::unique_ptr<NcclLink> next_;
  std::unique_ptr<DeviceBufferPool> pool_;
  std::unique_ptr<Warmup> previous_warmup_, next_warmup_;  // used by PollReady only
  std::atomic<bool> ready_{false};
  std::atomic<uint64_t> payload_sent_{0};
  std::atomic<uint64_t> payload_received_{0};
  std::atomic<uint64_t> messages_sent_{0};  // header and bytes both delivered
  std::atomic<uint64_t> messages_received_{0};
  std::atomic<bool> closed_{false};
};

// Replaces every device tensor of `message` by a host copy (cudaMemcpy from its device), for
// a stage that computes on the host, and for the small side tensors (mask, timings, flags) a
// stage on the device reads on the host; the tensor named `keep_on_device` (a CUDA stage's
// "hidden") stays where NCCL put it. The device buffers of copied tensors go back to their pool
// when the message's old frames are dropped here.
Status CopyTensorsToHost(StageMessage& message, std::string_view keep_on_device = {});

}  // namespace xcpipe::transport
