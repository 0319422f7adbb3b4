// DataPlane: how a pipeline stage hands activations to the next stage and takes them from the
// previous one. A stage never knows which implementation it has:
//   * TcpDataPlane (tcp_data_plane.h): Boost.Asio sockets; CPU workers and every CI test.
//   * NcclDataPlane (nccl_data_plane.h, CUDA builds only): the header over TCP, the tensor
//     bytes device to device with ncclSend/ncclRecv.
//
// Stage k holds one DataPlane with up to two links: "previous" (messages come in from stage
// k-1; the first stage has none) and "next" (messages go out to stage k+1; the last stage has
// none). Messages on one link arrive in the order they were sent, each exactly as sent or not
// at all: a message whose bytes do not check out is refused with a Status and never handed
// to the stage.
//
// Thread-safety: Send may run on one thread while Receive runs on another (they use separate
// links); concurrent calls of the same direction are serialised. Close() and stats() may be
// called from any thread at any time.
//
// Failure: every call takes a deadline and returns by it (DeadlineExceeded). Codes follow the
// project's policy: Unavailable (peer not reachable: retry), InvalidArgument (the peer sent
// bytes that do not check out, or the caller's message breaks the limits), DeadlineExceeded,
// Aborted (the link is broken for good, e.g. an aborted NCCL communicator: re-plan),
// Cancelled (after Close), FailedPrecondition (no such link on this stage). Nothing throws.
#pragma once

#include <chrono>
#include <cstdint>
#include <string_view>

#include "xcpipe/base/status.h"
#include "xcpipe/transport/stage_message.h"

namespace xcpipe::transport {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

inline Deadline DeadlineAfter(std::chrono::milliseconds timeout) { return Clock::now() + timeout; }

struct DataPlaneStats {
  uint64_t bytes_sent = 0;           // every byte written: preambles, headers, tensor bytes
  uint64_t bytes_received = 0;       // every byte read, including frames later refused
  uint64_t messages_sent = 0;        // Send() calls that returned OK
  uint64_t messages_received = 0;    // Receive() calls that returned a message
  uint64_t messages_refused = 0;     // frames refused (malformed, checksum, limits)
  uint64_t connections_opened = 0;   // outgoing connects + incoming accepts
  uint64_t connections_dropped = 0;  // connections closed because of an error or a timeout
};

class DataPlane {
 public:
  virtual ~DataPlane() = default;
  DataPlane() = default;
  DataPlane(const DataPlane&) = delete;
  DataPlane& operator=(const DataPlane&) = delete;

  // "tcp" or "nccl".
  virtual std::string_view kind() const = 0;

  // Sends `message` to the next stage. Returns once every byte has been handed to the
  // transport (TCP: the kernel's socket buffer; NCCL: the operation completed on the device).
  // The message's bytes are not referenced after return.
  virtual Status Send(const StageMessage& message, Deadline deadline) = 0;

  // Takes the next message from the previous stage, checked against the limits and checksums.
  // The returned tensors share pooled buffers: drop them to let the memory be reused.
  virtual StatusOr<StageMessage> Receive(Deadline deadline) = 0;

  // Closes both links. Wakes any Send/Receive blocked in another thread; they, and every later
  // call, return Cancelled. Idempotent.
  virtual void Close() = 0;

  virtual DataPlaneStats stats() const = 0;
};

}  // namespace xcpipe::transport
