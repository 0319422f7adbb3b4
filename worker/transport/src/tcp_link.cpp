// Boost 1.74's Asio needs <utility> before its headers under C++20.
#include <utility>

#include "xcpipe/transport/tcp_link.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/system/system_error.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>

#include "xcpipe/transport/checksum.h"

namespace xcpipe::transport {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

// ---------------------------------------------------------------------------------------------
// Wake-ups and waiting
// ---------------------------------------------------------------------------------------------

// An eventfd that Close() makes readable for good; every wait includes it.
class WakeSignal {
 public:
  WakeSignal() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
  ~WakeSignal() {
    if (fd_ >= 0) ::close(fd_);
  }
  WakeSignal(const WakeSignal&) = delete;
  WakeSignal& operator=(const WakeSignal&) = delete;
  bool ok() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  void Signal() {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(fd_, &one, sizeof(one));
  }

 private:
  int fd_;
};

namespace {

// Tunables of the byte pumps (named here, read nowhere else).
// Preambles and headers come through a small read-ahead buffer (one read usually brings both);
// tensor bytes are read in place with scatter reads, so they are copied once, by the kernel.
constexpr size_t kReadAheadBytes = size_t{16} << 10;
constexpr size_t kDirectReadThreshold = kReadAheadBytes;  // larger header remainders are read in place
constexpr size_t kDirectReadChunk = size_t{512} << 10;    // checksummed while still in L2
constexpr size_t kMaxGatherBuffers = 64;                  // Asio's per-call buffer limit on Linux
constexpr int kListenBacklog = 16;

enum class WaitResult { kReady, kTimeout, kWoken, kError };

// Waits until one of `fds` (the last one is the wake signal) has an event, the deadline passes
// or Close() signals. Retries on EINTR; returns kTimeout only once the deadline has passed.
WaitResult WaitFor(pollfd* fds, nfds_t count, Deadline deadline) {
  for (;;) {
    for (nfds_t i = 0; i < count; ++i) fds[i].revents = 0;
    auto remaining = deadline - Clock::now();
    if (remaining < Clock::duration::zero()) remaining = Clock::duration::zero();
    auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(remaining).count();
    timespec ts{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
    int r = ::ppoll(fds, count, &ts, nullptr);
    if (r < 0) {
      if (errno == EINTR) continue;
      return WaitResult::kError;
    }
    if (fds[count - 1].revents != 0) return WaitResult::kWoken;
    if (r > 0) return WaitResult::kReady;
    if (Clock::now() >= deadline) return WaitResult::kTimeout;
  }
}

std::string Millis(Clock::duration d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + " ms";
}

bool WouldBlock(const error_code& ec) { return ec == asio::error::would_block || ec == asio::error::try_again; }

// Best effort: a socket without these options still works, only slower.
void TuneSocket(tcp::socket& socket, int buffer_bytes) {
  error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);
  if (buffer_bytes > 0) {
    socket.set_option(asio::socket_base::send_buffer_size(buffer_bytes), ignored);
    socket.set_option(asio::socket_base::receive_buffer_size(buffer_bytes), ignored);
  }
}

StatusOr<std::vector<tcp::endpoint>> Resolve(asio::io_context& io, const TcpEndpoint& endpoint) {
  error_code ec;
  auto address = asio::ip::make_address(endpoint.host, ec);
  if (!ec) return std::vector<tcp::endpoint>{tcp::endpoint(address, endpoint.port)};
  // A host name: the system resolver bounds its own time (resolv.conf timeout/attempts).
  tcp::resolver resolver(io);
  auto results = resolver.resolve(endpoint.host, std::to_string(endpoint.port), ec);
  if (ec) return UnavailableError("cannot resolve '" + endpoint.host + "': " + ec.message());
  std::vector<tcp::endpoint> out;
  for (const auto& entry : results) out.push_back(entry.endpoint());
  if (out.empty()) return UnavailableError("'" + endpoint.host + "' resolves to no address");
  return out;
}

std::string PeerName(const tcp::socket& socket) {
  error_code ec;
  auto ep = socket.remote_endpoint(ec);
  if (ec) return "?";
  std::string host = ep.address().to_string();
  if (ep.address().is_v6()) host = "[" + host + "]";
  return host + ":" + std::to_string(ep.port());
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// TcpEndpoint
// ---------------------------------------------------------------------------------------------

StatusOr<TcpEndpoint> TcpEndpoint::Parse(std::string_view text) {
  std::string_view host, port;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return InvalidArgumentError("address '" + std::string(text) + "': expected [ipv6]:port");
    }
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      return InvalidArgumentError("address '" + std::string(text) + "' has no port; expected host:port");
    }
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      return InvalidArgumentError("address '" + std::string(text) + "': write IPv6 addresses as [addr]:port");
    }
  }
  if (host.empty()) return InvalidArgumentError("address '" + std::string(text) + "' has no host; expected host:port");
  if (port.empty() || port.size() > 5 ||
      !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return InvalidArgumentError("address '" + std::string(text) + "': port must be a number 0-65535");
  }
  unsigned value = std::stoul(std::string(port));
  if (value > 65535) return InvalidArgumentError("address '" + std::string(text) + "': port must be 0-65535");
  return TcpEndpoint{std::string(host), static_cast<uint16_t>(value)};
}

