// TcpDataPlane: the DataPlane over TCP (Boost.Asio): one TcpReceiverLink listening for the
// previous stage and one TcpSenderLink connecting to the next (either may be absent: the first
// stage has no previous, the last no next). Frames: frame.h; links and their state machines,
// I/O model and failure behaviour: tcp_link.h.
//
// Used by CPU workers and by every CI test; also the yardstick in bench/dataplane_bench.
//
// Thread-safety: as DataPlane (Send and Receive may run concurrently on two threads; Close and
// stats from any thread). Ownership: owns both links, except a shared receiver (see
// TcpDataPlaneOptions::shared_receiver), which it borrows; not copyable or movable.
//
//   auto plane = TcpDataPlane::Create({.listen = TcpEndpoint{"10.0.0.2", 7001},
//                                      .next = TcpEndpoint{"10.0.0.3", 7001}});
//   auto in = (*plane)->Receive(DeadlineAfter(5s));       // from stage k-1
//   ... run the stage ...
//   (*plane)->Send(out, DeadlineAfter(5s));               // to stage k+1
#pragma once

#include <atomic>
#include <memory>
#include <optional>

#include "xcpipe/transport/data_plane.h"
#include "xcpipe/transport/tcp_link.h"

namespace xcpipe::transport {

struct TcpDataPlaneOptions {
  std::optional<TcpEndpoint> listen;  // where the previous stage connects; none on stage 0
  std::optional<TcpEndpoint> next;    // the next stage's listen address; none on the last stage
  TcpLinkOptions link;
  // A listener the caller keeps (instead of `listen`): a worker announces one data address in
  // its hello and keeps it across epochs, while each assignment gets a new plane. Borrowed: it
  // must outlive the plane, and Close() leaves it open (the caller closes it), so a Receive
  // already waiting on it returns by its deadline rather than at once; later calls say Cancelled.
  TcpReceiverLink* shared_receiver = nullptr;
};

class TcpDataPlane final : public DataPlane {
 public:
  // Binds the listener now (so its port can be reported over the control plane); connects to
  // the next stage lazily on the first Send, or now with Connect().
  static StatusOr<std::unique_ptr<TcpDataPlane>> Create(TcpDataPlaneOptions options);
  ~TcpDataPlane() override;

  std::string_view kind() const override { return "tcp"; }
  Status Send(const StageMessage& message, Deadline deadline) override;
  StatusOr<StageMessage> Receive(Deadline deadline) override;
  void Close() override;
  DataPlaneStats stats() const override;

  // Connects to the next stage now. FailedPrecondition when this stage has no next link.
  Status Connect(Deadline deadline);
  // The bound listen address (with the real port), or nullopt without a previous link.
  std::optional<TcpEndpoint> listen_endpoint() const;
  // See TcpReceiverLink::ReserveReceiveBuffers. FailedPrecondition without a previous link.
  Status ReserveReceiveBuffers(size_t bytes, size_t count);

  TcpSenderLink* sender() { return sender_.get(); }
  TcpReceiverLink* receiver() { return receiver_; }

 private:
  TcpDataPlane() = default;
  std::unique_ptr<TcpReceiverLink> owned_receiver_;  // from options.listen
  TcpReceiverLink* receiver_ = nullptr;              // owned_receiver_ or options.shared_receiver
  std::unique_ptr<TcpSenderLink> sender_;
  // Set by Close(): Receive on a shared receiver, which Close leaves open, says Cancelled too.
  std::atomic<bool> closed_{false};
};

}  // namespace xcpipe::transport
