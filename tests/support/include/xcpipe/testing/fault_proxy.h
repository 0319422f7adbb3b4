// FaultProxy: a small userspace TCP proxy for fault-injection tests (these kernels have no
// `tc netem`). It listens on one port and forwards every accepted connection to one target,
// byte for byte in both directions, and on request damages the traffic:
//
//   - delay: every chunk read waits `delay` + a seeded uniform jitter in [0, jitter] before it
//     is written on; chunks of one direction stay in order (read -> wait -> write -> read).
//   - reset after N bytes (one-shot): when the client-to-target stream of the proxy as a whole
//     (all connections, counted from the last SetPlan) reaches N bytes, the connection carrying
//     byte N forwards only the bytes before it and is then reset (both sides, SO_LINGER 0):
//     a frame cut mid-way.
//   - reset with probability p per client-to-target chunk (seeded): "loss" for TCP, where a lost
//     byte inside a stream can only surface as a broken connection.
//   - corrupt byte N (one-shot): the client-to-target byte N is XORed with 0xFF; everything
//     else passes, so only an end-to-end check (a frame checksum) can notice.
//   - ResetAll(): every open connection is reset now.
//
// Threading: one Asio I/O thread of its own, started by Start() and joined by the destructor;
// every other method may be called from any thread. Ownership: the proxy owns its sockets and
// its thread; not copyable or movable. Failure: Start() returns a Status when it cannot listen;
// a target that refuses a connection makes the proxy close the accepted one (the client sees
// the same refusal, only later). The seed is printed so a failing run can be repeated.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "xcpipe/base/status.h"

namespace xcpipe::testing {

struct FaultProxyOptions {
  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 0;  // 0: any free port (see FaultProxy::port())
  std::string target_host = "127.0.0.1";
  uint16_t target_port = 0;
  uint64_t seed = 1;
  std::string name = "proxy";  // in log lines
};

// What to do to the traffic; replace it at any time with SetPlan (one-shot faults re-arm).
struct FaultPlan {
  std::chrono::milliseconds delay{0};
  std::chrono::milliseconds jitter{0};
  int64_t reset_after_bytes = -1;  // one-shot, client-to-target; -1: off
  double reset_probability = 0;    // per client-to-target chunk
  int64_t corrupt_byte_at = -1;    // one-shot, client-to-target; -1: off
};

struct FaultProxyCounters {
  uint64_t connections = 0;       // accepted
  uint64_t bytes_forwarded = 0;   // client-to-target bytes written to the target
  uint64_t resets = 0;            // connections reset by a fault (plan or ResetAll)
  uint64_t corrupted = 0;         // bytes flipped
};

class FaultProxy {
 public:
  static StatusOr<std::unique_ptr<FaultProxy>> Start(FaultProxyOptions options);
  ~FaultProxy();
  FaultProxy(const FaultProxy&) = delete;
  FaultProxy& operator=(const FaultProxy&) = delete;

  uint16_t port() const;
  std::string address() const;  // "listen_host:port"

  void SetPlan(const FaultPlan& plan);
  void ResetAll();
  FaultProxyCounters counters() const;

 private:
  struct Impl;
  explicit FaultProxy(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A TCP port that was free a moment ago on `host` (bind to port 0, read it, close). Racy by
// nature; good enough for tests on hosts of their own.
StatusOr<uint16_t> PickFreePort(const std::string& host = "127.0.0.1");

}  // namespace xcpipe::testing
