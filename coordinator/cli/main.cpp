// xcpipe: the user CLI. Each subcommand adds itself to the app and sets `action`; main runs it.
#include <cstdio>
#include <functional>
#include <string>

#include "commands.h"
#include "signalled_cluster.h"
#include "xcpipe/base/cli.h"
#include "xcpipe/base/log.h"
#include "xcpipe/base/stop_signals.h"

int main(int argc, char** argv) {
  using namespace xcpipe;
  CLI::App app{
      "xcpipe: serve InternLM-XComposer (1.0, 2.0-VL, 2.0-4KHD, 2.5) split across GPUs and hosts.\n\n"
      "Typical use:\n"
      "  xcpipe mkmodel --arch ixc2-vl --preset tiny --out /tmp/m     # a small model to try things on\n"
      "  xcpipe plan --model /tmp/m --cluster configs/cluster-2x24g.toml\n"
      "  xcpipe serve-local --model /tmp/m --workers 3                # prints 'ready <address>'\n"
      "  xcpipe submit --coordinator tcp://127.0.0.1:7000 --prompt '<ImageHere>Describe it.' --image a.png\n\n"
      "Run 'xcpipe <command> --help' for each command's options."};
  app.footer(kExitCodeHelp);
  app.require_subcommand(1);
  std::function<int()> action;

  // Every subcommand registers here.
  cli::AddPlanCommand(app, action);
  cli::AddConvertCommand(app, action);
  cli::AddMkmodelCommand(app, action);
  cli::AddCheckFixturesCommand(app, action);
  cli::AddRunCommand(app, action);
  cli::AddServeLocalCommand(app, action);
  cli::AddSubmitCommand(app, action);
  cli::AddStatusCommand(app, action);
  cli::AddKeysCommand(app, action);
  cli::AddBenchCommand(app, action);

  if (auto code = ParseOrExit(app, argc, argv)) return *code;
  // Logs go to stderr; stdout carries results ("ready <address>", JSON, tables).
  (void)InitLogging({"xcpipe", "info"});
  if (!action) return kExitUsage;
  // SIGINT/SIGTERM drain the local cluster a command runs (serve-local, run, check-fixtures
  // --workers, bench); other commands end on them as by default (signalled_cluster.h).
  StopSignals signals(cli::OnStopSignal);
  return action();
}
