#include "xcpipe/base/stop_signals.h"

#include <fcntl.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <mutex>

namespace xcpipe {
namespace {

// The self-pipe: created once, never closed (the handlers outlive every StopSignals).
int g_pipe[2] = {-1, -1};

void OnStopSignal(int signo) {
  const int saved_errno = errno;
  const unsigned char byte = static_cast<unsigned char>(signo);
  [[maybe_unused]] ssize_t n = ::write(g_pipe[1], &byte, 1);  // non-blocking: a full pipe drops it
  errno = saved_errno;
}

bool MakePipe() {
  static std::once_flag once;
  static bool ok = false;
  std::call_once(once, [] { ok = ::pipe2(g_pipe, O_CLOEXEC | O_NONBLOCK) == 0; });
  return ok;
}

}  // namespace

const char* StopSignalName(int signal) {
  switch (signal) {
    case SIGTERM:
      return "SIGTERM";
    case SIGINT:
      return "SIGINT";
  }
  return "a signal";
}

StopSignals::StopSignals(std::function<void(int)> on_signal) : on_signal_(std::move(on_signal)) {
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (!MakePipe() || wake_fd_ < 0) {
    spdlog::warn("SIGTERM/SIGINT keep their default action: cannot create a pipe for them: {}", std::strerror(errno));
    return;
  }
  // Drop signals a previous instance left unread: they were meant for another object.
  unsigned char stale[64];
  while (::read(g_pipe[0], stale, sizeof(stale)) > 0) {
  }
  struct sigaction sa {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
  installed_ = true;
  thread_ = std::thread([this] { Loop(); });
}

StopSignals::~StopSignals() {
  if (thread_.joinable()) {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd_, &one, sizeof(one));
    thread_.join();
  }
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void StopSignals::Loop() {
  for (;;) {
    pollfd fds[2] = {{g_pipe[0], POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      spdlog::warn("stop signals: poll: {}", std::strerror(errno));
      return;
    }
    if (fds[1].revents != 0) return;
    unsigned char signals[16];
    const ssize_t n = ::read(g_pipe[0], signals, sizeof(signals));
    for (ssize_t i = 0; i < n; ++i) on_signal_(signals[i]);
  }
}

}  // namespace xcpipe
