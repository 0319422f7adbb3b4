// The HTTP API's flags, shared by `xcpipe-coordinator` and `xcpipe serve-local`. Binds CLI11
// options to a GatewayOptions owned by the caller (which must outlive parsing).
#pragma once

#include "xcpipe/base/cli.h"
#include "xcpipe/http/gateway.h"

namespace xcpipe::http {

inline void AddGatewayFlags(CLI::App& app, GatewayOptions& o) {
  app.add_option("--http-listen", o.listen,
                 "serve the OpenAI-compatible HTTP API (/v1/chat/completions, /v1/models, /health) and the browser "
                 "console (/) on HOST:PORT, e.g. 127.0.0.1:8000 (nothing is served without it)");
  app.add_option("--api-key-file", o.api_key_file,
                 "HTTP API keys, one per line ('#' comments); clients send Authorization: Bearer KEY. Without keys "
                 "the API listens on loopback only");
  app.add_flag("--allow-unauthenticated", o.allow_unauthenticated,
               "serve the HTTP API without keys on a non-loopback address");
  app.add_option("--served-model-name", o.served_model_name,
                 "the model id of the HTTP API (default: the model folder's name)");
  app.add_option("--allowed-media-dir", o.allowed_media_dir,
                 "accept file:// image URLs for files below this folder (default: refused)");
  app.add_flag("--allow-remote-images", o.allow_remote_images,
               "fetch http:// and https:// image URLs (timeout, size cap, at most 3 redirects; default: refused)");
  app.add_option("--remote-image-ca-file", o.remote_image_ca_file,
                 "PEM file of the CAs https image URLs are verified against (default: the system's)");
  app.add_option("--http-max-body-bytes", o.max_body_bytes, "largest HTTP request body; larger ones get 413")
      ->capture_default_str();
  app.add_option("--http-max-connections", o.max_connections, "open HTTP connections at once; more get 429")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 16));
  app.add_option("--http-max-requests", o.max_requests, "chat requests in progress at once; more get 429")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 16));
  app.add_option("--http-max-requests-per-key", o.max_requests_per_key,
                 "chat requests in progress at once per API key; more get 429")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 16));
  app.add_option("--http-header-timeout-s", o.header_timeout_s, "time to receive a request's header")
      ->capture_default_str()
      ->check(CLI::Range(1, 3600));
  app.add_option("--http-body-timeout-s", o.body_timeout_s, "time to receive a request's body")
      ->capture_default_str()
      ->check(CLI::Range(1, 3600));
  app.add_option("--http-write-timeout-s", o.write_timeout_s,
                 "time a client may take to accept one write; a slower one loses its request")
      ->capture_default_str()
      ->check(CLI::Range(1, 3600));
  app.add_option("--http-default-max-tokens", o.default_max_tokens,
                 "max_tokens of a request that gives none (capped by the context)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
}

}  // namespace xcpipe::http
