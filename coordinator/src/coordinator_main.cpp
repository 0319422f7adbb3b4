// xcpipe-coordinator: plans which worker holds which blocks, admits and schedules requests,
// and heals the pipeline when a worker is lost. Binds one ROUTER for workers and clients.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "xcpipe/base/cli.h"
#include "xcpipe/base/log.h"
#include "xcpipe/base/service_notify.h"
#include "xcpipe/base/stop_signals.h"
#include "xcpipe/control/socket.h"
#include "xcpipe/coordinator/coordinator.h"
#include "xcpipe/coordinator/serving_flags.h"
#include "xcpipe/http/gateway_flags.h"

int main(int argc, char** argv) {
  using namespace xcpipe;
  CLI::App app{
      "xcpipe-coordinator: the control process of an xcpipe cluster.\n"
      "Workers (xcpipe-worker, one per GPU) and clients (xcpipe submit/status) connect to --listen.\n"
      "Once the expected workers have registered it plans the model over them, assigns stages,\n"
      "waits until every stage has loaded, then serves requests.\n\n"
      "Example:\n"
      "  xcpipe-coordinator --model /models/ixc2-vl --listen tcp://10.0.0.1:7000 --expect-workers 4"};
  app.footer(kExitCodeHelp);
  std::string model;
  std::string listen;
  int expect_workers = 1;
  std::string log_level = "info";
  app.add_option("--model", model, "checkpoint folder (config.json + safetensors shards + index)");
  app.add_option("--listen", listen, "control address to bind, e.g. tcp://10.0.0.1:7000 (no wildcard default)");
  std::string secret_key, allow_list;
  bool allow_wildcard_bind = false;
  app.add_option("--secret-key", secret_key,
                 "CURVE: this coordinator's secret key file (xcpipe keys generate); needs --allow");
  app.add_option("--allow", allow_list,
                 "CURVE: public keys admitted (a folder of *.pub files or a file of keys); others are refused");
  app.add_flag("--allow-wildcard-bind", allow_wildcard_bind,
               "permit --listen on every interface (tcp://*:PORT, tcp://0.0.0.0:PORT)");
  app.add_option("--expect-workers", expect_workers, "workers to wait for before planning")->capture_default_str();
  std::string tokenizer, dtype = "auto", spec_overrides;
  int worker_wait_s = 300;
  app.add_option("--tokenizer", tokenizer, "tokenizer.model (default: found next to the model)");
  app.add_option("--dtype", dtype,
                 "compute dtype on workers: auto (f32 unless every worker is a CUDA device, then the checkpoint's "
                 "16-bit dtype), f32, bf16 or f16 (CUDA workers only)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "f32", "bf16", "f16"}));
  app.add_option("--spec-overrides", spec_overrides, "JSON of model facts a checkpoint cannot state");
  app.add_option("--worker-wait-s", worker_wait_s, "give up when the expected workers have not registered by then")
      ->capture_default_str();
  std::vector<std::string> expect_worker_ids;
  int drain_timeout_s = static_cast<int>(coordinator::kDefaultDrainTimeout.count());
  app.add_option("--expect-worker-ids", expect_worker_ids,
                 "comma-separated worker ids to wait for (a timeout names the missing ones)")
      ->delimiter(',');
  app.add_option("--drain-timeout-s", drain_timeout_s,
                 "on SIGTERM/SIGINT: refuse new requests and let admitted ones finish for at most this long")
      ->capture_default_str();
  coordinator::CoordinatorOptions options;
  coordinator::AddServingFlags(app, options);
  app.add_option("--metrics-listen", options.metrics_listen,
                 "serve Prometheus /metrics, /healthz and /readyz over HTTP on HOST:PORT (e.g. 127.0.0.1:9100; "
                 "no default, nothing is served without it)");
  http::GatewayOptions http_options;
  http::AddGatewayFlags(app, http_options);
  std::string http_client_key;
  app.add_option("--http-client-key", http_client_key,
                 "CURVE: the secret key the HTTP API connects to this coordinator with (its public key must be in "
                 "--allow); needed with --http-listen when --secret-key is given");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")->capture_default_str();
  if (auto code = ParseOrExit(app, argc, argv)) return *code;
  if (auto st = InitLogging({"coordinator", log_level}); !st.ok()) {
    std::fprintf(stderr, "xcpipe-coordinator: %s\n", st.ToString().c_str());
    return kExitUsage;
  }
  if (model.empty() || listen.empty()) {
    std::fprintf(stderr, "xcpipe-coordinator: --model and --listen are required\nRun with --help for usage.\n");
    return kExitUsage;
  }
  options.model_dir = model;
  options.tokenizer = tokenizer;
  options.listen = listen;
  options.expect_workers = expect_workers;
  options.dtype = dtype;
  options.spec_overrides = spec_overrides;
  options.worker_wait = std::chrono::seconds(worker_wait_s);
  options.expect_worker_ids = expect_worker_ids;
  options.drain_timeout = std::chrono::seconds(drain_timeout_s);
  options.allow_wildcard_bind = allow_wildcard_bind;
  auto curve = control::CurveFromFlags(secret_key, "", allow_list, /*server=*/true);
  if (!curve.ok()) {
    std::fprintf(stderr, "xcpipe-coordinator: %s\n", curve.status().ToString().c_str());
    return ExitCodeFor(curve.status());
  }
  options.curve = std::move(curve).value();
  if (control::IsWildcardEndpoint(listen) && !allow_wildcard_bind) {  // before the model loads
    std::fprintf(stderr,
                 "xcpipe-coordinator: refusing to listen on every interface (%s); name the address "
                 "(e.g. tcp://10.0.0.1:7000) or pass --allow-wildcard-bind\n",
                 listen.c_str());
    return kExitUsage;
  }
  // Under systemd (Type=notify): READY=1 once serving, WATCHDOG=1 from the loop, STOPPING=1 on
  // a signal. No-ops when NOTIFY_SOCKET is unset.
  auto watchdog = std::make_shared<service::WatchdogPinger>();
  // The HTTP API: a client of this coordinator on threads of this process. It starts before the
  // coordinator serves (/health says 503 until then) and learns the bound address when ready.
  std::shared_ptr<http::Gateway> gateway;
  if (!http_options.listen.empty()) {
    http::GatewayBackend backend{listen, {}, model, tokenizer, options.max_context};
    if (options.curve.enabled()) {
      if (http_client_key.empty()) {
        std::fprintf(stderr, "xcpipe-coordinator: --http-listen with CURVE keys needs --http-client-key\n");
        return kExitUsage;
      }
      auto server_public = control::DerivePublicKey(options.curve.secret_key);
      auto client_secret = control::ReadSecretKeyFile(http_client_key);
      auto client_public = client_secret.ok() ? control::DerivePublicKey(*client_secret) : client_secret.status();
      if (!server_public.ok() || !client_public.ok()) {
        const Status st = !server_public.ok() ? server_public.status() : client_public.status();
        std::fprintf(stderr, "xcpipe-coordinator: --http-client-key: %s\n", st.ToString().c_str());
        return ExitCodeFor(st);
      }
      backend.curve.secret_key = *client_secret;
      backend.curve.public_key = *client_public;
      backend.curve.server_public_key = *server_public;
    }
    auto started = http::Gateway::Start(http_options, std::move(backend));
    if (!started.ok()) {
      std::fprintf(stderr, "xcpipe-coordinator: %s\n", started.status().ToString().c_str());
      return ExitCodeFor(started.status());
    }
    gateway = std::move(started).value();
    std::printf("http http://%s/v1\n", gateway->address().c_str());
    std::fflush(stdout);
  }
  options.on_ready = [gateway](const std::string& address) {
    if (gateway) gateway->SetCoordinatorEndpoint(address);
    std::printf("ready %s\n", address.c_str());
    std::fflush(stdout);
    service::NotifyStatus("serving on " + address);
    service::NotifyReady();
  };
  options.on_tick = [watchdog] { watchdog->Tick(); };
  options.on_drain = [] {
    service::NotifyStopping();
    service::NotifyStatus("draining: finishing admitted requests");
  };
  coordinator::Coordinator c(std::move(options));
  // SIGTERM/SIGINT: the graceful drain (--drain-timeout), then exit 0.
  StopSignals signals([&c](int signal) {
    spdlog::info("{} received", StopSignalName(signal));
    c.RequestDrain();
  });
  return c.Run();
}
