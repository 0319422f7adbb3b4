// The control plane's ZeroMQ sockets. The coordinator binds one ROUTER; every worker and
// client connects one DEALER. Each message is one Envelope (schemas/xcpipe.capnp) in one
// frame (after the routing identity on the ROUTER side).
// Architecture: docs/architecture.md, "Planes" (control plane: identities, heartbeats, CURVE).
//
// Socket options that bound memory and time are always set: maximum message size, linger 0
// (close never blocks), send/receive high-water marks, ZMTP heartbeats (dead TCP peers are
// noticed by the transport; application liveness is the Heartbeat message), and
// ROUTER_MANDATORY (sending to an unknown or gone peer fails instead of vanishing).
//
// Security: with a CurveConfig (curve.h) the ROUTER is a CURVE server that admits only the
// public keys on its allow-list (its ZapHandler, owned by the socket, started before the bind
// and stopped after the close), and a DEALER is a CURVE client that talks only to the server
// whose public key it was given. A refused peer never delivers a message: its handshake fails.
// Without a CurveConfig the sockets are plain TCP.
//
// Resource types: neither copyable nor movable; a socket lives and dies on one thread (the
// actor that owns it). Nothing throws: zmq errors become Status values.
#pragma once

#include <capnp/message.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <zmq.hpp>

#include "xcpipe/base/status.h"
#include "xcpipe/control/curve.h"
#include "xcpipe/control/message_dropper.h"
#include "xcpipe/control/zap_handler.h"
#include "xcpipe/schemas/wire.h"

namespace xcpipe::control {

// Tunables of the control plane, read in one place.
struct ControlTimings {
  static constexpr int64_t kMaxMessageBytes = wire::kMaxControlMessageBytes;  // images travel as pixels
  static constexpr int kHighWaterMark = 10000;
  static constexpr int kZmtpHeartbeatIvlMs = 1000;
  static constexpr int kZmtpHeartbeatTimeoutMs = 5000;
  static constexpr std::chrono::milliseconds kHeartbeatInterval{250};
  static constexpr std::chrono::milliseconds kHeartbeatTimeout{2500};  // 10 missed heartbeats
};

// The routing identity of one process speaking as `name`: "<name>@<pid>.<random hex>". Every
// process gets its own, so two processes given one name (a worker restarted before its old
// connection closed, or a second process misconfigured with a serving worker's id) stay apart
// on the coordinator's ROUTER instead of one taking over the other's route; the name itself
// travels in the hello, and the coordinator decides which of them holds it.
std::string ProcessRoutingId(std::string_view name);

// A received message with its sender (ROUTER side: the peer identity; DEALER side: empty).
struct Incoming {
  std::string peer;
  std::unique_ptr<wire::DecodedEnvelope> message;
};

class ControlSocket {
 public:
  // ROUTER bound to `endpoint` ("tcp://10.0.0.1:7000"; a wildcard host is refused unless
  // allow_wildcard). Unavailable when the address is in use. With curve.enabled() it is a
  // CURVE server admitting curve.allowed_keys (one such ROUTER per context: the ZAP endpoint).
  static StatusOr<std::unique_ptr<ControlSocket>> BindRouter(zmq::context_t& context, const std::string& endpoint,
                                                             bool allow_wildcard = false,
                                                             const CurveConfig& curve = {});
  // DEALER connected to `endpoint`, with `identity` as its routing id (must be unique). With
  // curve.enabled() it is a CURVE client of the server whose key is curve.server_public_key.
  static StatusOr<std::unique_ptr<ControlSocket>> ConnectDealer(zmq::context_t& context, const std::string& endpoint,
                                                                const std::string& identity,
                                                                const CurveConfig& curve = {});
  ControlSocket(const ControlSocket&) = delete;
  ControlSocket& operator=(const ControlSocket&) = delete;

  // Sends one envelope (to `peer` on a ROUTER). NotFound when no peer of that identity is
  // connected (unknown, or its connection is gone); Unavailable when the send would block past
  // `timeout`.
  Status Send(capnp::MessageBuilder& message, const std::string& peer = {},
              std::chrono::milliseconds timeout = std::chrono::milliseconds(1000));
  Status SendBytes(const std::string& bytes, const std::string& peer = {},
                   std::chrono::milliseconds timeout = std::chrono::milliseconds(1000));

  // Receives one envelope within `timeout`; nullopt on timeout. A malformed message is
  // returned as an error naming the sender (the caller answers it and keeps serving).
  StatusOr<std::optional<Incoming>> Receive(std::chrono::milliseconds timeout);

  zmq::socket_t& socket() { return socket_; }
  // The endpoint actually bound (resolves port 0 / "*" to the real port).
  std::string last_endpoint() const;
  // The ROUTER's ZAP handler (its accept/refuse counters); null without CURVE.
  const ZapHandler* zap() const { return zap_.get(); }

 private:
  ControlSocket(zmq::context_t& context, zmq::socket_type type);
  // Declared before socket_: destroyed after it, so the socket never outlives its handler.
  std::unique_ptr<ZapHandler> zap_;
  zmq::socket_t socket_;
  bool router_ = false;
  std::unique_ptr<MessageDropper> dropper_;  // fault injection (XCPIPE_DROP_CONTROL); usually null
};

// True when `endpoint` binds every interface ("tcp://*:7000", "tcp://0.0.0.0:7000").
bool IsWildcardEndpoint(const std::string& endpoint);
// True when `endpoint` is reachable from this host only (127.0.0.0/8, [::1], localhost, ipc,
// inproc): the one case where plain, unauthenticated control traffic is not a warning.
bool IsLoopbackEndpoint(const std::string& endpoint);

}  // namespace xcpipe::control
