// Process exit codes shared by every xcpipe binary. Scripts and systemd rely on them:
// deploy/systemd units list kInvalidInput and kUsage in RestartPreventExitStatus so a corrupt
// checkpoint or a bad flag does not restart-loop. Never renumber.
#pragma once

#include "xcpipe/base/status.h"

namespace xcpipe {

enum ExitCode : int {
  kExitOk = 0,
  kExitFailure = 1,          // runtime failure (internal error, peer failure)
  kExitUsage = 2,            // bad command line
  kExitInfeasible = 3,       // a plan cannot fit the cluster (xcpipe plan)
  kExitInvalidInput = 4,     // bad model, checkpoint, config, prompt or image
  kExitUnavailable = 5,      // coordinator or worker unreachable, or a deadline passed
  kExitCheckFailed = 6,      // a verification found differences (check-fixtures)
  kExitNotImplemented = 7,   // the subcommand or feature is not available in this build
};

// The exit code a command should return for a failed Status.
ExitCode ExitCodeFor(const Status& status);

// The text every --help prints about exit codes.
inline constexpr const char* kExitCodeHelp =
    "Exit codes: 0 success, 1 runtime failure, 2 usage error, 3 plan infeasible, 4 invalid input\n"
    "(model, checkpoint, config, prompt, image), 5 unavailable (peer unreachable or deadline passed),\n"
    "6 verification found differences, 7 not available in this build.";

}  // namespace xcpipe
