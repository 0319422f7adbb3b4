// A child process started with posix_spawn, optionally with its stdout captured through a
// pipe. Used by the CLI to run worker processes (serve-local, check-fixtures) and by tests.
//
// Resource type: not copyable or movable. The destructor kills (SIGKILL) and reaps a child
// that is still running, so no child outlives its owner by accident. Not thread-safe.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "xcpipe/base/status.h"

namespace xcpipe {

struct SubprocessOptions {
  bool capture_stdout = false;   // else stdout is inherited
  bool silence_stderr = false;   // else stderr is inherited
  std::vector<std::string> extra_env;  // "NAME=value" entries added to this process's environment
};

class Subprocess {
 public:
  static StatusOr<std::unique_ptr<Subprocess>> Start(const std::vector<std::string>& argv,
                                                     const SubprocessOptions& options = {});
  ~Subprocess();
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }

  // Next line of captured stdout without the newline. nullopt at end of file; DeadlineExceeded
  // when no full line arrives within `timeout`.
  StatusOr<std::optional<std::string>> ReadLine(std::chrono::milliseconds timeout);

  // Waits for exit up to `timeout`; returns the exit code (128 + signal when killed by one).
  StatusOr<int> Wait(std::chrono::milliseconds timeout);

  // Sends a signal (no effect once reaped).
  void Signal(int signal);

 private:
  Subprocess() = default;
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  bool reaped_ = false;
  int exit_code_ = 0;
  std::string buffer_;
};

// Directory of the running executable (/proc/self/exe), to find sibling binaries.
std::filesystem::path ExecutableDir();

// Peak resident set (VmHWM in /proc/<pid>/status) of a process on this host, in bytes; 0 when
// the process is gone or the file cannot be read.
uint64_t PeakResidentBytes(pid_t pid);

}  // namespace xcpipe
