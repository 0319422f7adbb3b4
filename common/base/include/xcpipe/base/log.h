// Process-wide logging setup. Every binary calls InitLogging() once from main(); library code
// then logs with spdlog's free functions (spdlog::info, ...). Lines go to stderr so stdout
// stays for results scripts parse (JSON, tables, "ready <address>").
//
// Logs carry request ids, never prompt text or key material.
#pragma once

#include <string>
#include <string_view>

#include "xcpipe/base/status.h"

namespace xcpipe {

struct LogOptions {
  std::string process_name;  // shown in every line, e.g. "worker-2"
  std::string level = "info";  // trace, debug, info, warn, error, off
};

// Configures the default logger. Returns InvalidArgument for an unknown level.
Status InitLogging(const LogOptions& options);

}  // namespace xcpipe
