// Boost 1.74's Asio needs <utility> before its headers under C++20.
#include <utility>

#include "xcpipe/coordinator/metrics_http.h"

#include <spdlog/spdlog.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <optional>
#include <thread>

namespace xcpipe::coordinator {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

// One request, one response, then the connection closes.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, std::shared_ptr<const MetricsBoard> board)
      : stream_(std::move(socket)), buffer_(MetricsHttpServer::kMaxRequestBytes), board_(std::move(board)) {}

  void Start() {
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(MetricsHttpServer::kMaxRequestBytes));
    parser_->body_limit(MetricsHttpServer::kMaxRequestBytes);
    stream_.expires_after(MetricsHttpServer::kIoTimeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->OnRead(ec); });
  }

 private:
  void OnRead(beast::error_code ec) {
    if (ec == http::error::header_limit || ec == http::error::body_limit || ec == http::error::buffer_overflow) {
      return Reply(http::status::payload_too_large, "text/plain", "request too large\n", 11);
    }
    if (ec) return Close();
    const auto& req = parser_->get();
    const unsigned version = req.version();
    if (req.method() != http::verb::get && req.method() != http::verb::head) {
      return Reply(http::status::method_not_allowed, "text/plain", "only GET is served\n", version, true);
    }
    std::string target(req.target());
    if (auto q = target.find('?'); q != std::string::npos) target.resize(q);
    const auto snapshot = board_->Latest();
    const bool head = req.method() == http::verb::head;
    if (target == "/metrics") {
      MetricsSnapshot empty;
      empty.state = "starting";
      return Reply(http::status::ok, "text/plain; version=0.0.4; charset=utf-8",
                   RenderPrometheus(snapshot ? *snapshot : empty), version, false, head);
    }
    if (target == "/healthz") return Reply(http::status::ok, "text/plain", "ok\n", version, false, head);
    if (target == "/readyz") {
      if (snapshot && snapshot->serving) return Reply(http::status::ok, "text/plain", "ready\n", version, false, head);
      return Reply(http::status::service_unavailable, "text/plain",
                   "not ready: " + (snapshot ? snapshot->state : std::string("starting")) + "\n", version, false, head);
    }
    Reply(http::status::not_found, "text/plain", "not found; try /metrics, /healthz or /readyz\n", version, false, head);
  }

  void Reply(http::status status, const char* type, std::string body, unsigned version, bool allow = false,
             bool head = false) {
    response_.result(status);
    response_.version(version);
    response_.set(http::field::server, "xcpipe-coordinator");
    response_.set(http::field::content_type, type);
    if (allow) response_.set(http::field::allow, "GET, HEAD");
    response_.keep_alive(false);
    response_.body() = head ? std::string() : std::move(body);
    response_.prepare_payload();
    stream_.expires_after(MetricsHttpServer::kIoTimeout);
    http::async_write(stream_, response_, [self = shared_from_this()](beast::error_code, size_t) { self->Close(); });
  }

  void Close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.socket().close(ignored);
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::string_body> response_;
  std::shared_ptr<const MetricsBoard> board_;
};

}  // namespace

struct MetricsHttpServer::Impl {
  asio::io_context io{1};
  tcp::acceptor acceptor{io};
  std::shared_ptr<const MetricsBoard> board;
  std::thread thread;

  void Accept() {
    acceptor.async_accept(asio::make_strand(io), [this](beast::error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
      if (!ec) std::make_shared<Session>(std::move(socket), board)->Start();
      Accept();
    });
  }
};

StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(const std::string& listen,
                                                                      std::shared_ptr<const MetricsBoard> board) {
  const auto colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == listen.size()) {
    return InvalidArgumentError("metrics address '" + listen + "' is not HOST:PORT (e.g. 127.0.0.1:9100)");
  }
  std::string host = listen.substr(0, colon);
  const std::string port_text = listen.substr(colon + 1);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host == "localhost") host = "127.0.0.1";
  unsigned long port = 0;
  try {
    size_t used = 0;
    port = std::stoul(port_text, &used);
    if (used != port_text.size() || port > 65535) throw std::out_of_range("port");
  } catch (const std::exception&) {
    return InvalidArgumentError("metrics port '" + port_text + "' is not a number in 0..65535");
  }
  beast::error_code ec;
  const auto address = asio::ip::make_address(host, ec);
  if (ec) return InvalidArgumentError("metrics host '" + host + "' is not an IP address or localhost");
  std::unique_ptr<MetricsHttpServer> server(new MetricsHttpServer());
  server->impl_ = std::make_unique<Impl>();
  Impl& impl = *server->impl_;
  impl.board = std::move(board);
  const tcp::endpoint endpoint(address, static_cast<unsigned short>(port));
  impl.acceptor.open(endpoint.protocol(), ec);
  if (!ec) impl.acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl.acceptor.bind(endpoint, ec);
  if (!ec) impl.acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return UnavailableError("cannot listen for metrics on " + listen + ": " + ec.message());
  const auto bound = impl.acceptor.local_endpoint();
  const std::string bound_host = bound.address().is_v6() ? "[" + bound.address().to_string() + "]"
                                                          : bound.address().to_string();
  server->address_ = bound_host + ":" + std::to_string(bound.port());
  impl.Accept();
  impl.thread = std::thread([&impl] {
    try {
      impl.io.run();
    } catch (const std::exception& e) {
      spdlog::error("metrics endpoint stopped: {}", e.what());
    }
  });
  spdlog::info("metrics on http://{}/metrics", server->address_);
  return server;
}

MetricsHttpServer::~MetricsHttpServer() {
  if (!impl_) return;
  asio::post(impl_->io, [impl = impl_.get()] {
    beast::error_code ignored;
    impl->acceptor.close(ignored);
  });
  impl_->io.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

}  // namespace xcpipe::coordinator
