// xcpipe-coordinator: plans which worker holds which blocks, admits and schedules requests,
// and heals the pipeline when a worker is lost. Binds one ROUTER for workers and clients.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <string>

#include "xcpipe/base/cli.h"
#include "xcpipe/base/log.h"
#include "xcpipe/coordinator/coordinator.h"

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
  app.add_option("--expect-workers", expect_workers, "workers to wait for before planning")->capture_default_str();
  std::string tokenizer, dtype = "f32", spec_overrides;
  int worker_wait_s = 300;
  app.add_option("--tokenizer", tokenizer, "tokenizer.model (default: found next to the model)");
  app.add_option("--dtype", dtype, "compute dtype on workers: f32 or bf16")->capture_default_str()
      ->check(CLI::IsMember({"f32", "bf16"}));
  app.add_option("--spec-overrides", spec_overrides, "JSON of model facts a checkpoint cannot state");
  app.add_option("--worker-wait-s", worker_wait_s, "give up when the expected workers have not registered by then")
      ->capture_default_str();
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
  coordinator::CoordinatorOptions options;
  options.model_dir = model;
  options.tokenizer = tokenizer;
  options.listen = listen;
  options.expect_workers = expect_workers;
  options.dtype = dtype;
  options.spec_overrides = spec_overrides;
  options.worker_wait = std::chrono::seconds(worker_wait_s);
  options.on_ready = [](const std::string& address) { std::printf("ready %s\n", address.c_str()); std::fflush(stdout); };
  coordinator::Coordinator c(std::move(options));
  return c.Run();
}
