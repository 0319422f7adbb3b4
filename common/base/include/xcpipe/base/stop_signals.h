// StopSignals: SIGTERM and SIGINT for a binary's main(). Library code never installs signal
// handlers; main() makes one of these around the object it runs and says what a signal asks of
// that object, typically through a stop method:
//
//   worker::WorkerActor actor(std::move(options));
//   StopSignals signals([&actor](int) { actor.RequestStop(); });
//   return actor.Run();
//
// How: the handlers (sigaction, SA_RESTART) only write the signal's number to a self-pipe, which
// is async-signal-safe; a thread of this object reads the pipe and calls `on_signal` there, so
// on_signal may log, lock and allocate. The handlers stay installed for the life of the process:
// a signal arriving after the object is gone is read by nobody and changes nothing (a process
// on its way out with its own exit code is not killed by a late SIGTERM).
//
// Names for the log: StopSignalName(SIGTERM) == "SIGTERM", StopSignalName(SIGINT) == "SIGINT".
//
// Thread-safety: one instance at a time per process, made and destroyed on one thread (the
// destructor stops and joins the reader thread). Not copyable or movable.
#pragma once

#include <functional>
#include <thread>

namespace xcpipe {

const char* StopSignalName(int signal);

class StopSignals {
 public:
  // Installs the handlers and starts the reader thread. Should that fail (no pipe), the signals
  // keep their previous disposition and a warning is logged.
  explicit StopSignals(std::function<void(int signal)> on_signal);
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // True when the handlers are installed.
  bool installed() const { return installed_; }

 private:
  void Loop();

  std::function<void(int)> on_signal_;
  int wake_fd_ = -1;  // eventfd: tells the reader thread to leave
  bool installed_ = false;
  std::thread thread_;
};

}  // namespace xcpipe
