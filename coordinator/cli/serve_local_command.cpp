// xcpipe serve-local: a coordinator and N worker processes on this machine, serving until
// SIGINT/SIGTERM. Prints "ready <address>" once it can serve.
#include <csignal>
#include <cstdio>
#include <thread>

#include "commands.h"
#include "xcpipe/base/exit_codes.h"
#include "xcpipe/coordinator/local_cluster.h"

namespace xcpipe::cli {

void AddServeLocalCommand(CLI::App& app, Action& action) {
  auto* sub = app.add_subcommand("serve-local", "start a coordinator and N workers on this machine");
  sub->footer(
      "Each worker is its own OS process talking to the coordinator and its neighbours over loopback\n"
      "TCP, exactly as across hosts. Prints 'ready <address>' when it can serve; SIGINT or SIGTERM\n"
      "drains and stops everything.\n\n"
      "Example:\n  xcpipe serve-local --model /tmp/m --workers 3 --listen tcp://127.0.0.1:7000\n"
      "  xcpipe submit --coordinator tcp://127.0.0.1:7000 --prompt 'Hello'\n"
      "Exit codes: 0 stopped cleanly, 4 bad model, 5 the cluster did not come up.");
  auto o = std::make_shared<coordinator::LocalClusterOptions>();
  o->listen = "tcp://127.0.0.1:7000";
  sub->add_option("--model", o->model_dir, "checkpoint folder")->required();
  sub->add_option("--workers", o->workers, "worker processes (pipeline stages)")->capture_default_str();
  sub->add_option("--listen", o->listen, "control address, e.g. tcp://127.0.0.1:7000 (tcp://127.0.0.1:* picks a port)")
      ->capture_default_str();
  sub->add_option("--tokenizer", o->tokenizer, "tokenizer.model (default: found next to the model)");
  sub->add_option("--dtype", o->dtype, "compute dtype: f32 or bf16")->capture_default_str()
      ->check(CLI::IsMember({"f32", "bf16"}));
  sub->add_option("--threads", o->threads_per_worker, "compute threads per worker (0: split the cores)");
  sub->callback([&action, o] {
    action = [o]() -> int {
      auto cluster = coordinator::LocalCluster::Start(*o);
      if (!cluster.ok()) {
        std::fprintf(stderr, "xcpipe serve-local: %s\n", cluster.status().ToString().c_str());
        return ExitCodeFor(cluster.status());
      }
      std::printf("ready %s\n", (*cluster)->address().c_str());
      std::fflush(stdout);
      // The coordinator thread stops on SIGINT/SIGTERM (its handler) or on a fatal error.
      while (!(*cluster)->coordinator_exited()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      return (*cluster)->Stop();
    };
  });
}

}  // namespace xcpipe::cli
