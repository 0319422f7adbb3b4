// ControlTransport: how the coordinator sends and receives control-plane envelopes, so that a
// test can put something else in place of the ZeroMQ ROUTER (the simulator in tests/sim/ runs
// the real Coordinator over a simulated network).
// Architecture: docs/architecture.md, "Planes" (control plane).
//
// Contract (the ROUTER's, kept by every implementation):
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
  ControlSocket& socket() { return *socket_; }

 private:
  std::unique_ptr<ControlSocket> socket_;
};

}  // namespace xcpipe::control
