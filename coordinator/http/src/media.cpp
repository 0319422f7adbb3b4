#include <utility>

#include "media.h"

#include <fcntl.h>
#include <netdb.h>

#include <boost/beast/http.hpp>
#include <fstream>

#include "socket_io.h"
#include "xcpipe/http/chat_request.h"

namespace xcpipe::http {
namespace {

namespace bhttp = beast::http;

std::variant<std::string, ApiError> CheckedImage(std::string bytes, const std::string& param) {
  if (SniffImageType(bytes).empty()) {
    return BadRequest(param + " is neither a PNG nor a JPEG image; expected image/png or image/jpeg", param,
                      "unsupported_image_type");
  }
  return bytes;
}

std::variant<std::string, ApiError> ReadFileUrl(const std::string& url, const std::string& param,
                                                const MediaPolicy& policy) {
  namespace fs = std::filesystem;
  if (policy.allowed_media_dir.empty()) {
    return BadRequest(param +
                          ": file:// image URLs are off on this server (it was started without "
                          "--allowed-media-dir); send the image as a data: URL",
                      param, "file_urls_disabled");
  }
  std::string path = url.substr(7);
  if (path.rfind("localhost/", 0) == 0) path = path.substr(9);
  if (path.empty() || path[0] != '/') {
    return BadRequest(param + ": expected file:///absolute/path", param, "invalid_image_url");
  }
  std::error_code ec;
  const fs::path real = fs::weakly_canonical(path, ec);
  const fs::path root = fs::weakly_canonical(policy.allowed_media_dir, ec);
  const auto rel = real.lexically_relative(root);
  if (ec || rel.empty() || *rel.begin() == ".." || !fs::is_regular_file(real, ec)) {
    return BadRequest(param + ": " + path + " is not a file below the server's --allowed-media-dir", param,
                      "file_not_allowed");
  }
  const auto size = fs::file_size(real, ec);
  if (ec || size > policy.max_bytes) {
    return BadRequest(param + ": " + path + " is " + std::to_string(size) + " bytes; at most " +
                          std::to_string(policy.max_bytes) + " are accepted per image",
                      param, "image_too_large");
  }
  std::ifstream in(real, std::ios::binary);
  std::string bytes(size, '\0');
  if (!in.read(bytes.data(), static_cast<std::streamsize>(size))) {
    return BadRequest(param + ": cannot read " + path, param, "file_not_allowed");
  }
  return CheckedImage(std::move(bytes), param);
}

// One plain-HTTP GET with a deadline on everything; a redirect is returned in *location.
std::variant<std::string, ApiError> HttpGet(const std::string& url, const std::string& param, const MediaPolicy& policy,
                                            std::string* location) {
  const auto deadline = Clock::now() + policy.timeout;
  std::string rest = url.substr(7);
  const size_t slash = rest.find('/');
  std::string hostport = rest.substr(0, slash);
  const std::string target = slash == std::string::npos ? "/" : rest.substr(slash);
  std::string host = hostport, port = "80";
  if (const size_t colon = hostport.rfind(':'); colon != std::string::npos && hostport.find(']') == std::string::npos) {
    host = hostport.substr(0, colon);
    port = hostport.substr(colon + 1);
  }
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0 || found == nullptr) {
    return BadRequest(param + ": cannot resolve " + host, param, "image_fetch_failed");
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> addrs(found, &::freeaddrinfo);
  const int fd = ::socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return BadRequest(param + ": cannot open a socket", param, "image_fetch_failed");
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  if (::connect(fd, found->ai_addr, found->ai_addrlen) != 0 && errno != EINPROGRESS) {
    return BadRequest(param + ": cannot connect to " + hostport, param, "image_fetch_failed");
  }
  pollfd p{fd, POLLOUT, 0};
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  int err = 0;
  socklen_t len = sizeof err;
  if (::poll(&p, 1, static_cast<int>(std::max<int64_t>(left, 0))) <= 0 ||
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
    return BadRequest(
        param + ": cannot connect to " + hostport + " within " + std::to_string(policy.timeout.count()) + " s", param,
        "image_fetch_failed");
  }
  const std::string request = "GET " + target + " HTTP/1.1\r\nHost: " + hostport +
                              "\r\nUser-Agent: xcpipe\r\nAccept: image/png, image/jpeg\r\nConnection: close\r\n\r\n";
  if (!WriteAll(fd, request, deadline))
    return BadRequest(param + ": cannot send to " + hostport, param, "image_fetch_failed");
  DeadlineStream stream(fd);
  stream.set_deadline(deadline);
  beast::flat_buffer buffer;
  bhttp::response_parser<bhttp::string_body> parser;
  parser.body_limit(policy.max_bytes);
  beast::error_code ec;
  bhttp::read(stream, buffer, parser, ec);
  if (ec == bhttp::error::body_limit) {
    return BadRequest(
        param + ": the image at " + url + " is larger than " + std::to_string(policy.max_bytes) + " bytes", param,
        "image_too_large");
  }
  if (ec) return BadRequest(param + ": fetching " + url + " failed: " + ec.message(), param, "image_fetch_failed");
  const auto& res = parser.get();
  const unsigned code = res.result_int();
  if (code >= 300 && code < 400 && res.count(bhttp::field::location)) {
    *location = std::string(res[bhttp::field::location]);
    return std::string();
  }
  if (code != 200) {
    return BadRequest(param + ": fetching " + url + " answered HTTP " + std::to_string(code), param,
                      "image_fetch_failed");
  }
  return CheckedImage(res.body(), param);
}

}  // namespace

std::variant<std::string, ApiError> FetchImage(const std::string& url, const std::string& param,
                                               const MediaPolicy& policy) {
  if (url.rfind("data:", 0) == 0) {
    auto d = DecodeDataUrl(url, param, policy.max_bytes);
    if (auto* e = std::get_if<ApiError>(&d)) return *e;
    return std::move(std::get<DataUrlImage>(d).bytes);
  }
  if (url.rfind("file://", 0) == 0) return ReadFileUrl(url, param, policy);
  const bool http = url.rfind("http://", 0) == 0, https = url.rfind("https://", 0) == 0;
  if (http || https) {
    if (!policy.allow_remote) {
      return BadRequest(param +
                            ": remote image URLs are off on this server (it was started without "
                            "--allow-remote-images); send the image as a data: URL",
                        param, "remote_images_disabled");
    }
    std::string current = url;
    for (int hop = 0; hop <= MediaPolicy::kMaxRedirects; ++hop) {
      if (current.rfind("https://", 0) == 0) {
        return BadRequest(param +
                              ": https:// image URLs need TLS, which this build does not carry; send the image "
                              "as a data: URL or over http://",
                          param, "https_unsupported");
      }
      if (current.rfind("http://", 0) != 0) {
        return BadRequest(param + ": a redirect led to " + current + "; expected an http:// URL", param,
                          "image_fetch_failed");
      }
      std::string location;
      auto got = HttpGet(current, param, policy, &location);
      if (std::holds_alternative<ApiError>(got) || location.empty()) return got;
      if (location.rfind("/", 0) == 0) {
        const size_t slash = current.find('/', 7);
        location = current.substr(0, slash) + location;
      }
      current = location;
    }
    return BadRequest(param + ": more than " + std::to_string(MediaPolicy::kMaxRedirects) + " redirects from " + url,
                      param, "image_fetch_failed");
  }
  std::string scheme = url.substr(0, std::min<size_t>(url.find(':'), 16));
  return BadRequest(param + ": the URL scheme '" + scheme +
                        "' is not accepted; expected data:image/png;base64,... "
                        "(or file:// / http:// where the server allows them)",
                    param, "invalid_image_url");
}

}  // namespace xcpipe::http
