#include <utility>

#include "media.h"

#include <fcntl.h>
#include <arpa/inet.h>
#include <netdb.h>

#include <boost/beast/http.hpp>
#include <fstream>

#include "socket_io.h"
#include "xcpipe/http/chat_request.h"

#ifdef XCPIPE_HTTP_HAVE_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#endif

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

#ifdef XCPIPE_HTTP_HAVE_TLS
// A TLS client over a connected non-blocking socket, as a Beast SyncReadStream with a deadline.
// The peer's certificate must chain to a trusted CA (the system's, or policy.ca_file) and name
// the host.
class TlsStream {
 public:
  TlsStream(int fd, Clock::time_point deadline) : fd_(fd), deadline_(deadline) {}
  ~TlsStream() {
    if (ssl_) SSL_free(ssl_);
    if (ctx_) SSL_CTX_free(ctx_);
  }
  TlsStream(const TlsStream&) = delete;
  TlsStream& operator=(const TlsStream&) = delete;

  // "" on success, else why not.
  std::string Handshake(const std::string& host, const std::filesystem::path& ca_file) {
    ctx_ = SSL_CTX_new(TLS_client_method());
    if (!ctx_) return "cannot create a TLS context";
    SSL_CTX_set_min_proto_version(ctx_, TLS1_2_VERSION);
    const int loaded = ca_file.empty() ? SSL_CTX_set_default_verify_paths(ctx_)
                                       : SSL_CTX_load_verify_locations(ctx_, ca_file.c_str(), nullptr);
    if (loaded != 1) return "cannot load the trusted certificates" + (ca_file.empty() ? "" : " of " + ca_file.string());
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
    ssl_ = SSL_new(ctx_);
    if (!ssl_ || SSL_set_fd(ssl_, fd_) != 1) return "cannot start TLS";
    // The name checked against the certificate: an IP address as such (not a DNS name), and
    // SNI only for names (it carries no addresses).
    in6_addr ip{};
    if (::inet_pton(AF_INET, host.c_str(), &ip) == 1 || ::inet_pton(AF_INET6, host.c_str(), &ip) == 1) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), host.c_str());
    } else {
      SSL_set_tlsext_host_name(ssl_, host.c_str());
      SSL_set1_host(ssl_, host.c_str());
    }
    for (;;) {
      const int r = SSL_connect(ssl_);
      if (r == 1) return "";
      if (!Wait(SSL_get_error(ssl_, r))) {
        const long verify = SSL_get_verify_result(ssl_);
        if (verify != X509_V_OK) return std::string("the certificate is not trusted: ") + X509_verify_cert_error_string(verify);
        return "the TLS handshake failed or timed out";
      }
    }
  }

  bool WriteAll(std::string_view data) {
    while (!data.empty()) {
      const int r = SSL_write(ssl_, data.data(), static_cast<int>(data.size()));
      if (r > 0) {
        data.remove_prefix(static_cast<size_t>(r));
        continue;
      }
      if (!Wait(SSL_get_error(ssl_, r))) return false;
    }
    return true;
  }

  template <class MutableBufferSequence>
  size_t read_some(const MutableBufferSequence& buffers, beast::error_code& ec) {
    ec = {};
    for (auto it = boost::asio::buffer_sequence_begin(buffers); it != boost::asio::buffer_sequence_end(buffers); ++it) {
      boost::asio::mutable_buffer b = *it;
      if (b.size() == 0) continue;
      for (;;) {
        const int r = SSL_read(ssl_, b.data(), static_cast<int>(std::min<size_t>(b.size(), INT32_MAX)));
        if (r > 0) return static_cast<size_t>(r);
        const int e = SSL_get_error(ssl_, r);
        if (e == SSL_ERROR_ZERO_RETURN) {
          ec = boost::asio::error::eof;
          return 0;
        }
        if (!Wait(e)) {
          ec = Clock::now() >= deadline_ ? beast::error_code(beast::error::timeout) : boost::asio::error::eof;
          return 0;
        }
      }
    }
    return 0;
  }
  template <class MutableBufferSequence>
  size_t read_some(const MutableBufferSequence& buffers) {
    beast::error_code ec;
    const size_t n = read_some(buffers, ec);
    if (ec) throw beast::system_error(ec);
    return n;
  }

 private:
  // Waits for what OpenSSL asked for, until the deadline; false on anything else.
  bool Wait(int ssl_error) {
    short events = 0;
    if (ssl_error == SSL_ERROR_WANT_READ) events = POLLIN;
    else if (ssl_error == SSL_ERROR_WANT_WRITE) events = POLLOUT;
    else return false;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd_, events, 0};
    return ::poll(&p, 1, static_cast<int>(left)) > 0;
  }

  int fd_;
  Clock::time_point deadline_;
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
};
#endif

// Reads one response from `stream` (plain or TLS); a redirect is returned in *location.
template <class Stream>
std::variant<std::string, ApiError> ReadImageResponse(Stream& stream, const std::string& url, const std::string& param,
                                                      const MediaPolicy& policy, std::string* location) {
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

// One GET (http://, or https:// in a build with TLS) with a deadline on everything; a redirect
// is returned in *location.
std::variant<std::string, ApiError> HttpGet(const std::string& url, const std::string& param, const MediaPolicy& policy,
                                            std::string* location) {
  const auto deadline = Clock::now() + policy.timeout;
  const bool tls = url.rfind("https://", 0) == 0;
  std::string rest = url.substr(tls ? 8 : 7);
  const size_t slash = rest.find('/');
  std::string hostport = rest.substr(0, slash);
  const std::string target = slash == std::string::npos ? "/" : rest.substr(slash);
  std::string host = hostport, port = tls ? "443" : "80";
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
  if (tls) {
#ifdef XCPIPE_HTTP_HAVE_TLS
    TlsStream stream(fd, deadline);
    if (std::string why = stream.Handshake(host, policy.ca_file); !why.empty()) {
      return BadRequest(param + ": " + hostport + ": " + why, param, "image_fetch_failed");
    }
    if (!stream.WriteAll(request)) return BadRequest(param + ": cannot send to " + hostport, param, "image_fetch_failed");
    return ReadImageResponse(stream, url, param, policy, location);
#else
    return BadRequest(param + ": https:// image URLs need TLS, which this build does not carry (OpenSSL was not "
                              "found when it was built); send the image as a data: URL",
                      param, "https_unsupported");
#endif
  }
  if (!WriteAll(fd, request, deadline))
    return BadRequest(param + ": cannot send to " + hostport, param, "image_fetch_failed");
  DeadlineStream stream(fd);
  stream.set_deadline(deadline);
  return ReadImageResponse(stream, url, param, policy, location);
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
      if (current.rfind("http://", 0) != 0 && current.rfind("https://", 0) != 0) {
        return BadRequest(param + ": a redirect led to " + current + "; expected an http:// or https:// URL", param,
                          "image_fetch_failed");
      }
      std::string location;
      auto got = HttpGet(current, param, policy, &location);
      if (std::holds_alternative<ApiError>(got) || location.empty()) return got;
      if (location.rfind("/", 0) == 0) {
        const size_t slash = current.find('/', current.find("://") + 3);
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
