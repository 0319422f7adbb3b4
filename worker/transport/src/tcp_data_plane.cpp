#include "xcpipe/transport/tcp_data_plane.h"

namespace xcpipe::transport {

StatusOr<std::unique_ptr<TcpDataPlane>> TcpDataPlane::Create(TcpDataPlaneOptions options) {
  if (options.listen && options.shared_receiver != nullptr) {
    return InvalidArgumentError("a TCP data plane takes a listen address or a shared receiver, not both");
  }
  if (!options.listen && options.shared_receiver == nullptr && !options.next) {
    return InvalidArgumentError(
        "a TCP data plane needs a listen address (or a shared receiver), a next-stage "
        "address, or both");
  }
  std::unique_ptr<TcpDataPlane> plane(new TcpDataPlane());
  if (options.listen) {
    auto receiver = TcpReceiverLink::Listen(*options.listen, options.link);
    if (!receiver.ok()) return receiver.status().WithContext("data plane (previous-stage link)");
    plane->owned_receiver_ = std::move(*receiver);
    plane->receiver_ = plane->owned_receiver_.get();
  } else {
    plane->receiver_ = options.shared_receiver;
  }
  if (options.next) {
    auto sender = TcpSenderLink::Create(*options.next, options.link);
    if (!sender.ok()) return sender.status().WithContext("data plane (next-stage link)");
    plane->sender_ = std::move(*sender);
  }
  return plane;
}

TcpDataPlane::~TcpDataPlane() { Close(); }

Status TcpDataPlane::Send(const StageMessage& message, Deadline deadline) {
  if (!sender_) return FailedPreconditionError("this stage has no next stage to send to (last stage)");
  return sender_->Send(message, deadline, PayloadMode::kInBand);
}

StatusOr<StageMessage> TcpDataPlane::Receive(Deadline deadline) {
  if (closed_.load()) return CancelledError("TCP data plane is closed");
  if (!receiver_) return FailedPreconditionError("this stage has no previous stage to receive from (first stage)");
  XCPIPE_ASSIGN_OR_RETURN(ReceivedFrame frame, receiver_->Receive(deadline, PayloadMode::kInBand));
  return std::move(frame.message);
}

Status TcpDataPlane::Connect(Deadline deadline) {
  if (!sender_) return FailedPreconditionError("this stage has no next stage to connect to (last stage)");
  return sender_->Connect(deadline);
}

void TcpDataPlane::Close() {
  closed_.store(true);
  if (owned_receiver_) owned_receiver_->Close();  // a shared receiver stays open: its owner closes it
  if (sender_) sender_->Close();
}

std::optional<TcpEndpoint> TcpDataPlane::listen_endpoint() const {
  if (!receiver_) return std::nullopt;
  return receiver_->local_endpoint();
}

Status TcpDataPlane::ReserveReceiveBuffers(size_t bytes, size_t count) {
  if (!receiver_) return FailedPreconditionError("this stage has no previous stage to receive from (first stage)");
  return receiver_->ReserveReceiveBuffers(bytes, count);
}

DataPlaneStats TcpDataPlane::stats() const {
  DataPlaneStats s;
  auto add = [&s](const LinkCounters& c, bool sending) {
    uint64_t bytes = c.bytes.load(std::memory_order_relaxed);
    uint64_t messages = c.messages.load(std::memory_order_relaxed);
    (sending ? s.bytes_sent : s.bytes_received) += bytes;
    (sending ? s.messages_sent : s.messages_received) += messages;
    s.messages_refused += c.refused.load(std::memory_order_relaxed);
    s.connections_opened += c.opened.load(std::memory_order_relaxed);
    s.connections_dropped += c.dropped.load(std::memory_order_relaxed);
  };
  if (sender_) add(sender_->counters(), true);
  if (receiver_) add(receiver_->counters(), false);
  return s;
}

}  // namespace xcpipe::transport
