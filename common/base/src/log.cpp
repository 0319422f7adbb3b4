#include "xcpipe/base/log.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

namespace xcpipe {

Status InitLogging(const LogOptions& options) {
  auto level = spdlog::level::from_str(options.level);
  if (level == spdlog::level::off && options.level != "off") {
    return InvalidArgumentError("unknown log level '" + options.level +
                                "'; expected one of trace, debug, info, warn, error, off");
  }
  auto logger = spdlog::stderr_logger_mt("xcpipe-" + std::to_string(reinterpret_cast<uintptr_t>(&options)));
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ [" + options.process_name + " %P] %v");
  logger->set_level(level);
  spdlog::set_default_logger(std::move(logger));
  return OkStatus();
}

}  // namespace xcpipe
