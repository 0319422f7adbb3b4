// Boost 1.74's Asio needs <utility> before its headers under C++20.
#include <utility>

#include "xcpipe/testing/fault_proxy.h"

#include <array>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <cstdio>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

namespace xcpipe::testing {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

namespace {
constexpr size_t kChunkBytes = 64 << 10;  // one read, one decision, one write
}

struct FaultProxy::Impl {
  FaultProxyOptions options;
  asio::io_context io;  // destroyed last: pending handlers own the sessions
  tcp::acceptor acceptor{io};
  tcp::endpoint target;
  std::thread thread;

  // Everything below is guarded by `mutex` (the I/O thread decides, tests set and read).
  mutable std::mutex mutex;
  FaultPlan plan;
  int64_t up_bytes_since_plan = 0;  // client-to-target bytes decided since the last SetPlan
  std::mt19937_64 rng;
  FaultProxyCounters counters;

  struct Session;
  std::vector<std::weak_ptr<Session>> sessions;  // I/O thread only

  // What to do with one chunk just read.
  struct Decision {
    std::chrono::milliseconds delay{0};
    size_t forward = 0;  // bytes of the chunk to write on
    bool reset = false;  // reset the connection after writing them
  };
  Decision Decide(bool up, char* data, size_t n) {
    std::lock_guard<std::mutex> lock(mutex);
    Decision d;
    d.forward = n;
    d.delay = plan.delay;
    if (plan.jitter.count() > 0) {
      d.delay += std::chrono::milliseconds(std::uniform_int_distribution<int64_t>(0, plan.jitter.count())(rng));
    }
    if (!up) return d;
    const int64_t start = up_bytes_since_plan;
    const int64_t end = start + static_cast<int64_t>(n);
    if (plan.corrupt_byte_at >= start && plan.corrupt_byte_at < end) {
      data[plan.corrupt_byte_at - start] ^= static_cast<char>(0xFF);
      plan.corrupt_byte_at = -1;
      ++counters.corrupted;
    }
    if (plan.reset_after_bytes >= start && plan.reset_after_bytes < end) {
      d.forward = static_cast<size_t>(plan.reset_after_bytes - start);
      d.reset = true;
      plan.reset_after_bytes = -1;
    } else if (plan.reset_probability > 0 &&
               std::uniform_real_distribution<double>(0, 1)(rng) < plan.reset_probability) {
      d.forward = std::uniform_int_distribution<size_t>(0, n - 1)(rng);  // cut the chunk somewhere
      d.reset = true;
    }
    up_bytes_since_plan += static_cast<int64_t>(d.forward);
    return d;
  }

  void Accept();
};

struct FaultProxy::Impl::Session : std::enable_shared_from_this<Session> {
  Impl& proxy;
  tcp::socket client, upstream;
  asio::steady_timer up_timer, down_timer;
  std::array<char, kChunkBytes> up_buf{}, down_buf{};
  bool closed = false;

  Session(Impl& p, tcp::socket accepted)
      : proxy(p), client(std::move(accepted)), upstream(p.io), up_timer(p.io), down_timer(p.io) {}

  void Start() {
    upstream.async_connect(proxy.target, [self = shared_from_this()](const error_code& ec) {
      if (ec) return self->Close(/*reset=*/false);
      error_code ignored;
      self->client.set_option(tcp::no_delay(true), ignored);
      self->upstream.set_option(tcp::no_delay(true), ignored);
      self->Pump(true);
      self->Pump(false);
    });
  }

  // One direction: read a chunk, decide, wait, write it on, read again. Either side closing
  // (or failing) closes both: the links this proxy serves are long-lived, and a half-open
  // connection would only hide the fault.
  void Pump(bool up) {
    if (closed) return;
    tcp::socket& from = up ? client : upstream;
    auto& buf = up ? up_buf : down_buf;
    from.async_read_some(asio::buffer(buf), [self = shared_from_this(), up](const error_code& ec, size_t n) {
      if (self->closed) return;
      if (ec) return self->Close(/*reset=*/false);
      auto& b = up ? self->up_buf : self->down_buf;
      const Decision d = self->proxy.Decide(up, b.data(), n);
      auto& timer = up ? self->up_timer : self->down_timer;
      timer.expires_after(d.delay);
      timer.async_wait([self, up, d](const error_code& ec) {
        if (self->closed || ec) return;
        tcp::socket& to = up ? self->upstream : self->client;
        auto& b = up ? self->up_buf : self->down_buf;
        asio::async_write(to, asio::buffer(b.data(), d.forward), [self, up, d](const error_code& ec, size_t written) {
          if (self->closed) return;
          if (up) {
            std::lock_guard<std::mutex> lock(self->proxy.mutex);
            self->proxy.counters.bytes_forwarded += written;
          }
          if (ec) return self->Close(/*reset=*/false);
          if (d.reset) return self->Close(/*reset=*/true);
          self->Pump(up);
        });
      });
    });
  }

