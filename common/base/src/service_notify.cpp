#include "xcpipe/base/service_notify.h"

#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include <cstdlib>
#include <string>

namespace xcpipe::service {
namespace {

bool Send(const std::string& state) {
  if (!NotifyEnabled()) return false;
  // unset_environment = 0: child processes (none today) may notify too.
  const int r = sd_notify(0, state.c_str());
  if (r <= 0) {
    spdlog::debug("sd_notify({}) returned {}", state, r);
    return false;
  }
  return true;
}

}  // namespace

bool NotifyEnabled() {
  const char* socket = std::getenv("NOTIFY_SOCKET");
  return socket != nullptr && *socket != '\0';
}

bool NotifyReady() { return Send("READY=1"); }
bool NotifyWatchdog() { return Send("WATCHDOG=1"); }
bool NotifyStopping() { return Send("STOPPING=1"); }

bool NotifyStatus(std::string_view text) {
  std::string line(text);
  for (char& c : line)
    if (c == '\n') c = ' ';
  return Send("STATUS=" + line);
}

std::chrono::microseconds WatchdogInterval() {
  uint64_t usec = 0;
  // Checks WATCHDOG_PID against our pid too; 0 = not enabled, < 0 = malformed variables.
  if (sd_watchdog_enabled(0, &usec) <= 0) return std::chrono::microseconds{0};
  return std::chrono::microseconds{static_cast<int64_t>(usec)};
}

WatchdogPinger::WatchdogPinger() : period_(WatchdogInterval() / 2) {}

void WatchdogPinger::Tick() {
  if (period_.count() <= 0) return;
  const auto now = std::chrono::steady_clock::now();
  if (now < next_) return;
  next_ = now + period_;
  NotifyWatchdog();
}

}  // namespace xcpipe::service
