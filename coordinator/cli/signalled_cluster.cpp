#include "signalled_cluster.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <csignal>
#include <mutex>
#include <vector>

#include "xcpipe/base/stop_signals.h"

namespace xcpipe::cli {
namespace {

struct Registry {
  std::mutex mutex;
  int starting = 0;                                 // StartLocalCluster calls under way
  std::vector<coordinator::LocalCluster*> running;  // clusters a signal drains
  bool signalled = false;                           // a signal came while one was starting or running
};

Registry& registry() {
  static Registry r;
  return r;
}

void Unregister(coordinator::LocalCluster* cluster) {
  if (cluster == nullptr) return;
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.running.erase(std::remove(r.running.begin(), r.running.end(), cluster), r.running.end());
}

}  // namespace

SignalledCluster::SignalledCluster(std::unique_ptr<coordinator::LocalCluster> cluster) : cluster_(std::move(cluster)) {}

SignalledCluster::SignalledCluster(SignalledCluster&& other) noexcept : cluster_(std::move(other.cluster_)) {}

SignalledCluster& SignalledCluster::operator=(SignalledCluster&& other) noexcept {
  if (this != &other) {
    Reset();
    cluster_ = std::move(other.cluster_);
  }
  return *this;
}

SignalledCluster::~SignalledCluster() { Reset(); }

void SignalledCluster::Reset() {
  Unregister(cluster_.get());
  cluster_.reset();
}

StatusOr<SignalledCluster> StartLocalCluster(coordinator::LocalClusterOptions options) {
  Registry& r = registry();
  {
    std::lock_guard<std::mutex> lock(r.mutex);
    ++r.starting;
  }
  auto started = coordinator::LocalCluster::Start(std::move(options));
  std::lock_guard<std::mutex> lock(r.mutex);
  --r.starting;
  if (!started.ok()) return started.status();
  r.running.push_back(started->get());
  if (r.signalled) (*started)->RequestDrain();
  return SignalledCluster(std::move(started).value());
}

void OnStopSignal(int signo) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (r.starting == 0 && r.running.empty()) {
    // Nothing to drain: the signal's default action (the process ends, killed by it).
    std::signal(signo, SIG_DFL);
    std::raise(signo);
    return;
  }
  spdlog::info("{} received: draining the local cluster", StopSignalName(signo));
  r.signalled = true;
  for (auto* cluster : r.running) cluster->RequestDrain();
}

}  // namespace xcpipe::cli