  void Close(bool reset) {
    if (closed) return;
    closed = true;
    error_code ignored;
    if (reset) {
      // SO_LINGER 0: close() sends RST instead of FIN, on both sides.
      client.set_option(asio::socket_base::linger(true, 0), ignored);
      upstream.set_option(asio::socket_base::linger(true, 0), ignored);
      std::lock_guard<std::mutex> lock(proxy.mutex);
      ++proxy.counters.resets;
    }
    up_timer.cancel();
    down_timer.cancel();
    client.close(ignored);
    upstream.close(ignored);
  }
};

void FaultProxy::Impl::Accept() {
  acceptor.async_accept([this](const error_code& ec, tcp::socket socket) {
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
      return Accept();
    }
    {
      std::lock_guard<std::mutex> lock(mutex);
      ++counters.connections;
    }
    auto session = std::make_shared<Session>(*this, std::move(socket));
    std::erase_if(sessions, [](const std::weak_ptr<Session>& w) { return w.expired(); });
    sessions.push_back(session);
    session->Start();
    Accept();
  });
}

StatusOr<std::unique_ptr<FaultProxy>> FaultProxy::Start(FaultProxyOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->rng.seed(options.seed);
  error_code ec;
  auto target_address = asio::ip::make_address(options.target_host, ec);
  if (ec) return InvalidArgumentError("fault proxy: target host '" + options.target_host + "' is not an IP address");
  impl->target = tcp::endpoint(target_address, options.target_port);
  auto listen_address = asio::ip::make_address(options.listen_host, ec);
  if (ec) return InvalidArgumentError("fault proxy: listen host '" + options.listen_host + "' is not an IP address");
  const tcp::endpoint local(listen_address, options.listen_port);
  impl->acceptor.open(local.protocol(), ec);
  if (!ec) impl->acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) impl->acceptor.bind(local, ec);
  if (!ec) impl->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return UnavailableError("fault proxy: cannot listen on " + options.listen_host + ":" +
                            std::to_string(options.listen_port) + ": " + ec.message());
  }
  std::fprintf(stderr, "[fault proxy %s] %s:%u -> %s:%u, seed %llu\n", options.name.c_str(), options.listen_host.c_str(),
               impl->acceptor.local_endpoint().port(), options.target_host.c_str(), options.target_port,
               static_cast<unsigned long long>(options.seed));
  impl->Accept();
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->io.run(); });
  return std::unique_ptr<FaultProxy>(new FaultProxy(std::move(impl)));
}

FaultProxy::FaultProxy(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

FaultProxy::~FaultProxy() {
  asio::post(impl_->io, [impl = impl_.get()] {
    error_code ignored;
    impl->acceptor.close(ignored);
    for (auto& w : impl->sessions)
      if (auto s = w.lock()) s->Close(/*reset=*/false);
  });
  // Closing cancels every pending operation; run() returns once their handlers have run.
  if (impl_->thread.joinable()) impl_->thread.join();
}

uint16_t FaultProxy::port() const { return impl_->acceptor.local_endpoint().port(); }

std::string FaultProxy::address() const { return impl_->options.listen_host + ":" + std::to_string(port()); }

void FaultProxy::SetPlan(const FaultPlan& plan) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->plan = plan;
  impl_->up_bytes_since_plan = 0;
}

void FaultProxy::ResetAll() {
  asio::post(impl_->io, [impl = impl_.get()] {
    for (auto& w : impl->sessions)
      if (auto s = w.lock()) s->Close(/*reset=*/true);
  });
}

FaultProxyCounters FaultProxy::counters() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->counters;
}

StatusOr<uint16_t> PickFreePort(const std::string& host) {
  asio::io_context io;
  error_code ec;
  auto address = asio::ip::make_address(host, ec);
  if (ec) return InvalidArgumentError("'" + host + "' is not an IP address");
  tcp::acceptor acceptor(io);
  const tcp::endpoint local(address, 0);
  acceptor.open(local.protocol(), ec);
  if (!ec) acceptor.bind(local, ec);
  if (ec) return UnavailableError("cannot bind " + host + ":0: " + ec.message());
  return acceptor.local_endpoint().port();
}

}  // namespace xcpipe::testing
