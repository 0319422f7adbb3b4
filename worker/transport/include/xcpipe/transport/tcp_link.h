// The two ends of one TCP data-plane link (Boost.Asio sockets): TcpSenderLink connects to the
// next stage and writes frames; TcpReceiverLink listens for the previous stage and reads them.
// TcpDataPlane pairs them; NcclDataPlane uses them for its headers. Frame layout: frame.h; the
// receiver parses what it reads with a TcpFrameReader (tcp_frame_reader.h).
//
// I/O model: synchronous, non-blocking sockets with deadlines, on the caller's thread; no I/O
// thread. Each call does non-blocking reads/writes and waits in ppoll() for readiness, the
// deadline, or Close(). A frame goes out in one gather write (preamble, header, every tensor);
// tensor bytes come in by scatter reads straight into a pooled block (copied once, by the
// kernel) and are checksummed in 512 KiB pieces while still in cache. Why not an I/O thread:
// a hand-off is one large sequential transfer, and on 2-core hosts an extra thread plus queue
// hops cost throughput without buying overlap.
//
// Thread-safety: each link serialises its own calls (one mutex per link); Close() and stats
// may be called from any thread, and wake a blocked call (an eventfd is part of every wait).
// Ownership: a link owns its sockets; links are neither copyable nor movable. Messages are
// borrowed for the duration of Send; received tensors share buffers of the link's pool.
//
// Sender state machine:
//
//   [Disconnected] --Send()/Connect()--> [Connecting] --connected--> [Connected] --+
//        ^    ^                            |  refused/unreachable:     |   ^          | frame written:
//        |    +----deadline passed---------+  back off (10 ms doubling |   +----------+ stays Connected
//        |        (Unavailable)               to 500 ms), retry        |
//        +--- peer closed (seen before a send), write error, or a send that timed out
//             after writing part of a frame: connection dropped. A send that fails on a
//             dead connection reconnects and rewrites the whole frame within its deadline.
//   any state --Close()--> [Closed]: terminal, every call returns Cancelled.
//
// Receiver state machine:
//
//   Listen() --> [Listening] --accept--> [Connected: between frames] <--frame complete--+
//                   ^                          | bytes arrive                           |
//                   |                          v                                        |
//                   |                    [Connected: mid-frame]  preamble -> header -> payload
//                   |                          | EOF / garbage / limit / checksum / reset
//                   +------- connection dropped; Receive returns the error ------------+
//   A newer connection that starts sending replaces the current one (the previous stage
//   restarted); a frame cut short by that is reported as Unavailable. A receive that times
//   out mid-frame keeps its progress: the next Receive resumes the same frame.
//   any state --Close()--> [Closed].
//
// Delivery: a frame is delivered whole and checked, or not at all. Send returning OK means the
// kernel took every byte; a frame taken just before the receiver died is lost without an
// error here (TCP cannot tell), so exactly-once is the coordinator's replay, not this layer's.
//
// Failure: nothing throws; errors are Status values (see data_plane.h for the codes). A frame
// that fails a check is refused (InvalidArgument naming the check), its connection dropped,
// and the link keeps listening: one bad peer never takes the process down.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "xcpipe/base/status.h"
#include "xcpipe/transport/buffer_pool.h"
#include "xcpipe/transport/data_plane.h"
#include "xcpipe/transport/frame.h"
#include "xcpipe/transport/stage_message.h"
#include "xcpipe/transport/tcp_frame_reader.h"

namespace xcpipe::transport {

// "host:port" where host is an IPv4/IPv6 literal or a name. IPv6 literals are written in
// brackets: "[::1]:7000".
struct TcpEndpoint {
  std::string host;
  uint16_t port = 0;

