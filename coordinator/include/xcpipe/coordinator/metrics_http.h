// MetricsHttpServer: the coordinator's monitoring endpoint (Boost.Beast, HTTP/1.1).
//
//   GET /metrics  Prometheus text exposition format 0.0.4, rendered from the latest snapshot
//   GET /healthz  200 "ok" while the process runs
//   GET /readyz   200 "ready" while the cluster serves; 503 otherwise (and before the first
//                 snapshot is published)
//   other paths: 404; other methods: 405; a request over kMaxRequestBytes: 413
//
// One connection per request ("Connection: close"). Every read and write has a deadline
// (kIoTimeout) so a slow or silent client cannot hold the server.
//
// Threading: Start() binds and runs the server on its own thread; it reads only the
// MetricsBoard (thread-safe), never the coordinator's actor state. The destructor stops the
// thread and closes every connection. Not copyable or movable.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "xcpipe/base/status.h"
#include "xcpipe/coordinator/metrics.h"

namespace xcpipe::coordinator {

class MetricsHttpServer {
 public:
  static constexpr std::chrono::seconds kIoTimeout{5};
  static constexpr size_t kMaxRequestBytes = 8192;

  // `listen`: "HOST:PORT" with an explicit host (an IPv4/IPv6 address or "localhost"); port 0
  // picks a free port. InvalidArgument on a malformed address, Unavailable when binding fails.
  static StatusOr<std::unique_ptr<MetricsHttpServer>> Start(const std::string& listen,
                                                            std::shared_ptr<const MetricsBoard> board);
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // "host:port" actually bound (with the real port when 0 was asked for).
  const std::string& address() const { return address_; }

 private:
  MetricsHttpServer() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string address_;
};

}  // namespace xcpipe::coordinator
