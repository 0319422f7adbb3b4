// Command-line parsing glue shared by the three binaries (CLI11). ParseOrExit maps CLI11's
// outcomes onto our exit codes: --help prints and exits 0, a usage error prints the message and
// a hint and exits 2 (kExitUsage), never CLI11's own numbering.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdio>
#include <optional>

#include "xcpipe/base/exit_codes.h"

namespace xcpipe {

// Returns an exit code when the program should stop now (help shown or usage error), else
// nullopt after a successful parse.
inline std::optional<int> ParseOrExit(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    app.exit(e);
    return kExitOk;
  } catch (const CLI::CallForAllHelp& e) {
    app.exit(e);
    return kExitOk;
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    std::fprintf(stderr, "Run with --help for usage.\n");
    return kExitUsage;
  }
  return std::nullopt;
}

}  // namespace xcpipe
