// ControlTransport: how the coordinator and the worker actor send and receive control-plane
// envelopes, so that a test can put something else in place of ZeroMQ: the simulator in
// tests/sim/ runs the real Coordinator over a simulated network, and LoopbackHub below joins a
// real Coordinator, real WorkerActors and clients inside one process. Production: the
// coordinator's ROUTER (ZmqRouterTransport) and each worker's DEALER (ZmqDealerTransport).
// Architecture: docs/architecture.md, "Planes" (control plane).
//
// Contract (the ROUTER's, kept by every implementation; a DEALER end has one peer, ignores the
// peer given to Send and returns an empty one from Receive):
//   * Send(message, peer, timeout) delivers one envelope to the peer whose routing identity is
//     `peer`; it fails with NotFound when no such peer is connected (ROUTER_MANDATORY: a send
//     to an unknown or vanished peer fails instead of vanishing; the coordinator probes a
//     worker id's holder this way, and declares a worker it cannot reach lost at once) and
//     with Unavailable when the send would block past `timeout`.
//   * Receive(timeout) returns the next envelope with its sender's identity, nullopt when none
//     arrived within `timeout`, or an error for a malformed message (the caller goes on).
//   * address() is the endpoint peers connect to (the bound one, with the real port).
// One thread uses a transport at a time (the actor that owns it).
#pragma once

#include <capnp/message.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "xcpipe/base/status.h"
#include "xcpipe/control/socket.h"

namespace xcpipe::control {

class ControlTransport {
 public:
  virtual ~ControlTransport() = default;
  virtual Status Send(capnp::MessageBuilder& message, const std::string& peer, std::chrono::milliseconds timeout) = 0;
  virtual StatusOr<std::optional<Incoming>> Receive(std::chrono::milliseconds timeout) = 0;
  virtual std::string address() const = 0;
  // A ZeroMQ socket that becomes readable when Receive has something, for an owner that waits
  // on it together with other sockets in one zmq::poll (the worker actor); null when there is
  // none, and the owner then calls Receive with a short timeout instead.
  virtual zmq::socket_t* poll_socket() { return nullptr; }
};

// Production: the coordinator's ZeroMQ ROUTER (ControlSocket::BindRouter).
class ZmqRouterTransport final : public ControlTransport {
 public:
  explicit ZmqRouterTransport(std::unique_ptr<ControlSocket> socket) : socket_(std::move(socket)) {}
  Status Send(capnp::MessageBuilder& message, const std::string& peer, std::chrono::milliseconds timeout) override {
    return socket_->Send(message, peer, timeout);
  }
  StatusOr<std::optional<Incoming>> Receive(std::chrono::milliseconds timeout) override {
    return socket_->Receive(timeout);
  }
  std::string address() const override { return socket_->last_endpoint(); }
  zmq::socket_t* poll_socket() override { return &socket_->socket(); }
  ControlSocket& socket() { return *socket_; }

 private:
  std::unique_ptr<ControlSocket> socket_;
};

// Production, the other end: a worker's or client's DEALER (ControlSocket::ConnectDealer). The
// peer given to Send is ignored (a DEALER has one peer); Receive's peer is empty.
class ZmqDealerTransport final : public ControlTransport {
 public:
  ZmqDealerTransport(std::unique_ptr<ControlSocket> socket, std::string endpoint)
      : socket_(std::move(socket)), endpoint_(std::move(endpoint)) {}
  Status Send(capnp::MessageBuilder& message, const std::string&, std::chrono::milliseconds timeout) override {
    return socket_->Send(message, {}, timeout);
  }
  StatusOr<std::optional<Incoming>> Receive(std::chrono::milliseconds timeout) override {
    return socket_->Receive(timeout);
  }
  std::string address() const override { return endpoint_; }
  zmq::socket_t* poll_socket() override { return &socket_->socket(); }

 private:
  std::unique_ptr<ControlSocket> socket_;
  std::string endpoint_;
};

// Tests: a control plane inside one process. One ROUTER end (Router(), for the coordinator) and
// any number of DEALER ends (Connect(identity), for workers and clients), each usable from its
// own thread. Messages go through the real codec (wire::Encode, then wire::Decode on receipt),
// in order per sender, and are never lost; a send to an identity that is not connected (never
// connected, or its end destroyed) fails NotFound, as the ROUTER's does.
class LoopbackHub {
 public:
  explicit LoopbackHub(std::string address = "loopback://coordinator");
  ~LoopbackHub();
  LoopbackHub(const LoopbackHub&) = delete;
  LoopbackHub& operator=(const LoopbackHub&) = delete;

  // The hub outlives every end it hands out.
  std::unique_ptr<ControlTransport> Router();
  std::unique_ptr<ControlTransport> Connect(const std::string& identity);

 private:
  struct State;
  class RouterEnd;
  class DealerEnd;
  std::shared_ptr<State> state_;
};

}  // namespace xcpipe::control
