// Subcommands of the `xcpipe` CLI. Each lives in its own <name>_command.cpp and exposes one
// Add*Command function that adds a CLI11 subcommand to `app` and, when that subcommand is
// chosen, sets `action` to the function that runs it (returning an exit code).
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace xcpipe::cli {

using Action = std::function<int()>;

void AddPlanCommand(CLI::App& app, Action& action);

void AddConvertCommand(CLI::App& app, Action& action);
void AddMkmodelCommand(CLI::App& app, Action& action);

void AddCheckFixturesCommand(CLI::App& app, Action& action);
void AddRunCommand(CLI::App& app, Action& action);
void AddServeLocalCommand(CLI::App& app, Action& action);
void AddSubmitCommand(CLI::App& app, Action& action);
void AddStatusCommand(CLI::App& app, Action& action);
void AddKeysCommand(CLI::App& app, Action& action);
void AddBenchCommand(CLI::App& app, Action& action);

}  // namespace xcpipe::cli
