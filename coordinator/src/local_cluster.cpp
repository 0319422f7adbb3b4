#include "xcpipe/coordinator/local_cluster.h"

#include "xcpipe/base/exit_codes.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>
#include <csignal>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "xcpipe/base/files.h"

namespace xcpipe::coordinator {

using Clock = std::chrono::steady_clock;

StatusOr<std::unique_ptr<LocalCluster>> LocalCluster::Start(LocalClusterOptions options) {
  if (options.workers < 1) return InvalidArgumentError("--workers must be at least 1");
  std::unique_ptr<LocalCluster> c(new LocalCluster());
  CoordinatorOptions co = options.coordinator;
  co.model_dir = options.model_dir;
  co.tokenizer = options.tokenizer;
  co.listen = options.listen;
  co.expect_workers = options.workers;
  co.dtype = options.dtype;
  if (co.spec_overrides.empty()) co.spec_overrides = FixtureSpecOverrides(options.model_dir);
  co.worker_wait = options.start_timeout;
  if (!options.keys_dir.empty()) {
    auto server = control::LoadServerCurve(options.keys_dir / "coordinator.key", options.keys_dir);
    if (!server.ok()) return server.status().WithContext("local cluster keys");
    co.curve = std::move(server).value();
    auto client = control::LoadClientCurve(options.keys_dir / "client.key", options.keys_dir / "coordinator.pub");
    if (!client.ok()) return client.status().WithContext("local cluster keys");
    c->client_curve_ = std::move(client).value();
  }
  auto ready_mutex = std::make_shared<std::mutex>();
  auto ready_cv = std::make_shared<std::condition_variable>();
  auto ready = std::make_shared<bool>(false);
  co.on_ready = [ready_mutex, ready_cv, ready](const std::string&) {
    std::lock_guard<std::mutex> lock(*ready_mutex);
    *ready = true;
    ready_cv->notify_all();
  };
  c->coordinator_ = std::make_unique<Coordinator>(std::move(co));
  auto bound = c->coordinator_->Bind();
  if (!bound.ok()) return bound.status();
  c->address_ = *bound;

  // A device other than the CPU is checked once before any worker starts, so a build or host
  // that cannot use it is refused with the worker's own words (and exit code), not a timeout.
  if (options.device != "cpu") {
    const auto binary = options.worker_binary.empty() ? ExecutableDir() / "xcpipe-worker" : options.worker_binary;
    auto probe = Subprocess::Start({binary.string(), "--probe", "--device", options.device},
                                   {.capture_stdout = true, .silence_stderr = true, .extra_env = {}});
    if (!probe.ok()) return probe.status().WithContext("probing --device " + options.device);
    std::string said;
    while (true) {
      auto line = (*probe)->ReadLine(std::chrono::seconds(60));
      if (!line.ok() || !line->has_value()) break;
      said += **line;
    }
    auto code = (*probe)->Wait(std::chrono::seconds(10));
    if (code.ok() && *code != kExitOk) {
      std::string why = said;
      try {
        why = nlohmann::json::parse(said).value("error", said);
      } catch (const std::exception&) {
      }
      const Status st(*code == kExitNotImplemented ? StatusCode::kUnimplemented : StatusCode::kUnavailable, why);
      return st;
    }
  }
  c->options_ = options;
  c->threads_ = options.threads_per_worker;
  if (c->threads_ <= 0) c->threads_ = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / options.workers);
  for (int i = 0; i < options.workers; ++i) {
    std::vector<std::string> extra;
    if (static_cast<size_t>(i) < options.worker_extra_args.size()) extra = options.worker_extra_args[i];
    if (Status st = c->AddWorker(extra); !st.ok()) return st;
  }
  Coordinator* coord = c->coordinator_.get();
  auto exited = c->exited_;
  auto code = c->exit_code_;
  c->thread_ = std::thread([coord, exited, code, ready_mutex, ready_cv] {
    code->store(coord->Run());
    exited->store(true);
    std::lock_guard<std::mutex> lock(*ready_mutex);
    ready_cv->notify_all();
  });
  // A worker that exits before the cluster serves fails the start at once, with its exit code:
  // a worker refusing its device (exit 7: a CUDA device in a build without CUDA) is not a
  // start that merely needs longer.
  std::unique_lock<std::mutex> lock(*ready_mutex);
  const auto give_up = std::chrono::steady_clock::now() + options.start_timeout;
  while (!*ready && !exited->load() && std::chrono::steady_clock::now() < give_up) {
    ready_cv->wait_for(lock, std::chrono::milliseconds(200), [&] { return *ready || exited->load(); });
    if (*ready || exited->load()) break;
    for (size_t i = 0; i < c->workers_.size(); ++i) {
      auto code = c->workers_[i]->Wait(std::chrono::milliseconds(0));
      if (!code.ok()) continue;  // still running
      lock.unlock();
      c->Stop();
      const std::string what = "worker " + std::to_string(i) + " exited with code " + std::to_string(*code) +
                               " before the cluster served (its log above says why)";
      if (*code == kExitNotImplemented) return UnimplementedError(what);
      if (*code == kExitInvalidInput) return InvalidArgumentError(what);
      if (*code == kExitUsage) return InvalidArgumentError(what);
      return UnavailableError(what);
    }
  }
  if (!*ready) {
    lock.unlock();
    c->Stop();
    return UnavailableError("the local cluster did not start serving within " +
                            std::to_string(options.start_timeout.count() / 1000) + " s (see the log above)");
  }
  return c;
}

