// xcpipe-worker: one process per GPU (or per CPU slot). It registers with the coordinator,
// loads the blocks of the stage it is assigned, and runs them.
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>

#include "xcpipe/base/cli.h"
#include "xcpipe/base/log.h"
#include "xcpipe/base/service_notify.h"
#include "xcpipe/base/stop_signals.h"
#include "xcpipe/model/device_check.h"
#include "xcpipe/model/fixture_check.h"
#include "xcpipe/worker/device_probe.h"
#include "xcpipe/worker/worker_actor.h"

#include <unistd.h>

#include <ATen/Parallel.h>
#include <thread>

int main(int argc, char** argv) {
  using namespace xcpipe;
  CLI::App app{
      "xcpipe-worker: holds one device and runs one pipeline stage of an XComposer model.\n"
      "It connects to the coordinator, says hello with its device and memory, loads only the\n"
      "blocks it is assigned (memory-mapped from the safetensors checkpoint), and serves forward\n"
      "steps, passing activations to the next stage over NCCL (GPU) or TCP (CPU).\n\n"
      "Example:\n"
      "  xcpipe-worker --coordinator tcp://10.0.0.1:7000 --device cuda:0 --worker-id node-a/0\n"
      "  xcpipe-worker --probe            # print the device this worker would use, then exit"};
  app.footer(kExitCodeHelp);
  std::string coordinator;
  std::string device = "auto";
  std::string worker_id;
  std::string log_level = "info";
  bool probe = false;
  bool require_gpu = false;
  app.add_option("--coordinator", coordinator, "coordinator control address, e.g. tcp://10.0.0.1:7000");
  std::string secret_key, server_key;
  app.add_option("--secret-key", secret_key,
                 "CURVE: this worker's secret key file (xcpipe keys generate); its public key must be on the "
                 "coordinator's allow-list; needs --server-key");
  app.add_option("--server-key", server_key, "CURVE: the coordinator's public key file (coordinator.pub)");
  app.add_option("--device", device,
                 "auto, cpu or cuda:N (auto: cuda:0 when present and this build's libtorch has CUDA, else CPU; "
                 "an explicit cuda:N never falls back: exit 7 when libtorch has no CUDA, 5 when the host lacks it)")
      ->capture_default_str();
  bool generic = false;
  app.add_flag("--generic", generic,
               "compute with the generic op sequence a CUDA device runs, without the CPU-only fast paths "
               "(GEMV and AVX-512 decode kernels, huge-page weights, thread policy): the CPU checks what a GPU runs");
  app.add_option("--worker-id", worker_id, "stable name of this worker, e.g. node-a/0 (default: <device>@<pid>)");
  app.add_flag("--require-gpu", require_gpu, "fail instead of falling back to the CPU when no GPU is usable");
  app.add_flag("--probe", probe, "print the chosen device as JSON and exit");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")->capture_default_str();
  std::string data_host = "127.0.0.1";
  uint16_t data_port = 0;
  int step_delay_ms = 0, encode_delay_ms = 0;
  app.add_option("--data-host", data_host, "address the previous stage uses to reach this worker's data plane")
      ->capture_default_str();
  app.add_option("--data-port", data_port, "data-plane port (0: any free port, announced to the coordinator)")
      ->capture_default_str();
  std::string data_advertise;
  app.add_option("--data-advertise", data_advertise,
                 "HOST:PORT the previous stage should connect to instead of the bound address (a proxy or NAT in "
                 "between; default: --data-host and the bound port)");
  uint16_t image_port = 0;
  app.add_option("--image-port", image_port,
                 "port of the image inbox on --data-host, where vision workers send image embeddings when this "
                 "worker holds the embed block (0: any free port, announced to the coordinator)")
      ->capture_default_str();
  int encode_nice = 10;
  app.add_option("--encode-nice", encode_nice,
                 "nice value of the thread a vision worker encodes images on: above 0, an encode takes only the "
                 "CPU the language stages on the same host leave idle, so an arriving image does not slow their "
                 "steps (0: the stages' priority)")
      ->check(CLI::Range(0, 19))
      ->capture_default_str();
  uint64_t hang_at_step = 0;
  double slowdown_factor = 1.0;
#ifdef XCPIPE_FAULT_INJECTION  // test builds only (CMake option XCPIPE_FAULT_INJECTION)
  app.add_option("--inject-step-delay-ms", step_delay_ms, "fault injection: sleep before every step (tests only)");
  app.add_option("--inject-encode-delay-ms", encode_delay_ms,
                 "fault injection: sleep before every image a vision worker encodes (tests only)");
  app.add_option("--inject-slowdown", slowdown_factor,
                 "fault injection: make every decoder layer take this many times its compute, e.g. 3 (tests only)")
      ->check(CLI::Range(1.0, 100.0));
  app.add_option("--inject-hang-at-step", hang_at_step,
                 "fault injection: hang forever inside the Nth step's compute (tests only)");
#endif
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  app.add_option("--threads", threads, "compute threads (split the cores between workers sharing a host)")
      ->capture_default_str();

  // check-fixtures: the model half of `xcpipe check-fixtures` (the CLI runs the tokenizer and
  // image checks itself: the tokenizer cannot share a process with libtorch).
  CLI::App* check = app.add_subcommand("check-fixtures",
                                       "run the model checks of a fixtures folder; one JSON object per line on stdout");
  std::string fixtures_dir;
  std::string only_folder;
  bool no_bf16 = false;
  check->add_option("dir", fixtures_dir, "fixtures folder (../shared/fixtures format)")->required();
  check->add_option("--folder", only_folder, "only this model folder, e.g. ixc2_vl");
  check->add_flag("--no-bf16", no_bf16, "skip the bf16 top-k agreement checks");
  std::string check_device = "cpu";
  check->add_option("--device", check_device, "compute device: cpu or cuda:K")->capture_default_str();
  // compare-devices / bench-decode: the device checks bench/gpu_check.sh runs on a GPU host.
  CLI::App* compare = app.add_subcommand(
      "compare-devices", "run a model on the CPU (float32) and on a device; print how they agree as JSON");
  CLI::App* bench = app.add_subcommand("bench-decode", "greedy decode speed of a model on one device, as JSON");
  std::string check_model, check_dtype = "f32";
  int64_t bench_tokens = 64;
  int bench_runs = 3;
  for (CLI::App* sub : {compare, bench}) {
    sub->add_option("--model", check_model, "checkpoint folder (e.g. made by xcpipe mkmodel)")->required();
    sub->add_option("--device", check_device, "device under test: cpu or cuda:K")->capture_default_str();
    sub->add_option("--dtype", check_dtype, "f32, bf16 or f16")->capture_default_str();
  }
  compare->footer(
      "Exit 0 when they agree (f32: identical greedy tokens, logits within 1e-3; 16-bit: the device's\n"
      "argmax within the CPU's top 5 at every prompt position), 6 when they do not.");
  bench->add_option("--new-tokens", bench_tokens, "tokens decoded per run")->capture_default_str();
  bench->add_option("--runs", bench_runs, "timed runs (the median is reported)")->capture_default_str();
  if (auto code = ParseOrExit(app, argc, argv)) return *code;
  at::set_num_threads(threads);

  if (compare->parsed() || bench->parsed()) {
    if (auto st = InitLogging({"worker", log_level}); !st.ok()) return kExitUsage;
    auto dtype = model::ParseComputeDType(check_dtype);
    if (!dtype.ok()) {
      std::fprintf(stderr, "xcpipe-worker: --dtype: %s\n", dtype.status().message().c_str());
      return kExitUsage;
    }
    if (Status st = model::CheckComputeDevice(check_device, *dtype); !st.ok()) {
      std::fprintf(stderr, "xcpipe-worker: %s\n", st.message().c_str());
      return ExitCodeFor(st);
    }
    StatusOr<nlohmann::json> report = InternalError("no check ran");
    if (compare->parsed()) {
      model::DeviceComparisonOptions o;
      o.device = check_device;
      o.dtype = *dtype;
      report = model::CompareWithCpu(check_model, o);
    } else {
      model::DecodeBenchOptions o;
      o.device = check_device;
      o.dtype = *dtype;
      o.new_tokens = bench_tokens;
      o.runs = bench_runs;
      o.kernels = generic || check_device != "cpu" ? model::KernelPath::kGeneric : model::KernelPath::kCpuFast;
      report = model::BenchDecode(check_model, o);
    }
    if (!report.ok()) {
      std::fprintf(stderr, "xcpipe-worker: %s\n", report.status().ToString().c_str());
      return ExitCodeFor(report.status());
    }
    std::cout << report->dump() << std::endl;
    return report->value("passed", true) ? kExitOk : kExitCheckFailed;
  }
  if (check->parsed()) {
    if (auto st = InitLogging({"worker", log_level}); !st.ok()) return kExitUsage;
    model::FixtureCheckOptions options;
    options.check_bf16 = !no_bf16;
    options.only_folder = only_folder;
    options.device = check_device;
    options.kernels = generic ? model::KernelPath::kGeneric : model::KernelPath::kCpuFast;
    if (Status st = model::CheckComputeDevice(check_device, model::ComputeDType::kF32); !st.ok()) {
      std::fprintf(stderr, "xcpipe-worker check-fixtures: %s\n", st.message().c_str());
      return ExitCodeFor(st);
    }
    options.on_result = [](const model::FixtureCheckResult& r) {
      std::cout << nlohmann::json{{"case", r.name}, {"passed", r.passed}, {"message", r.message}}.dump() << std::endl;
    };
    auto results = model::RunModelFixtureChecks(fixtures_dir, options);
    for (const auto& r : results)
      if (!r.passed) return kExitCheckFailed;
    return kExitOk;
  }

  if (auto st = InitLogging({"worker", log_level}); !st.ok()) {
    std::fprintf(stderr, "xcpipe-worker: %s\n", st.ToString().c_str());
    return kExitUsage;
  }
  auto choice = worker::ChooseDevice(device, require_gpu, model::LibtorchHasCuda() ? model::LibtorchCudaDevices() : -1);
  if (!choice.ok()) {
    spdlog::error("{}", choice.status().ToString());
    // --probe answers on stdout either way: launchers read why a device cannot be used.
    if (probe) std::cout << nlohmann::json{{"error", choice.status().message()}, {"device", device}}.dump() << "\n";
    return ExitCodeFor(choice.status());
  }
  if (choice->device != "cpu") {
    // The planner's speed for this worker: measured, not assumed (the copy rate came with the
    // device probe).
    auto tflops = model::MeasureMatmulTflops(choice->device);
    if (tflops.ok())
      choice->matmul_tflops = *tflops;
    else
      spdlog::warn("{}", tflops.status().ToString());
  }
  spdlog::info("device {} ({}): {}{}", choice->device, choice->device_name, choice->reason,
               choice->device == "cpu" ? ""
                                       : fmt::format("; measured {:.0f} GB/s device copy, {:.0f} TFLOP/s bf16 matmul",
                                                     static_cast<double>(choice->memory_bandwidth_bytes_per_s) / 1e9,
                                                     choice->matmul_tflops));
  if (probe) {
    nlohmann::json out = {{"device", choice->device},
                          {"device_name", choice->device_name},
                          {"total_bytes", choice->total_bytes},
                          {"free_bytes", choice->free_bytes},
                          {"built_with_cuda", worker::BuiltWithCuda()},
                          {"libtorch_cuda", model::LibtorchHasCuda()},
                          {"libtorch_cuda_devices", model::LibtorchCudaDevices()},
                          {"memory_bandwidth_bytes_per_s", choice->memory_bandwidth_bytes_per_s},
                          {"matmul_tflops", choice->matmul_tflops},
                          {"reason", choice->reason}};
    std::cout << out.dump() << "\n";
    return kExitOk;
  }
  if (coordinator.empty()) {
    std::fprintf(stderr, "xcpipe-worker: --coordinator is required (or --probe)\nRun with --help for usage.\n");
    return kExitUsage;
  }
  worker::WorkerOptions options;
  options.coordinator = coordinator;
  auto curve = control::CurveFromFlags(secret_key, server_key, "", /*server=*/false);
  if (!curve.ok()) {
    spdlog::error("{}", curve.status().ToString());
    return ExitCodeFor(curve.status());
  }
  options.curve = std::move(curve).value();
  options.device = *choice;
  options.threads = threads;
  options.kernels = generic ? model::KernelPath::kGeneric : model::KernelPath::kCpuFast;
  options.data_host = data_host;
  options.data_port = data_port;
  options.data_advertise = data_advertise;
  options.image_port = image_port;
  options.step_delay = std::chrono::milliseconds(step_delay_ms);
  options.encode_delay = std::chrono::milliseconds(encode_delay_ms);
  options.encode_nice = encode_nice;
  options.hang_at_step = hang_at_step;
  options.slowdown_factor = slowdown_factor;
  options.worker_id = worker_id.empty() ? choice->device + "@" + std::to_string(getpid()) : worker_id;
  // Under systemd (Type=notify): READY=1 once the assigned stage has loaded, WATCHDOG=1 from the
  // poll loop, STOPPING=1 when it drains. No-ops when NOTIFY_SOCKET is unset.
  auto watchdog = std::make_shared<service::WatchdogPinger>();
  options.on_tick = [watchdog] { watchdog->Tick(); };
  options.on_state_change = [ready_sent = false](std::string_view state) mutable {
    service::NotifyStatus(std::string("stage ") + std::string(state));
    if (state == "ready" && !ready_sent) ready_sent = service::NotifyReady();
    if (state == "draining") service::NotifyStopping();
  };
  worker::WorkerActor actor(std::move(options));
  // SIGTERM/SIGINT drain: the stage finishes what it holds and the process exits 0.
  StopSignals signals([&actor](int signal) {
    spdlog::info("{} received", StopSignalName(signal));
    actor.RequestStop();
  });
  return actor.Run();
}
