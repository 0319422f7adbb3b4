#include "xcpipe/control/socket.h"

#include <unistd.h>

#include <cstdio>
#include <random>

#include <capnp/schema.h>

namespace xcpipe::control {
namespace {

// The Envelope union member's name ("forward", "stepResult"), for fault injection and logs.
std::string_view EnvelopeTypeName(uint16_t which) {
  KJ_IF_MAYBE(field, capnp::Schema::from<proto::Envelope>().getFieldByDiscriminant(which)) {
    auto name = field->getProto().getName();
    return {name.cStr(), name.size()};
  }
  return "unknown";
}

Status ZmqError(const std::string& what, const zmq::error_t& e) {
  if (e.num() == EHOSTUNREACH) return NotFoundError(what + ": peer is not connected");
  if (e.num() == EADDRINUSE) return UnavailableError(what + ": address already in use");
  if (e.num() == EAGAIN) return UnavailableError(what + ": would block (peer not reading)");
  if (e.num() == EINVAL || e.num() == EPROTONOSUPPORT) return InvalidArgumentError(what + ": " + e.what());
  return UnavailableError(what + ": " + e.what());
}

void SetCommonOptions(zmq::socket_t& s) {
  s.set(zmq::sockopt::linger, 0);
  s.set(zmq::sockopt::maxmsgsize, ControlTimings::kMaxMessageBytes);
  s.set(zmq::sockopt::sndhwm, ControlTimings::kHighWaterMark);
  s.set(zmq::sockopt::rcvhwm, ControlTimings::kHighWaterMark);
  s.set(zmq::sockopt::heartbeat_ivl, ControlTimings::kZmtpHeartbeatIvlMs);
  s.set(zmq::sockopt::heartbeat_timeout, ControlTimings::kZmtpHeartbeatTimeoutMs);
  s.set(zmq::sockopt::heartbeat_ttl, ControlTimings::kZmtpHeartbeatTimeoutMs);
}

// ZMQ_ZAP_ENFORCE_DOMAIN (a draft option in libzmq 4.3 headers; the library accepts it):
// without it, a CURVE handshake that finds no ZAP handler would be accepted unauthenticated.
constexpr int kZmqZapEnforceDomain = 93;

Status ApplyCurveServer(zmq::socket_t& s, const CurveConfig& curve) {
  if (!CurveAvailable()) return UnimplementedError("CURVE is not available in this build's libzmq");
  if (Status st = ValidateZ85Key(curve.secret_key, "own secret key"); !st.ok()) return st;
  if (curve.allowed_keys.empty()) return InvalidArgumentError("CURVE server without an allow-list would admit nobody");
  s.set(zmq::sockopt::curve_server, 1);
  s.set(zmq::sockopt::curve_secretkey, curve.secret_key);
  s.set(zmq::sockopt::zap_domain, std::string(ZapHandler::kDomain));
  // A libzmq without the option refuses it; the handler's lifetime (started before bind,
  // stopped after close) still guarantees that every handshake is checked.
  const int one = 1;
  (void)zmq_setsockopt(s.handle(), kZmqZapEnforceDomain, &one, sizeof one);
  return OkStatus();
}

Status ApplyCurveClient(zmq::socket_t& s, const CurveConfig& curve) {
  if (!CurveAvailable()) return UnimplementedError("CURVE is not available in this build's libzmq");
  if (Status st = ValidateZ85Key(curve.secret_key, "own secret key"); !st.ok()) return st;
  if (Status st = ValidateZ85Key(curve.public_key, "own public key"); !st.ok()) return st;
  if (Status st = ValidateZ85Key(curve.server_public_key, "the coordinator's public key"); !st.ok()) return st;
  s.set(zmq::sockopt::curve_serverkey, curve.server_public_key);
  s.set(zmq::sockopt::curve_publickey, curve.public_key);
  s.set(zmq::sockopt::curve_secretkey, curve.secret_key);
  return OkStatus();
}

}  // namespace

std::string ProcessRoutingId(std::string_view name) {
  std::random_device random;
  char token[32];
  std::snprintf(token, sizeof token, "@%d.%04x", static_cast<int>(getpid()), static_cast<unsigned>(random() & 0xffffu));
  return std::string(name) + token;
}

bool IsWildcardEndpoint(const std::string& endpoint) {
  return endpoint.find("://*") != std::string::npos || endpoint.find("://0.0.0.0") != std::string::npos ||
         endpoint.find("://[::]") != std::string::npos;
}

bool IsLoopbackEndpoint(const std::string& endpoint) {
  for (const char* prefix : {"tcp://127.", "tcp://[::1]", "tcp://localhost:", "ipc://", "inproc://"}) {
    if (endpoint.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

ControlSocket::ControlSocket(zmq::context_t& context, zmq::socket_type type) : socket_(context, type) {}

StatusOr<std::unique_ptr<ControlSocket>> ControlSocket::BindRouter(zmq::context_t& context,
                                                                   const std::string& endpoint, bool allow_wildcard,
                                                                   const CurveConfig& curve) {
  if (IsWildcardEndpoint(endpoint) && !allow_wildcard) {
    return InvalidArgumentError("refusing to bind '" + endpoint +
                                "' on every interface; name the address to listen on (e.g. tcp://10.0.0.1:7000)");
  }
  try {
    std::unique_ptr<ControlSocket> s(new ControlSocket(context, zmq::socket_type::router));
    s->router_ = true;
    s->dropper_ = MessageDropper::FromEnvironment(true, "");
    SetCommonOptions(s->socket_);
    s->socket_.set(zmq::sockopt::router_mandatory, 1);
    // Identities are per process (ProcessRoutingId): a peer that reconnects after a network
    // fault, while its old connection is still half open here, takes its own route over.
    s->socket_.set(zmq::sockopt::router_handover, 1);
    if (curve.enabled()) {
      // The handler must answer before the first peer can connect: start it, then bind.
      if (Status st = ApplyCurveServer(s->socket_, curve); !st.ok()) return st;
      auto zap = ZapHandler::Start(context, curve.allowed_keys);
      if (!zap.ok()) return zap.status();
      s->zap_ = std::move(zap).value();
    }
    s->socket_.bind(endpoint);
    return s;
  } catch (const zmq::error_t& e) {
    return ZmqError("bind " + endpoint, e);
  }
}

StatusOr<std::unique_ptr<ControlSocket>> ControlSocket::ConnectDealer(zmq::context_t& context,
                                                                      const std::string& endpoint,
                                                                      const std::string& identity,
                                                                      const CurveConfig& curve) {
  try {
    std::unique_ptr<ControlSocket> s(new ControlSocket(context, zmq::socket_type::dealer));
    s->dropper_ = MessageDropper::FromEnvironment(false, identity);
    SetCommonOptions(s->socket_);
    s->socket_.set(zmq::sockopt::routing_id, identity);
    s->socket_.set(zmq::sockopt::reconnect_ivl, 100);
    s->socket_.set(zmq::sockopt::reconnect_ivl_max, 2000);
    if (curve.enabled()) {
      if (Status st = ApplyCurveClient(s->socket_, curve); !st.ok()) return st;
    }
    s->socket_.connect(endpoint);
    return s;
  } catch (const zmq::error_t& e) {
    return ZmqError("connect " + endpoint, e);
  }
}

Status ControlSocket::Send(capnp::MessageBuilder& message, const std::string& peer, std::chrono::milliseconds timeout) {
  if (dropper_ && dropper_->ShouldDrop(MessageDropper::Direction::kSend,
                                      EnvelopeTypeName(message.getRoot<proto::Envelope>().which()))) {
    return OkStatus();  // lost on the way: the sender cannot tell
  }
  return SendBytes(wire::Encode(message), peer, timeout);
}

Status ControlSocket::SendBytes(const std::string& bytes, const std::string& peer, std::chrono::milliseconds timeout) {
  try {
    socket_.set(zmq::sockopt::sndtimeo, static_cast<int>(timeout.count()));
    if (router_) {
      if (!socket_.send(zmq::buffer(peer), zmq::send_flags::sndmore)) return UnavailableError("send timed out");
    }
    if (!socket_.send(zmq::buffer(bytes), zmq::send_flags::none)) {
      return UnavailableError("send to '" + peer + "' timed out after " + std::to_string(timeout.count()) + " ms");
    }
    return OkStatus();
  } catch (const zmq::error_t& e) {
    return ZmqError("send to '" + peer + "'", e);
  }
}

StatusOr<std::optional<Incoming>> ControlSocket::Receive(std::chrono::milliseconds timeout) {
  try {
    zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
    if (zmq::poll(&item, 1, timeout) == 0) return std::optional<Incoming>();
    Incoming in;
    zmq::message_t frame;
    if (router_) {
      if (!socket_.recv(frame, zmq::recv_flags::dontwait)) return std::optional<Incoming>();
      in.peer = frame.to_string();
      if (!frame.more()) return InvalidArgumentError("message from '" + in.peer + "' has no body");
    }
    if (!socket_.recv(frame, zmq::recv_flags::dontwait)) return std::optional<Incoming>();
    // Drain unexpected extra frames so the next Receive starts at a message boundary.
    bool extra = false;
    while (frame.more()) {
      zmq::message_t rest;
      (void)socket_.recv(rest, zmq::recv_flags::dontwait);
      extra = true;
      if (!rest.more()) break;
    }
    if (extra) return InvalidArgumentError("message from '" + in.peer + "' has extra frames; expected one envelope");
    auto decoded = wire::Decode({static_cast<const std::byte*>(frame.data()), frame.size()});
    if (!decoded.ok()) return decoded.status().WithContext("from '" + in.peer + "'");
    in.message = std::move(decoded).value();
    if (dropper_ && dropper_->ShouldDrop(MessageDropper::Direction::kReceive,
                                         EnvelopeTypeName(in.message->envelope().which()))) {
      return std::optional<Incoming>();  // lost on the way: as if nothing had arrived
    }
    return std::optional<Incoming>(std::move(in));
  } catch (const zmq::error_t& e) {
    return ZmqError("receive", e);
  }
}

std::string ControlSocket::last_endpoint() const {
  try {
    return socket_.get(zmq::sockopt::last_endpoint);
  } catch (const zmq::error_t&) {
    return {};
  }
}

}  // namespace xcpipe::control