Status LocalCluster::AddWorker(const std::vector<std::string>& extra_args) {
  const auto binary = options_.worker_binary.empty() ? ExecutableDir() / "xcpipe-worker" : options_.worker_binary;
  const size_t i = workers_.size();
  std::vector<std::string> argv = {binary.string(), "--coordinator", address_, "--worker-id",
                                   "local-" + std::to_string(i)};
  // Workers compute on options.device unless their extra args name one (GPU tests): the
  // worker's parser refuses an option given twice.
  if (std::find(extra_args.begin(), extra_args.end(), "--device") == extra_args.end()) {
    argv.insert(argv.end(), {"--device", options_.device});
  }
  if (options_.generic && std::find(extra_args.begin(), extra_args.end(), "--generic") == extra_args.end()) {
    argv.push_back("--generic");
  }
  // A worker's own --threads in its extra args (unequal hosts simulated on one machine) replaces
  // the shared setting: the worker's parser refuses an option given twice.
  if (std::find(extra_args.begin(), extra_args.end(), "--threads") == extra_args.end()) {
    argv.insert(argv.end(), {"--threads", std::to_string(threads_)});
  }
  if (!options_.keys_dir.empty()) {
    argv.insert(argv.end(), {"--secret-key", (options_.keys_dir / "worker.key").string(), "--server-key",
                             (options_.keys_dir / "coordinator.pub").string()});
  }
  for (const auto& a : extra_args) argv.push_back(a);
  auto p = Subprocess::Start(argv, {.capture_stdout = false, .silence_stderr = options_.quiet_workers, .extra_env = {}});
  if (!p.ok()) return p.status().WithContext("starting worker " + std::to_string(i));
  workers_.push_back(std::move(p).value());
  return OkStatus();
}

void LocalCluster::RequestDrain() {
  if (coordinator_) coordinator_->RequestDrain();
}

int LocalCluster::Stop() {
  if (stopped_) return exit_code_->load();
  stopped_ = true;
  if (coordinator_) coordinator_->RequestStop();
  if (thread_.joinable()) thread_.join();
  // The coordinator told the workers to shut down; give them a moment, then make sure.
  for (auto& w : workers_) {
    auto code = w->Wait(std::chrono::seconds(10));
    if (!code.ok()) {
      w->Signal(SIGKILL);
      (void)w->Wait(std::chrono::seconds(5));
    }
  }
  return exit_code_->load();
}

LocalCluster::~LocalCluster() { Stop(); }

}  // namespace xcpipe::coordinator
