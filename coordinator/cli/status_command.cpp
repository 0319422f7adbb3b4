// xcpipe status: workers, stages, memory and queues of a running cluster.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <thread>

#include "commands.h"
#include "xcpipe/base/exit_codes.h"
#include "xcpipe/coordinator/client.h"

namespace xcpipe::cli {
namespace {

std::string Mib(uint64_t bytes) { return std::to_string(bytes >> 20) + " MiB"; }

void PrintTable(const nlohmann::json& s) {
  std::printf("cluster: %s  epoch %llu  stages %d  queue %d  in flight %d  completed %llu  failed %llu\n",
              s["state"].get<std::string>().c_str(), static_cast<unsigned long long>(s["epoch"].get<uint64_t>()),
              s["stages"].get<int>(), s["queue_depth"].get<int>(), s["in_flight"].get<int>(),
              static_cast<unsigned long long>(s["completed"].get<uint64_t>()),
              static_cast<unsigned long long>(s["failed"].get<uint64_t>()));
  std::printf("%-12s %-14s %-8s %-7s %-9s %-6s %-8s %-11s %-11s %-8s %s\n", "worker", "host", "pid", "device", "state",
              "stage", "blocks", "planned", "used", "steps", "heartbeat");
  for (const auto& w : s["workers"]) {
    std::printf("%-12s %-14s %-8u %-7s %-9s %-6d %-8s %-11s %-11s %-8llu %u ms ago\n", w["id"].get<std::string>().c_str(),
                w["host"].get<std::string>().c_str(), w["pid"].get<unsigned>(), w["device"].get<std::string>().c_str(),
                w["state"].get<std::string>().c_str(), w["stage"].get<int>(), w["blocks"].get<std::string>().c_str(),
                Mib(w["planned_bytes"].get<uint64_t>()).c_str(), Mib(w["used_bytes"].get<uint64_t>()).c_str(),
                static_cast<unsigned long long>(w["steps"].get<uint64_t>()), w["last_heartbeat_ms_ago"].get<unsigned>());
  }
}

}  // namespace

void AddStatusCommand(CLI::App& app, Action& action) {
  auto* sub = app.add_subcommand("status", "show workers, stages, memory and queues of a running cluster");
  sub->footer("Example:\n  xcpipe status --coordinator tcp://127.0.0.1:7000 [--json] [--watch]\n"
              "Exit codes: 0 shown, 5 coordinator unreachable.");
  auto coordinator = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  auto watch = std::make_shared<bool>(false);
  sub->add_option("--coordinator", *coordinator, "coordinator address, e.g. tcp://127.0.0.1:7000")->required();
  sub->add_flag("--json", *json, "print the status as JSON");
  sub->add_flag("--watch", *watch, "refresh every second until interrupted");
  sub->callback([&action, coordinator, json, watch] {
    action = [=]() -> int {
      auto client = coordinator::Client::Connect(*coordinator, std::chrono::seconds(5));
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
        if (*watch && isatty(STDOUT_FILENO)) std::printf("\033[H\033[2J");
        if (*json) std::cout << s->dump() << "\n"; else PrintTable(*s);
        std::fflush(stdout);
        if (*watch) std::this_thread::sleep_for(std::chrono::seconds(1));
      } while (*watch);
      return kExitOk;
    };
  });
}

}  // namespace xcpipe::cli
