// xcpipe status: workers, stages, memory and queues of a running cluster.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <thread>

#include "commands.h"
#include "curve_flags.h"
#include "xcpipe/base/exit_codes.h"
#include "xcpipe/coordinator/client.h"
#include "xcpipe/coordinator/status_view.h"

namespace xcpipe::cli {

void AddStatusCommand(CLI::App& app, Action& action) {
  auto* sub = app.add_subcommand("status", "show workers, stages, memory and queues of a running cluster");
  sub->footer("Example:\n  xcpipe status --coordinator tcp://127.0.0.1:7000 [--json] [--watch [SECONDS]]\n"
              "Exit codes: 0 shown, 5 coordinator unreachable.");
  auto coordinator = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  auto watch = std::make_shared<double>(0);  // seconds between refreshes; 0: show once
  sub->add_option("--coordinator", *coordinator, "coordinator address, e.g. tcp://127.0.0.1:7000")->required();
  auto curve_flags = std::make_shared<ClientCurveFlags>();
  AddClientCurveFlags(*sub, *curve_flags);
  sub->add_flag("--json", *json, "print the status as JSON");
  sub->add_option("--watch", *watch, "redraw in place every SECONDS (default 1) until Ctrl-C")
      ->expected(0, 1)
      ->default_str("1")
      ->check(CLI::Range(0.1, 3600.0));
  sub->callback([&action, coordinator, json, watch, curve_flags] {
    action = [=]() -> int {
      auto curve = curve_flags->Load();
      if (!curve.ok()) {
        std::fprintf(stderr, "xcpipe status: %s\n", curve.status().ToString().c_str());
        return ExitCodeFor(curve.status());
      }
      auto client = coordinator::Client::Connect(*coordinator, std::chrono::seconds(5), *curve);
      if (!client.ok()) {
        std::fprintf(stderr, "xcpipe status: %s\n", client.status().ToString().c_str());
        return ExitCodeFor(client.status());
      }
      do {
        auto s = (*client)->GetStatus(std::chrono::seconds(5));
        if (!s.ok()) {
          std::fprintf(stderr, "xcpipe status: %s\n", s.status().ToString().c_str());
          return ExitCodeFor(s.status());
        }
        if (*watch > 0 && isatty(STDOUT_FILENO)) std::printf("\033[H\033[2J");
        (*s)["memory_warnings"] = coordinator::MemoryWarnings(*s);
        if (*json) std::cout << s->dump() << "\n"; else std::fputs(coordinator::FormatStatusTable(*s).c_str(), stdout);
        std::fflush(stdout);
        if (*watch > 0) std::this_thread::sleep_for(std::chrono::duration<double>(*watch));
      } while (*watch > 0);
      return kExitOk;
    };
  });
}

}  // namespace xcpipe::cli