  static StatusOr<TcpEndpoint> Parse(std::string_view text);
  std::string ToString() const;
  friend bool operator==(const TcpEndpoint&, const TcpEndpoint&) = default;
};

// Tunables of a link, named and read in one place.
struct TcpLinkOptions {
  MessageLimits limits;
  bool checksum = true;          // sender: CRC-32C of every tensor (header field checksumKind)
  bool require_checksum = true;  // receiver: refuse in-band frames that carry no checksum
  // SO_SNDBUF / SO_RCVBUF. Large buffers mean fewer wake-ups per hand-off; 0 keeps the
  // kernel's autotuning. The kernel caps it at net.core.[rw]mem_max (and doubles it).
  int socket_buffer_bytes = 4 << 20;
  std::chrono::milliseconds connect_backoff_initial{10};
  std::chrono::milliseconds connect_backoff_max{500};
  // Receive-buffer pool: blocks kept for reuse once returned (see buffer_pool.h).
  size_t receive_pool_max_cached_bytes = size_t{1} << 30;
  // A listener refuses 0.0.0.0 / :: unless this is set: bind where the plan says.
  bool allow_wildcard_listen = false;
};

// Counters of one link; updated with relaxed atomics, read any time.
struct LinkCounters {
  std::atomic<uint64_t> bytes{0};
  std::atomic<uint64_t> messages{0};
  std::atomic<uint64_t> refused{0};
  std::atomic<uint64_t> opened{0};
  std::atomic<uint64_t> dropped{0};
};

class WakeSignal;  // eventfd that wakes blocked waits on Close()

class TcpSenderLink {
 public:
  enum class State : uint8_t { kDisconnected, kConnecting, kConnected, kClosed };

  // Resolves nothing yet: the peer may come up later. InvalidArgument on an empty host or port 0.
  static StatusOr<std::unique_ptr<TcpSenderLink>> Create(TcpEndpoint peer, TcpLinkOptions options);
  ~TcpSenderLink();
  TcpSenderLink(const TcpSenderLink&) = delete;
  TcpSenderLink& operator=(const TcpSenderLink&) = delete;

  // Connects now (retrying with back-off until the deadline) unless already connected.
  Status Connect(Deadline deadline);

  // Writes one frame. kInBand: host tensors only, checksummed when options.checksum.
  // kOutOfBand: only the header (descriptors with checksum 0) is written.
  Status Send(const StageMessage& message, Deadline deadline, PayloadMode mode = PayloadMode::kInBand);

  void Close();
  State state() const { return state_.load(std::memory_order_relaxed); }
  const TcpEndpoint& peer() const { return peer_; }
  const LinkCounters& counters() const { return counters_; }

 private:
  struct Impl;
  TcpSenderLink(TcpEndpoint peer, TcpLinkOptions options);
  Status SendLocked(const StageMessage& message, Deadline deadline, PayloadMode mode);
  Status ConnectLocked(Deadline deadline);

  const TcpEndpoint peer_;
  const TcpLinkOptions options_;
  std::unique_ptr<Impl> impl_;
  std::unique_ptr<WakeSignal> wake_;
  std::mutex mutex_;  // serialises Connect/Send/Close's socket teardown
  std::atomic<State> state_{State::kDisconnected};
  std::atomic<bool> closed_{false};
  LinkCounters counters_;
};

class TcpReceiverLink {
 public:
  enum class State : uint8_t { kListening, kConnected, kMidFrame, kClosed };

  // Binds and listens on `local` (port 0 picks a free port; see local_endpoint()). The host
  // must be explicit: a wildcard address is refused unless options.allow_wildcard_listen.
  static StatusOr<std::unique_ptr<TcpReceiverLink>> Listen(TcpEndpoint local, TcpLinkOptions options);
  ~TcpReceiverLink();
  TcpReceiverLink(const TcpReceiverLink&) = delete;
  TcpReceiverLink& operator=(const TcpReceiverLink&) = delete;

  // Where the listener is bound (the actual port when 0 was asked for).
  const TcpEndpoint& local_endpoint() const { return local_; }

  // Reads the next frame (ReceivedFrame: tcp_frame_reader.h). `expect` is the payload mode this
  // link serves; a frame of the other mode is refused.
  StatusOr<ReceivedFrame> Receive(Deadline deadline, PayloadMode expect = PayloadMode::kInBand);

  // Pre-faults `count` receive buffers of `bytes` (the largest message the plan allows), so
  // the first hand-offs do not pay for fresh memory.
  Status ReserveReceiveBuffers(size_t bytes, size_t count);

  void Close();
  State state() const { return state_.load(std::memory_order_relaxed); }
  const LinkCounters& counters() const { return counters_; }
  const HostBufferPool& pool() const { return *pool_; }

 private:
  struct Impl;
  TcpReceiverLink(TcpLinkOptions options);
  StatusOr<ReceivedFrame> ReceiveLocked(Deadline deadline, PayloadMode expect);

  TcpEndpoint local_;
  const TcpLinkOptions options_;
  std::unique_ptr<HostBufferPool> pool_;
  std::unique_ptr<Impl> impl_;
  std::unique_ptr<WakeSignal> wake_;
  std::mutex mutex_;
  std::atomic<State> state_{State::kListening};
  std::atomic<bool> closed_{false};
  LinkCounters counters_;
};

}  // namespace xcpipe::transport
