// The ZAP handler (ZeroMQ RFC 27) that decides which CURVE peers the coordinator's ROUTER
// admits: a peer whose public key is on the allow-list gets "200"; anything else gets "400"
// (unknown key, a mechanism other than CURVE, a malformed request). libzmq asks it during every
// handshake on a socket that has a ZAP domain, in the same zmq context.
//
// Failing closed: the handler is started (its inproc endpoint bound) before the ROUTER binds,
// and the ROUTER is closed before the handler stops (ControlSocket owns both, in that order).
// The ROUTER also sets ZMQ_ZAP_ENFORCE_DOMAIN, so a handshake that finds no handler is refused
// rather than accepted unauthenticated.
//
// Threading: the ZAP socket is created, used and closed on the handler's own thread. Start()
// returns once it is bound. The destructor stops it within one poll interval (100 ms) and
// joins. Counters are atomic and readable from any thread. Neither copyable nor movable.
//
// Logging: every refusal names the peer's address and the key's fingerprint (its first 8 Z85
// characters), at most once per address+key every 10 s so a peer retrying does not flood the
// log. Secret keys never reach this class.
#pragma once

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include <zmq.hpp>

#include "xcpipe/base/status.h"

namespace xcpipe::control {

class ZapHandler {
 public:
  static constexpr const char* kEndpoint = "inproc://zeromq.zap.01";  // fixed by RFC 27
  static constexpr const char* kDomain = "xcpipe";
  static constexpr std::chrono::milliseconds kPollInterval{100};

  // Binds the ZAP endpoint in `context` and starts answering. Unavailable when the endpoint is
  // already bound (one handler per context).
  static StatusOr<std::unique_ptr<ZapHandler>> Start(zmq::context_t& context, std::set<std::string> allowed_keys);
  ~ZapHandler();
  ZapHandler(const ZapHandler&) = delete;
  ZapHandler& operator=(const ZapHandler&) = delete;

  uint64_t accepted() const { return accepted_.load(); }
  uint64_t refused() const { return refused_.load(); }

 private:
  ZapHandler(zmq::context_t& context, std::set<std::string> allowed_keys);
  void Loop(std::shared_ptr<std::promise<Status>> bound);
  zmq::context_t& context_;
  const std::set<std::string> allowed_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> accepted_{0}, refused_{0};
  std::thread thread_;
};

}  // namespace xcpipe::control
