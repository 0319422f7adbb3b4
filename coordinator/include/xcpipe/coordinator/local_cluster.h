// LocalCluster: a coordinator (on its own thread in this process) and N xcpipe-worker
// processes on this machine, talking over loopback exactly as across hosts. Used by
// `xcpipe serve-local`, `xcpipe run` (one worker), `xcpipe check-fixtures --workers N`, the
// benchmarks and the integration tests.
//
// Start() returns once the cluster serves (or fails, naming why). The destructor stops the
// coordinator, which tells the workers to shut down, then waits for them (killing any that
// outlive a grace period). Not copyable or movable; use from one thread.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "xcpipe/base/subprocess.h"
#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/coordinator/coordinator.h"

namespace xcpipe::coordinator {

struct LocalClusterOptions {
  std::filesystem::path model_dir;
  std::filesystem::path tokenizer;   // empty: found next to the model
  int workers = 2;
  std::string listen = "tcp://127.0.0.1:*";
  std::string dtype = "auto";        // auto, f32, bf16, f16 (see CoordinatorOptions::dtype)
  // Every worker's --device (a worker's own --device in worker_extra_args wins) and whether
  // workers compute with the generic op sequence (--generic).
  std::string device = "cpu";
  bool generic = false;
  int threads_per_worker = 0;        // 0: the machine's cores split between the workers
  std::filesystem::path worker_binary;  // empty: xcpipe-worker next to this executable
  // Per worker (fault injection; "--device cuda:N" replaces the default "--device cpu").
  std::vector<std::vector<std::string>> worker_extra_args;
  std::chrono::milliseconds start_timeout{180000};
  bool quiet_workers = false;        // send the workers' logs to /dev/null
  CoordinatorOptions coordinator;    // model_dir/listen/expect_workers/dtype are filled in
  // CURVE: a folder with the control::WriteClusterKeys layout (coordinator/worker/client key
  // pairs). The coordinator admits every *.pub in it; workers get worker.key; empty: plain TCP.
  std::filesystem::path keys_dir;
};

class LocalCluster {
 public:
  static StatusOr<std::unique_ptr<LocalCluster>> Start(LocalClusterOptions options);
  ~LocalCluster();
  LocalCluster(const LocalCluster&) = delete;
  LocalCluster& operator=(const LocalCluster&) = delete;

  const std::string& address() const { return address_; }
  // "host:port" of the coordinator's metrics endpoint (options.coordinator.metrics_listen); empty when none.
  std::string metrics_address() const { return coordinator_ ? coordinator_->metrics_address() : std::string(); }
  // What a client of this cluster passes to Client::Connect (keys_dir/client.key); empty
  // (disabled) without keys_dir.
  const control::CurveConfig& client_curve() const { return client_curve_; }
  // Worker i's process (for fault injection: signals).
  Subprocess& worker(size_t i) { return *workers_.at(i); }
  size_t worker_count() const { return workers_.size(); }
  // Starts one more worker process (it registers as a spare until a re-plan uses it).
  Status AddWorker(const std::vector<std::string>& extra_args = {});
  // Stops everything now; returns the coordinator's exit code.
  int Stop();
  // Asks the coordinator to drain (Coordinator::RequestDrain): it finishes admitted requests,
  // tells the workers to shut down and exits 0 (coordinator_exited() turns true). Thread-safe.
  void RequestDrain();
  // True once the coordinator thread has returned (it stops on its own after a fatal error).
  bool coordinator_exited() const { return exited_->load(); }

 private:
  LocalCluster() = default;
  std::unique_ptr<Coordinator> coordinator_;
  std::thread thread_;
  std::shared_ptr<std::atomic<bool>> exited_ = std::make_shared<std::atomic<bool>>(false);
  std::shared_ptr<std::atomic<int>> exit_code_ = std::make_shared<std::atomic<int>>(0);
  std::vector<std::unique_ptr<Subprocess>> workers_;
  std::string address_;
  control::CurveConfig client_curve_;
  bool stopped_ = false;
  LocalClusterOptions options_;
  int threads_ = 1;
};

// Model facts a tiny fixture checkpoint cannot state (checkpoint::FixtureSpecOverrides).
using checkpoint::FixtureSpecOverrides;

}  // namespace xcpipe::coordinator
