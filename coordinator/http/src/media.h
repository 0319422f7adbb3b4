// Where the images of image_url parts come from: inline data: URLs (always), file:// paths
// below --allowed-media-dir only, http:// and https:// URLs only with --allow-remote-images
// (fetched with a timeout, a size cap and at most kMaxRedirects redirects; https verifies the
// certificate against the system's CAs or --remote-image-ca-file, and needs a build with
// OpenSSL, else it is refused saying so).
//
// Thread-safe (no shared state).
#pragma once

#include <chrono>
#include <filesystem>
#include <string>
#include <string_view>
#include <variant>

#include "xcpipe/http/api_error.h"

namespace xcpipe::http {

struct MediaPolicy {
  std::filesystem::path allowed_media_dir;  // empty: file:// refused
  bool allow_remote = false;
  size_t max_bytes = size_t{16} << 20;
  std::chrono::seconds timeout{10};
  std::filesystem::path ca_file;  // https: trust these CAs instead of the system's
  static constexpr int kMaxRedirects = 3;
};

// The encoded image bytes (PNG or JPEG, checked by signature), or a 400 naming `param`.
std::variant<std::string, ApiError> FetchImage(const std::string& url, const std::string& param,
                                               const MediaPolicy& policy);

}  // namespace xcpipe::http
