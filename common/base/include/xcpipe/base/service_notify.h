// Service-manager notification: tells systemd (a `Type=notify` unit) that the process is ready,
// still alive, or stopping, over the datagram socket named by $NOTIFY_SOCKET (sd_notify(3)).
//
// Every function is a no-op returning false when NOTIFY_SOCKET is unset (a process started by
// hand, by Slurm or by a test), so mains call them unconditionally. Thread-safe (each call is
// one datagram). Failures are never fatal: a lost notification makes systemd time the unit out,
// which is the supervisor's call, not ours; they are logged once at debug level.
//
// Who sends what (deploy/systemd):
//   xcpipe-worker       READY=1 once its stage has loaded; WATCHDOG=1 from its poll loop
//   xcpipe-coordinator  READY=1 once the cluster serves;    WATCHDOG=1 from its loop
//   both                STOPPING=1 when a signal starts the graceful drain; STATUS= lines
#pragma once

#include <chrono>
#include <string_view>

namespace xcpipe::service {

// True when a service manager listens (NOTIFY_SOCKET is set).
bool NotifyEnabled();
// READY=1: the service is up (systemd ends `start` and runs dependent units).
bool NotifyReady();
// WATCHDOG=1: the main loop is alive; must come more often than WatchdogUsec.
bool NotifyWatchdog();
// STOPPING=1: a graceful stop has begun.
bool NotifyStopping();
// STATUS=<text>: one line shown by `systemctl status`.
bool NotifyStatus(std::string_view text);

// The watchdog period systemd expects (WATCHDOG_USEC for this pid), or zero when no watchdog is
// enabled. Callers ping at half of it.
std::chrono::microseconds WatchdogInterval();

// Rate limiter for WATCHDOG=1 from a loop that spins faster than the watchdog needs: Tick() sends
// at most once per half interval (nothing when the watchdog is off). Not thread-safe: one per loop.
class WatchdogPinger {
 public:
  WatchdogPinger();
  void Tick();

 private:
  std::chrono::microseconds period_{0};
  std::chrono::steady_clock::time_point next_{};
};

}  // namespace xcpipe::service
