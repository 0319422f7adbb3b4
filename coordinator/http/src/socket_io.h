// Blocking socket I/O with deadlines for the gateway's connection threads (and its fetches of
// remote images): a slow or silent peer cannot hold a thread past the deadline.
#pragma once

// Boost 1.74 Asio needs <utility> before its headers under C++20.
#include <utility>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include <algorithm>
#include <boost/beast/core.hpp>
#include <chrono>
#include <string_view>

namespace xcpipe::http {

using Clock = std::chrono::steady_clock;
namespace beast = boost::beast;

// Beast SyncReadStream over a blocking socket, with one deadline for everything read until it
// is moved: a slow or silent client cannot hold a thread past it.
class DeadlineStream {
 public:
  explicit DeadlineStream(int fd) : fd_(fd) {}
  void set_deadline(Clock::time_point deadline) { deadline_ = deadline; }

  template <class MutableBufferSequence>
  size_t read_some(const MutableBufferSequence& buffers, beast::error_code& ec) {
    ec = {};
    for (auto it = boost::asio::buffer_sequence_begin(buffers); it != boost::asio::buffer_sequence_end(buffers); ++it) {
      boost::asio::mutable_buffer b = *it;
      if (b.size() == 0) continue;
      for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - Clock::now()).count();
        if (left <= 0) {
          ec = beast::error::timeout;
          return 0;
        }
        pollfd p{fd_, POLLIN, 0};
        const int r = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
        if (r < 0 && errno != EINTR) {
          ec = beast::error_code(errno, boost::system::system_category());
          return 0;
        }
        if (r <= 0) continue;
        const ssize_t n = ::recv(fd_, b.data(), b.size(), 0);
        if (n == 0) {
          ec = boost::asio::error::eof;
          return 0;
        }
        if (n < 0) {
          if (errno == EINTR || errno == EAGAIN) continue;
          ec = beast::error_code(errno, boost::system::system_category());
          return 0;
        }
        return static_cast<size_t>(n);
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
  int fd_;
  Clock::time_point deadline_ = Clock::now();
};

// Writes all of `data` before `deadline`; false when the peer is gone or too slow.
inline bool WriteAll(int fd, std::string_view data, Clock::time_point deadline) {
  while (!data.empty()) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, POLLOUT, 0};
    const int r = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
    if (r < 0 && errno != EINTR) return false;
    if (r <= 0) continue;
    if (p.revents & (POLLERR | POLLHUP)) return false;
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return false;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

}  // namespace xcpipe::http
