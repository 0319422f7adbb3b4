// xcpipe serve-local: a coordinator and N worker processes on this machine, serving until
// SIGINT/SIGTERM. Prints "ready <address>" once it can serve.
#include <stdlib.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "commands.h"
#include "compute_flags.h"
#include "signalled_cluster.h"
#include "xcpipe/base/exit_codes.h"
#include "xcpipe/coordinator/local_cluster.h"
#include "xcpipe/coordinator/serving_flags.h"
#include "xcpipe/http/gateway_flags.h"

namespace xcpipe::cli {

void AddServeLocalCommand(CLI::App& app, Action& action) {
  auto* sub = app.add_subcommand("serve-local", "start a coordinator and N workers on this machine");
  sub->footer(
      "Each worker is its own OS process talking to the coordinator and its neighbours over loopback\n"
      "TCP, exactly as across hosts. Prints 'ready <address>' when it can serve; SIGINT or SIGTERM\n"
      "drains and stops everything.\n\n"
      "Example:\n  xcpipe serve-local --model /tmp/m --workers 3 --listen tcp://127.0.0.1:7000\n"
      "  xcpipe submit --coordinator tcp://127.0.0.1:7000 --prompt 'Hello'\n"
      "With --http-listen 127.0.0.1:8000 it also serves the OpenAI-compatible API and the console.\n"
      "Exit codes: 0 stopped cleanly, 4 bad model, 5 the cluster did not come up.");
  auto o = std::make_shared<coordinator::LocalClusterOptions>();
  o->listen = "tcp://127.0.0.1:7000";
  sub->add_option("--model", o->model_dir, "checkpoint folder")->required();
  sub->add_option("--workers", o->workers, "worker processes (pipeline stages)")->capture_default_str();
  sub->add_option("--listen", o->listen, "control address, e.g. tcp://127.0.0.1:7000 (tcp://127.0.0.1:* picks a port)")
      ->capture_default_str();
  sub->add_option("--tokenizer", o->tokenizer, "tokenizer.model (default: found next to the model)");
  AddComputeFlags(*sub, *o);
  sub->add_option("--threads", o->threads_per_worker, "compute threads per worker (0: split the cores)");
  coordinator::AddServingFlags(*sub, o->coordinator);
  sub->add_option("--metrics-listen", o->coordinator.metrics_listen,
                  "serve Prometheus /metrics, /healthz and /readyz over HTTP on HOST:PORT (e.g. 127.0.0.1:9100)");
  auto secure = std::make_shared<bool>(false);
  sub->add_flag("--secure", *secure,
                "CURVE on the control socket: coordinator, worker and client key pairs in --keys-dir (or in a "
                "fresh private temporary folder removed at exit); unauthenticated peers are refused");
  sub->add_option("--keys-dir", o->keys_dir,
                  "with --secure: folder of the keys, reused when it holds them (clients pass --secret-key "
                  "DIR/client.key --server-key DIR/coordinator.pub)");
  sub->add_flag("--allow-wildcard-bind", o->coordinator.allow_wildcard_bind,
                "permit --listen on every interface (tcp://*:PORT, tcp://0.0.0.0:PORT)");
  auto http_options = std::make_shared<http::GatewayOptions>();
  http::AddGatewayFlags(*sub, *http_options);
  sub->callback([&action, o, secure, http_options] {
    action = [o, secure, http_options]() -> int {
      // A throwaway key folder lives as long as this command.
      struct RemoveOnExit {
        std::filesystem::path dir;
        ~RemoveOnExit() {
          std::error_code ec;
          if (!dir.empty()) std::filesystem::remove_all(dir, ec);
        }
      } temp_keys;
      if (!*secure && !o->keys_dir.empty()) {
        std::fprintf(stderr, "xcpipe serve-local: --keys-dir needs --secure\n");
        return kExitUsage;
      }
      if (*secure) {
        if (o->keys_dir.empty()) {
          std::string tmpl = (std::filesystem::temp_directory_path() / "xcpipe-keys-XXXXXX").string();
          if (::mkdtemp(tmpl.data()) == nullptr) {  // mode 0700
            std::fprintf(stderr, "xcpipe serve-local: cannot create a private key folder in %s\n",
                         std::filesystem::temp_directory_path().c_str());
            return kExitFailure;
          }
          temp_keys.dir = o->keys_dir = tmpl;
        }
        if (!std::filesystem::exists(o->keys_dir / "coordinator.key")) {
          if (Status st = control::WriteClusterKeys(o->keys_dir); !st.ok()) {
            std::fprintf(stderr, "xcpipe serve-local: %s\n", st.ToString().c_str());
            return ExitCodeFor(st);
          }
        }
        std::fprintf(stderr,
                     "control: CURVE keys in %s; a client connects with --secret-key %s/client.key "
                     "--server-key %s/coordinator.pub\n",
                     o->keys_dir.c_str(), o->keys_dir.c_str(), o->keys_dir.c_str());
      }
      auto cluster = StartLocalCluster(*o);
      if (!cluster.ok()) {
        std::fprintf(stderr, "xcpipe serve-local: %s\n", cluster.status().ToString().c_str());
        return ExitCodeFor(cluster.status());
      }
      std::printf("ready %s\n", (*cluster)->address().c_str());
      if (!(*cluster)->metrics_address().empty()) {
        std::printf("metrics http://%s/metrics\n", (*cluster)->metrics_address().c_str());
      }
      // The HTTP API: a client of this cluster's coordinator, on threads of this process.
      std::unique_ptr<http::Gateway> gateway;
      if (!http_options->listen.empty()) {
        http::GatewayBackend backend{(*cluster)->address(), {}, o->model_dir, o->tokenizer, o->coordinator.max_context};
        if (*secure) {
          auto curve = control::LoadClientCurve(o->keys_dir / "client.key", o->keys_dir / "coordinator.pub");
          if (!curve.ok()) {
            std::fprintf(stderr, "xcpipe serve-local: %s\n", curve.status().ToString().c_str());
            (*cluster)->Stop();
            return ExitCodeFor(curve.status());
          }
          backend.curve = std::move(curve).value();
        }
        auto started = http::Gateway::Start(*http_options, std::move(backend));
        if (!started.ok()) {
          std::fprintf(stderr, "xcpipe serve-local: %s\n", started.status().ToString().c_str());
          (*cluster)->Stop();
          return ExitCodeFor(started.status());
        }
        gateway = std::move(started).value();
        std::printf("http http://%s/v1\n", gateway->address().c_str());
      }
      std::fflush(stdout);
      // The coordinator thread stops when SIGINT/SIGTERM drain it (main's handlers) or on a fatal
      // error.
      while (!(*cluster)->coordinator_exited()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      gateway.reset();  // before the coordinator it is a client of
      return (*cluster)->Stop();
    };
  });
}

}  // namespace xcpipe::cli