std::string TcpEndpoint::ToString() const {
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

// ---------------------------------------------------------------------------------------------
// TcpSenderLink
// ---------------------------------------------------------------------------------------------

struct TcpSenderLink::Impl {
  asio::io_context io;  // owns no thread: sockets need an executor, nothing runs on it
  std::optional<tcp::socket> socket;
  std::vector<uint32_t> checksums;
  std::vector<asio::const_buffer> gather;
  std::vector<asio::const_buffer> window;

  void Drop(LinkCounters& counters) {
    if (!socket) return;
    error_code ignored;
    socket->close(ignored);
    socket.reset();
    counters.dropped.fetch_add(1, std::memory_order_relaxed);
  }
};

TcpSenderLink::TcpSenderLink(TcpEndpoint peer, TcpLinkOptions options)
    : peer_(std::move(peer)),
      options_(std::move(options)),
      impl_(std::make_unique<Impl>()),
      wake_(std::make_unique<WakeSignal>()) {}

TcpSenderLink::~TcpSenderLink() { Close(); }

StatusOr<std::unique_ptr<TcpSenderLink>> TcpSenderLink::Create(TcpEndpoint peer, TcpLinkOptions options) {
  if (peer.host.empty()) return InvalidArgumentError("next-stage address has no host; expected host:port");
  if (peer.port == 0)
    return InvalidArgumentError("next-stage address " + peer.ToString() +
                                " has port 0; expected the port it listens on");
  try {
    std::unique_ptr<TcpSenderLink> link(new TcpSenderLink(std::move(peer), std::move(options)));
    if (!link->wake_->ok()) return InternalError(std::string("eventfd: ") + std::strerror(errno));
    return link;
  } catch (const std::exception& e) {
    return InternalError(std::string("creating the sender link: ") + e.what());
  }
}

void TcpSenderLink::Close() {
  if (closed_.exchange(true)) return;
  wake_->Signal();
  std::lock_guard lock(mutex_);  // the call in flight (if any) has been woken and returns
  error_code ignored;
  if (impl_->socket) impl_->socket->close(ignored);
  impl_->socket.reset();
  state_ = State::kClosed;
}

Status TcpSenderLink::Connect(Deadline deadline) {
  std::lock_guard lock(mutex_);
  try {
    return ConnectLocked(deadline);
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError("connecting to the next stage: out of memory");
  } catch (const std::exception& e) {
    return InternalError(std::string("connecting to the next stage: ") + e.what());
  }
}

Status TcpSenderLink::ConnectLocked(Deadline deadline) {
  if (closed_) return CancelledError("data-plane link to " + peer_.ToString() + " is closed");
  Impl& impl = *impl_;
  if (impl.socket) {
    // The receiver never writes: anything readable means it closed, reset or misbehaves.
    pollfd pfd{impl.socket->native_handle(), POLLIN | POLLRDHUP, 0};
    if (::poll(&pfd, 1, 0) == 0) return OkStatus();
    impl.Drop(counters_);
  }
  state_ = State::kConnecting;
  const auto started = Clock::now();
  auto backoff = options_.connect_backoff_initial;
  int attempts = 0;
  std::string last_error = "none";
  for (;;) {
    auto endpoints = Resolve(impl.io, peer_);
    if (!endpoints.ok()) {
      last_error = endpoints.status().message();
    } else {
      for (const auto& ep : *endpoints) {
        ++attempts;
        tcp::socket socket(impl.io);
        error_code ec;
        socket.open(ep.protocol(), ec);
        if (ec) {
          last_error = "socket: " + ec.message();
          continue;
        }
        TuneSocket(socket, options_.socket_buffer_bytes);
        socket.non_blocking(true, ec);
        int rc = ::connect(socket.native_handle(), ep.data(), static_cast<socklen_t>(ep.size()));
        int err = rc == 0 ? 0 : errno;
        if (err == EINPROGRESS) {
          pollfd fds[2] = {{socket.native_handle(), POLLOUT, 0}, {wake_->fd(), POLLIN, 0}};
          WaitResult w = WaitFor(fds, 2, deadline);
          if (w == WaitResult::kWoken) return CancelledError("data-plane link to " + peer_.ToString() + " is closed");
          if (w != WaitResult::kReady) {
            last_error = "connect timed out";
            continue;
          }
          socklen_t len = sizeof(err);
          if (::getsockopt(socket.native_handle(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
        }
        if (err != 0) {
          last_error = std::strerror(err);
          continue;
        }
        // Connecting to a port in the ephemeral range with nobody listening can make the
        // kernel connect the socket to itself (TCP simultaneous open); never accept that.
        auto local = socket.local_endpoint(ec);
        auto remote = socket.remote_endpoint(ec);
        if (ec || local == remote) {
          last_error = ec ? ec.message() : "connected to itself (no listener)";
          continue;
        }
        impl.socket.emplace(std::move(socket));
        state_ = State::kConnected;
        counters_.opened.fetch_add(1, std::memory_order_relaxed);
        return OkStatus();
      }
    }
    auto now = Clock::now();
    if (now >= deadline) {
      state_ = State::kDisconnected;
      return UnavailableError("could not connect to the next stage at " + peer_.ToString() + " within " +
                              Millis(now - started) + " (" + std::to_string(attempts) +
                              " attempts); last error: " + last_error);
    }
    pollfd wake{wake_->fd(), POLLIN, 0};
    if (WaitFor(&wake, 1, std::min(deadline, now + backoff)) == WaitResult::kWoken) {
      return CancelledError("data-plane link to " + peer_.ToString() + " is closed");
    }
    backoff = std::min(backoff * 2, options_.connect_backoff_max);
  }
}

Status TcpSenderLink::Send(const StageMessage& message, Deadline deadline, PayloadMode mode) {
  std::lock_guard lock(mutex_);
  try {
    return SendLocked(message, deadline, mode);
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError("sending to the next stage: out of memory");
  } catch (const std::exception& e) {  // boost::system::system_error included
    return InternalError(std::string("sending to the next stage: ") + e.what());
  }
}

Status TcpSenderLink::SendLocked(const StageMessage& message, Deadline deadline, PayloadMode mode) {
  if (closed_) return CancelledError("data-plane link to " + peer_.ToString() + " is closed");
  XCPIPE_RETURN_IF_ERROR(ValidateOutgoing(message, options_.limits).WithContext("refusing to send"));
  Impl& impl = *impl_;
  const bool in_band = mode == PayloadMode::kInBand;
  if (in_band) {
    for (const auto& t : message.tensors) {
      if (t.location() != MemoryLocation::kHost) {
        return InvalidArgumentError("refusing to send: tensor '" + t.name() +
                                    "' is in CUDA device memory; the TCP data plane sends host memory only");
      }
    }
  }
  const ChecksumKind kind = in_band && options_.checksum ? ChecksumKind::kCrc32c : ChecksumKind::kNone;
  impl.checksums.clear();
  if (kind == ChecksumKind::kCrc32c) {
    for (const auto& t : message.tensors) impl.checksums.push_back(Crc32c(t.bytes()));
  }
  XCPIPE_ASSIGN_OR_RETURN(std::vector<std::byte> header, EncodeStageHeader(message, kind, impl.checksums));
  if (header.size() > options_.limits.max_header_bytes) {
    return InvalidArgumentError("refusing to send: the header is " + std::to_string(header.size()) +
                                " bytes, over the limit of " + std::to_string(options_.limits.max_header_bytes) +
                                " (too many segments or tensors?)");
  }
  FramePreamble preamble;
  preamble.flags = in_band ? 0 : kFlagPayloadOutOfBand;
  preamble.header_bytes = static_cast<uint32_t>(header.size());
  preamble.header_crc32c = Crc32c(header);
  preamble.payload_bytes = in_band ? message.payload_bytes() : 0;
  const auto preamble_bytes = EncodePreamble(preamble);

  impl.gather.clear();
  impl.gather.emplace_back(preamble_bytes.data(), preamble_bytes.size());
  impl.gather.emplace_back(header.data(), header.size());
  if (in_band) {
    for (const auto& t : message.tensors) {
      if (t.byte_length() > 0) impl.gather.emplace_back(t.bytes().data(), t.bytes().size());
    }
  }
  const uint64_t total = kPreambleBytes + header.size() + preamble.payload_bytes;

  std::string last_error;
  auto backoff = options_.connect_backoff_initial;
  for (int attempt = 0;; ++attempt) {
    XCPIPE_RETURN_IF_ERROR(ConnectLocked(deadline));
    // Write the whole gather list with non-blocking writev + ppoll.
    uint64_t written = 0;
    size_t index = 0, offset = 0;
    error_code ec;
    while (written < total) {
      impl.window.clear();
      for (size_t i = index; i < impl.gather.size() && impl.window.size() < kMaxGatherBuffers; ++i) {
        const auto& b = impl.gather[i];
        impl.window.push_back(i == index ? b + offset : b);
      }
      size_t n = impl.socket->write_some(impl.window, ec);
      if (n > 0) {
        written += n;
        counters_.bytes.fetch_add(n, std::memory_order_relaxed);
        while (n > 0) {
          size_t left = impl.gather[index].size() - offset;
          if (n >= left) {
            n -= left;
            ++index;
            offset = 0;
          } else {
            offset += n;
            n = 0;
          }
        }
        continue;
      }
      if (ec && !WouldBlock(ec)) break;
      pollfd fds[2] = {{impl.socket->native_handle(), POLLOUT, 0}, {wake_->fd(), POLLIN, 0}};
      WaitResult w = WaitFor(fds, 2, deadline);
      if (w == WaitResult::kWoken) return CancelledError("data-plane link to " + peer_.ToString() + " is closed");
      if (w == WaitResult::kTimeout) {
        if (written == 0) {
          return DeadlineExceededError("the next stage at " + peer_.ToString() + " took none of a " +
                                       std::to_string(total) +
                                       "-byte frame before the deadline (it is not reading); connection kept");
        }
        impl.Drop(counters_);
        state_ = State::kDisconnected;
        return DeadlineExceededError("the next stage at " + peer_.ToString() + " took " + std::to_string(written) +
                                     " of " + std::to_string(total) +
                                     " bytes of a frame before the deadline; connection dropped (the receiver "
                                     "discards the partial frame)");
      }
      if (w == WaitResult::kError) {
        ec = error_code(errno, boost::system::system_category());
        break;
      }
    }
    if (written == total) {
      counters_.messages.fetch_add(1, std::memory_order_relaxed);
      return OkStatus();
    }
    // The connection failed under us (reset, broken pipe): the receiver drops whatever part
    // arrived, so reconnect and write the whole frame again while the deadline allows.
    last_error = ec.message();
    impl.Drop(counters_);
    state_ = State::kDisconnected;
    auto now = Clock::now();
    if (now >= deadline) {
      return UnavailableError("sending to the next stage at " + peer_.ToString() + " failed after " +
                              std::to_string(attempt + 1) + " attempts: " + last_error);
    }
    pollfd wake{wake_->fd(), POLLIN, 0};
    if (WaitFor(&wake, 1, std::min(deadline, now + backoff)) == WaitResult::kWoken) {
      return CancelledError("data-plane link to " + peer_.ToString() + " is closed");
    }
    backoff = std::min(backoff * 2, options_.connect_backoff_max);
  }
}

// ---------------------------------------------------------------------------------------------
// TcpReceiverLink
// ---------------------------------------------------------------------------------------------

namespace {
enum class Progress : uint8_t { kWouldBlock, kComplete, kPeerClosedBetweenFrames };
using Phase = TcpFrameReader::Phase;
}  // namespace

struct TcpReceiverLink::Impl {
  Impl(const TcpLinkOptions& options, HostBufferPool& pool)
      : reader(FrameReaderOptions{options.limits, PayloadMode::kInBand, options.require_checksum}, pool) {}

  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::optional<tcp::socket> conn;
  std::optional<tcp::socket> candidate;  // a newer connection, not yet sending
  std::string peer = "?";

  // Read-ahead: small pieces (preambles, headers, small tensors) come through here so a small
  // hand-off costs one or two reads; large tensor bytes are read in place.
  std::vector<std::byte> stage = std::vector<std::byte>(kReadAheadBytes);
  size_t stage_begin = 0, stage_end = 0;

  // The frame being read: its parser, and the scatter list of a read straight into place.
  TcpFrameReader reader;
  std::vector<asio::mutable_buffer> scatter;

  bool mid_frame() const { return reader.frame_got() > 0 || stage_end > stage_begin; }

  void DropConnection() {
    error_code ignored;
    if (conn) conn->close(ignored);
    conn.reset();
    stage_begin = stage_end = 0;
    reader.Reset();
  }
};

TcpReceiverLink::TcpReceiverLink(TcpLinkOptions options)
    : options_(std::move(options)),
      pool_(std::make_unique<HostBufferPool>(options_.receive_pool_max_cached_bytes)),
      impl_(std::make_unique<Impl>(options_, *pool_)),
      wake_(std::make_unique<WakeSignal>()) {}

TcpReceiverLink::~TcpReceiverLink() { Close(); }

StatusOr<std::unique_ptr<TcpReceiverLink>> TcpReceiverLink::Listen(TcpEndpoint local, TcpLinkOptions options) {
  if (local.host.empty()) {
    return InvalidArgumentError(
        "listen address has no host; name the interface explicitly (e.g. 127.0.0.1 or the "
        "data-network address of this host)");
  }
  try {
    std::unique_ptr<TcpReceiverLink> link(new TcpReceiverLink(std::move(options)));
    if (!link->wake_->ok()) return InternalError(std::string("eventfd: ") + std::strerror(errno));
    Impl& impl = *link->impl_;
    XCPIPE_ASSIGN_OR_RETURN(auto endpoints, Resolve(impl.io, local));
    const tcp::endpoint ep = endpoints.front();
    if (ep.address().is_unspecified() && !link->options_.allow_wildcard_listen) {
      return InvalidArgumentError("refusing to listen on the wildcard address " + local.ToString() +
                                  "; name the interface the previous stage reaches (or set allow_wildcard_listen)");
    }
    error_code ec;
    impl.acceptor.open(ep.protocol(), ec);
    if (!ec) impl.acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec && link->options_.socket_buffer_bytes > 0) {
      // Set before listen() so accepted sockets inherit it and the window scale fits it.
      impl.acceptor.set_option(asio::socket_base::receive_buffer_size(link->options_.socket_buffer_bytes), ec);
    }
    if (!ec) impl.acceptor.bind(ep, ec);
    if (!ec) impl.acceptor.listen(kListenBacklog, ec);
    if (!ec) impl.acceptor.non_blocking(true, ec);
    if (ec) return UnavailableError("cannot listen on " + local.ToString() + ": " + ec.message());
    auto bound = impl.acceptor.local_endpoint(ec);
    if (ec) return UnavailableError("cannot listen on " + local.ToString() + ": " + ec.message());
    link->local_ = TcpEndpoint{local.host, bound.port()};
    return link;
  } catch (const std::exception& e) {
    return InternalError("listening on " + local.ToString() + ": " + e.what());
  }
}

void TcpReceiverLink::Close() {
  if (closed_.exchange(true)) return;
  wake_->Signal();
  std::lock_guard lock(mutex_);
  error_code ignored;
  impl_->DropConnection();
  if (impl_->candidate) impl_->candidate->close(ignored);
  impl_->candidate.reset();
  impl_->acceptor.close(ignored);
  state_ = State::kClosed;
}

Status TcpReceiverLink::ReserveReceiveBuffers(size_t bytes, size_t count) {
  // Each tensor is placed at a 64-byte boundary: leave room for a few of them.
  return pool_->Reserve(bytes + 16 * TcpFrameReader::kPayloadAlignment, count);
}

StatusOr<ReceivedFrame> TcpReceiverLink::Receive(Deadline deadline, PayloadMode expect) {
  std::lock_guard lock(mutex_);
  try {
    return ReceiveLocked(deadline, expect);
  } catch (const std::bad_alloc&) {
    impl_->DropConnection();
    return ResourceExhaustedError("receiving from the previous stage: out of memory");
  } catch (const std::exception& e) {  // boost::system::system_error included
    impl_->DropConnection();
    return InternalError(std::string("receiving from the previous stage: ") + e.what());
  }
}

StatusOr<ReceivedFrame> TcpReceiverLink::ReceiveLocked(Deadline deadline, PayloadMode expect) {
  Impl& impl = *impl_;
  const std::string where = "data-plane listener " + local_.ToString();
  auto cancelled = [&] { return CancelledError(where + " is closed"); };
  if (closed_) return cancelled();
  impl.reader.set_expect(expect);

  auto accept = [&](std::optional<tcp::socket>& into) -> Status {
    tcp::socket socket(impl.io);
    error_code ec;
    impl.acceptor.accept(socket, ec);
    if (WouldBlock(ec) || ec == asio::error::connection_aborted) return OkStatus();  // raced away
    if (ec) return UnavailableError(where + ": accept failed: " + ec.message());
    TuneSocket(socket, options_.socket_buffer_bytes);
    socket.non_blocking(true, ec);
    if (ec) return UnavailableError(where + ": " + ec.message());
    if (into) into->close(ec);
    into.emplace(std::move(socket));
    counters_.opened.fetch_add(1, std::memory_order_relaxed);
    return OkStatus();
  };
  auto drop = [&] {
    impl.DropConnection();
    counters_.dropped.fetch_add(1, std::memory_order_relaxed);
    state_ = State::kListening;
  };
  // Reads into the staging buffer; kWouldBlock, or an error naming how the peer went away.
  // Reads into `buffers` (one or a scatter list): true when bytes came, false when none are
  // there yet, or a Status naming how the peer went away.
  auto read_into = [&](const auto& buffers, size_t& got) -> StatusOr<bool> {
    error_code ec;
    got = impl.conn->read_some(buffers, ec);
    if (got > 0) {
      counters_.bytes.fetch_add(got, std::memory_order_relaxed);
      return true;
    }
    if (WouldBlock(ec)) return false;
    if (ec == asio::error::eof) {
      if (!impl.mid_frame()) return UnavailableError("");  // clean close between frames
      return UnavailableError(
          "the previous stage " + impl.peer + " closed the connection mid-frame after " +
          std::to_string(impl.reader.frame_got()) + " of " +
          (impl.reader.phase() == Phase::kPreamble ? std::string("?") : std::to_string(impl.reader.frame_total())) +
          " bytes; partial frame dropped");
    }
    return UnavailableError("reading from the previous stage " + impl.peer + ": " + ec.message());
  };
  auto read_some = [&](std::byte* dest, size_t len, size_t& got) -> StatusOr<bool> {
    return read_into(asio::buffer(dest, len), got);
  };
  auto refuse = [&](const Status& status) {
    counters_.refused.fetch_add(1, std::memory_order_relaxed);
    return status.WithContext("refused a frame from the previous stage " + impl.peer + " (connection dropped)");
  };

  // A Status from the frame reader: a check the bytes failed is a refusal; anything else (no
  // memory for the payload) is reported as it is.
  auto reader_error = [&](const Status& status) {
    if (status.code() == StatusCode::kInvalidArgument) return refuse(status);
    return status.WithContext("receiving from the previous stage " + impl.peer);
  };

  // Reads what is available and advances the frame; returns progress or a Status to report.
  auto advance = [&]() -> StatusOr<Progress> {
    TcpFrameReader& reader = impl.reader;
    for (;;) {
      if (reader.frame_ready()) return Progress::kComplete;
      // Refill the staging buffer when it is empty and the next piece is small.
      auto fill = [&]() -> StatusOr<bool> {
        size_t got = 0;
        XCPIPE_ASSIGN_OR_RETURN(bool any, read_some(impl.stage.data(), impl.stage.size(), got));
        if (any) impl.stage_end = got;
        return any;
      };
      // Bytes the read-ahead already holds go first (at most one staging buffer's worth).
      if (impl.stage_end > impl.stage_begin) {
        auto used = reader.Feed({impl.stage.data() + impl.stage_begin, impl.stage_end - impl.stage_begin});
        if (reader.phase() != Phase::kPreamble) state_ = State::kMidFrame;
        if (!used.ok()) return reader_error(used.status());
        impl.stage_begin += *used;
        if (impl.stage_begin == impl.stage_end) impl.stage_begin = impl.stage_end = 0;
        continue;
      }
      switch (reader.phase()) {
        case Phase::kPreamble: {
          auto any = fill();
          if (!any.ok()) {
            if (any.status().message().empty()) return Progress::kPeerClosedBetweenFrames;
            return any.status();
          }
          if (!*any) return Progress::kWouldBlock;
          continue;
        }
        case Phase::kHeader: {
          if (reader.header_remaining() < kDirectReadThreshold) {
            XCPIPE_ASSIGN_OR_RETURN(bool any, fill());
            if (!any) return Progress::kWouldBlock;
            continue;
          }
          // A large header: read in place.
          const std::span<std::byte> dest = reader.Targets().front();
          size_t n = 0;
          XCPIPE_ASSIGN_OR_RETURN(bool any, read_some(dest.data(), dest.size(), n));
          if (!any) return Progress::kWouldBlock;
          if (Status st = reader.Commit(n); !st.ok()) return reader_error(st);
          continue;
        }
        case Phase::kPayload: {
          // One scatter read straight into place: the rest of this tensor and the next ones, at
          // most kDirectReadChunk bytes so they are checksummed while still in cache.
          impl.scatter.clear();
          size_t planned = 0;
          for (std::span<std::byte> target : reader.Targets(kDirectReadChunk, kMaxGatherBuffers)) {
            impl.scatter.emplace_back(target.data(), target.size());
            planned += target.size();
          }
          // When this read can finish the frame, let it also bring the start of the next one
          // (preamble and header) into the empty read-ahead buffer: one read per hand-off.
          const bool read_ahead = planned == reader.payload_remaining();
          if (read_ahead) impl.scatter.emplace_back(impl.stage.data(), impl.stage.size());
          size_t n = 0;
          XCPIPE_ASSIGN_OR_RETURN(bool any, read_into(impl.scatter, n));
          if (!any) return Progress::kWouldBlock;
          if (read_ahead && n > planned) {
            impl.stage_begin = 0;
            impl.stage_end = n - planned;
            n = planned;
          }
          if (Status st = reader.Commit(n); !st.ok()) return reader_error(st);
          continue;
        }
        case Phase::kComplete:
          return Progress::kComplete;
        case Phase::kFailed:  // not reached: a failure drops the connection, which resets the reader
          return InternalError(where + ": the frame reader failed earlier");
      }
    }
  };

  for (;;) {
    if (closed_) return cancelled();
    if (!impl.conn) {
      if (impl.candidate) {
        impl.conn = std::move(impl.candidate);
        impl.candidate.reset();
        impl.peer = PeerName(*impl.conn);
        state_ = State::kConnected;
        continue;
      }
      pollfd fds[2] = {{impl.acceptor.native_handle(), POLLIN, 0}, {wake_->fd(), POLLIN, 0}};
      WaitResult w = WaitFor(fds, 2, deadline);
      if (w == WaitResult::kWoken) return cancelled();
      if (w == WaitResult::kTimeout) {
        return DeadlineExceededError(where + ": no connection from the previous stage before the deadline");
      }
      if (w == WaitResult::kError) return InternalError(where + ": ppoll: " + std::strerror(errno));
      XCPIPE_RETURN_IF_ERROR(accept(impl.conn));
      if (impl.conn) {
        impl.peer = PeerName(*impl.conn);
        state_ = State::kConnected;
      }
      continue;
    }

    auto progress = advance();
    if (!progress.ok()) {
      drop();
      return progress.status();
    }
    if (*progress == Progress::kPeerClosedBetweenFrames) {
      // A clean close between frames is how a sender leaves (or restarts): wait for the next.
      impl.DropConnection();
      state_ = State::kListening;
      continue;
    }
    if (*progress == Progress::kComplete) {
      auto out = impl.reader.TakeFrame();
      if (!out.ok()) {  // cannot happen: the header was validated
        drop();
        return InternalError(where + ": " + out.status().message());
      }
      state_ = State::kConnected;
      counters_.messages.fetch_add(1, std::memory_order_relaxed);
      return out;
    }

    // Nothing to read now: wait for bytes, a newer connection, the deadline or Close().
    pollfd fds[4];
    nfds_t count = 0;
    fds[count++] = {impl.conn->native_handle(), POLLIN, 0};
    fds[count++] = {impl.acceptor.native_handle(), POLLIN, 0};
    const nfds_t candidate_index = count;
    if (impl.candidate) fds[count++] = {impl.candidate->native_handle(), POLLIN, 0};
    fds[count++] = {wake_->fd(), POLLIN, 0};
    WaitResult w = WaitFor(fds, count, deadline);
    if (w == WaitResult::kWoken) return cancelled();
    if (w == WaitResult::kError) return InternalError(where + ": ppoll: " + std::strerror(errno));
    if (w == WaitResult::kTimeout) {
      if (impl.mid_frame()) {
        return DeadlineExceededError(where + ": deadline passed " + std::to_string(impl.reader.frame_got()) +
                                     " bytes into a frame from " + impl.peer + "; the next Receive resumes it");
      }
      return DeadlineExceededError(where + ": no message from the previous stage " + impl.peer +
                                   " before the deadline");
    }
    if (fds[1].revents != 0) XCPIPE_RETURN_IF_ERROR(accept(impl.candidate));
    if (impl.candidate && count == 4 && fds[candidate_index].revents != 0) {
      // The newer connection has something to say. If it only closed, forget it; if it sends,
      // the previous stage restarted: it replaces the current connection.
      std::byte probe;
      ssize_t n = ::recv(impl.candidate->native_handle(), &probe, 1, MSG_PEEK | MSG_DONTWAIT);
      if (n <= 0 && !(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))) {
        error_code ignored;
        impl.candidate->close(ignored);
        impl.candidate.reset();
      } else if (n > 0) {
        const bool was_mid_frame = impl.mid_frame();
        const uint64_t got = impl.reader.frame_got();
        const std::string old_peer = impl.peer;
        drop();
        impl.conn = std::move(impl.candidate);
        impl.candidate.reset();
        impl.peer = PeerName(*impl.conn);
        state_ = State::kConnected;
        if (was_mid_frame) {
          return UnavailableError(where + ": the previous stage reconnected from " + impl.peer +
                                  " while a frame from " + old_peer + " was " + std::to_string(got) +
                                  " bytes in; dropped the partial frame and switched to the new connection");
        }
      }
    }
  }
}

}  // namespace xcpipe::transport
