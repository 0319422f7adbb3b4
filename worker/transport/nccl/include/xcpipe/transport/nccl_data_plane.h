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
#pragma once

#ifndef XCPIPE_HAVE_CUDA
#error "nccl_data_plane.h needs a CUDA build (XCPIPE_HAVE_CUDA); use TcpDataPlane otherwise"
#endif

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
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

  // Posts every send to and receive from `peer` in one NCCL group and waits until the device
  // has finished them. Buffers must stay valid until it returns.
  Status Exchange(int peer, std::span<const DeviceBytes> sends, std::span<const MutableDeviceBytes> receives,
                  Deadline deadline);

  // Aborts the communicator (idempotent). Later calls return Aborted naming `reason`.
  void Abort(const std::string& reason);

  State state() const { return state_.load(); }
  int device() const { return options_.device; }
  // Opaque CUDA stream the link's operations run on (cudaStream_t), for staging copies.
  void* stream() const;

 private:
  struct Handles;
  explicit NcclLink(const NcclLinkOptions& options);
  Status PollUntilDone(Deadline deadline, bool record_event, const char* what);
  void Arm(Deadline deadline);
  void Disarm();
  void WatchdogLoop();

  const NcclLinkOptions options_;
  std::unique_ptr<Handles> handles_;  // communicator, stream, event; guarded by comm_mutex_
  std::mutex comm_mutex_;
  std::atomic<State> state_{State::kInitializing};
  std::string abort_reason_;  // guarded by comm_mutex_

  std::mutex watchdog_mutex_;
  std::condition_variable watchdog_cv_;
  std::optional<Deadline> armed_;  // guarded by watchdog_mutex_
  bool stopping_ = false;          // guarded by watchdog_mutex_
  std::thread watchdog_;
};

// One side of a stage link as the coordinator describes it.
struct NcclPeerLink {
  cuda::NcclUniqueIdBytes unique_id{};
  // previous link: where this stage listens for headers; next link: where the next stage does.
  TcpEndpoint header_endpoint;
};

struct NcclDataPlaneOptions {
  int device = 0;
  std::optional<NcclPeerLink> previous;  // this stage is rank 1 of that communicator
  std::optional<NcclPeerLink> next;      // this stage is rank 0 of that communicator
  TcpLinkOptions header_link;            // limits, socket options (checksums do not apply)
  size_t device_pool_max_cached_bytes = size_t{4} << 30;
};

class DeviceBufferPool;

class NcclDataPlane final : public DataPlane {
 public:
  // Binds the header listener, starts both communicators and waits (until `init_deadline`)
  // for both neighbours to join. Both neighbours must call Create concurrently.
  static StatusOr<std::unique_ptr<NcclDataPlane>> Create(NcclDataPlaneOptions options, Deadline init_deadline);
  ~NcclDataPlane() override;

  std::string_view kind() const override { return "nccl"; }
  Status Send(const StageMessage& message, Deadline deadline) override;
  StatusOr<StageMessage> Receive(Deadline deadline) override;
  void Close() override;
  DataPlaneStats stats() const override;

  std::optional<TcpEndpoint> header_listen_endpoint() const;

 private:
  NcclDataPlane() = default;
  NcclDataPlaneOptions options_;
  std::unique_ptr<TcpReceiverLink> header_in_;
  std::unique_ptr<TcpSenderLink> header_out_;
  std::unique_ptr<NcclLink> previous_;
  std::unique_ptr<NcclLink> next_;
  std::unique_ptr<DeviceBufferPool> pool_;
  std::atomic<uint64_t> payload_sent_{0};
  std::atomic<uint64_t> payload_received_{0};
  std::atomic<uint64_t> messages_sent_{0};  // header and bytes both delivered
  std::atomic<uint64_t> messages_received_{0};
  std::atomic<bool> closed_{false};
};

}  // namespace xcpipe::transport
