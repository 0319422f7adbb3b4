// Gateway: the OpenAI-compatible HTTP API of a cluster, run inside `xcpipe-coordinator` and
// `xcpipe serve-local` when --http-listen is given. It is a client of the coordinator (the same
// control-plane Client `xcpipe submit` uses), so nothing an HTTP peer sends reaches the
// coordinator's state except as a checked Submit:
//
//   HTTP client ──HTTP/1.1──► Gateway ──ZeroMQ (Client, one per request in flight)──► coordinator
//                             parse, check, chat template, images → token ids + pixels
//
// Routes:
//   POST /v1/chat/completions   chat (JSON, or Server-Sent Events with "stream": true)
//   GET  /v1/models             the served model id and its context limit
//   GET  /v1/status             the coordinator's status (what `xcpipe status --json` shows)
//   GET  /health                200 while the cluster serves, 503 with the reason otherwise
//   GET  /                      the browser console (one static page, no external assets)
// Errors use OpenAI's nested shape (api_error.h). /v1/* need "Authorization: Bearer KEY" when
// keys are configured; / and /health do not (the console asks for the key and sends it).
//
// A request's life:
//
//   read header ──► route/auth ──► read body ──► parse + prepare ──► slot ──► generate ──► reply
//        │ 408/431      │ 401/404/405   │ 413        │ 400/404/503      │ 429     │ SSE or JSON
//        ▼              ▼               ▼            ▼                  ▼         ▼
//      close          reply           reply        reply              reply    keep-alive
//
// While generating, a client that closes its connection, or that does not take a write within
// write_timeout, cancels the request: its coordinator connection is dropped and the coordinator
// frees the sequence's KV room. A stop sequence found in the text ends the request the same way.
//
// Threading: one thread accepts; one thread per open connection (at most max_connections; one
// more is answered 429 and closed); one thread refreshes the cached status each second. Start()
// returns once listening; the destructor closes every connection and joins every thread.
// Not copyable or movable.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "xcpipe/base/status.h"
#include "xcpipe/control/curve.h"

namespace xcpipe::http {

// Tunables of the HTTP server (flags: gateway_flags.h).
struct GatewayOptions {
  std::string listen;                        // HOST:PORT; "" = no HTTP server
  std::filesystem::path api_key_file;        // one key per line ('#' comments); empty = no keys
  bool allow_unauthenticated = false;        // without keys, serve on a non-loopback address anyway
  std::string served_model_name;             // default: the model folder's name
  std::filesystem::path allowed_media_dir;   // file:// image URLs only below it; empty = refused
  bool allow_remote_images = false;          // http(s):// image URLs (https in builds with OpenSSL)
  size_t max_body_bytes = size_t{48} << 20;  // a few large base64 images
  size_t max_header_bytes = size_t{16} << 10;
  int header_timeout_s = 10;  // the header of a request, from its first byte
  int body_timeout_s = 60;    // the body, after the header
  int idle_timeout_s = 30;    // keep-alive: waiting for the next request
  int write_timeout_s = 30;   // one write to a slow client; past it the request is cancelled
  int max_connections = 256;
  int max_requests = 128;            // chat requests in progress at once; more get 429
  int max_requests_per_key = 64;     // of them, per API key
  int request_timeout_s = 900;       // one chat request end to end
  int64_t default_max_tokens = 512;  // when a request gives no max_tokens (capped by the context)
  int remote_image_timeout_s = 10;
  std::filesystem::path remote_image_ca_file;  // https image URLs: trusted CAs (default: the system's)
  size_t max_image_bytes = size_t{16} << 20;
  int max_images = 4;
};

// What the gateway serves and where the coordinator is.
struct GatewayBackend {
  std::string coordinator_endpoint;  // tcp://127.0.0.1:7000 (wildcards are turned into loopback)
  control::CurveConfig curve;        // client keys when the coordinator requires CURVE
  std::filesystem::path model_dir;
  std::filesystem::path tokenizer;  // empty: found next to the model
  int64_t max_context = 4096;       // the coordinator's serving context (capped by the model's)
};

class Gateway {
 public:
  // Loads the tokenizer and the model's image settings, reads the key file, binds and starts
  // serving. InvalidArgument for a bad address or key file, or for a non-loopback address
  // without keys (unless allow_unauthenticated); Unavailable when binding fails.
  static StatusOr<std::unique_ptr<Gateway>> Start(const GatewayOptions& options, GatewayBackend backend);
  ~Gateway();
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  // "host:port" actually bound (the real port when 0 was asked for).
  const std::string& address() const { return address_; }
  // Where the coordinator is, once known (xcpipe-coordinator learns its address when ready);
  // the cached status is refreshed at once, so /health turns 200 without waiting a period.
  void SetCoordinatorEndpoint(const std::string& endpoint);

 private:
  Gateway() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string address_;
};

// A control endpoint as a local client reaches it: tcp://*:P and tcp://0.0.0.0:P become
// tcp://127.0.0.1:P ([::] becomes [::1]); anything else is returned unchanged.
std::string LocalEndpointFor(const std::string& listen);

}  // namespace xcpipe::http
