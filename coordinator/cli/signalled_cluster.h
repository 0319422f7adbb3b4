// SIGINT/SIGTERM in the `xcpipe` CLI. main() installs the handlers (StopSignals; library code
// never does) and hands each signal to OnStopSignal below. A command that runs a local cluster
// starts it with StartLocalCluster: while that cluster lives, a signal drains it (its coordinator
// refuses new requests, lets admitted ones finish, then stops; the command goes on to its end),
// and a signal that comes while a cluster is starting drains it as soon as it is up. Without a
// local cluster starting or running, a signal ends the process as it would without handlers.
// Once a signal has come, every local cluster started later drains at once.
#pragma once

#include <memory>

#include "xcpipe/base/status.h"
#include "xcpipe/coordinator/local_cluster.h"

namespace xcpipe::cli {

// A started local cluster that signals drain while it lives. Movable; destroying it (or Reset)
// takes it out of the signals' reach before the cluster itself is destroyed.
class SignalledCluster {
 public:
  explicit SignalledCluster(std::unique_ptr<coordinator::LocalCluster> cluster);
  SignalledCluster(SignalledCluster&& other) noexcept;
  SignalledCluster& operator=(SignalledCluster&& other) noexcept;
  ~SignalledCluster();

  coordinator::LocalCluster* operator->() const { return cluster_.get(); }
  coordinator::LocalCluster& operator*() const { return *cluster_; }
  coordinator::LocalCluster* get() const { return cluster_.get(); }
  void Reset();

 private:
  std::unique_ptr<coordinator::LocalCluster> cluster_;
};

// LocalCluster::Start, in the signals' reach from the start.
StatusOr<SignalledCluster> StartLocalCluster(coordinator::LocalClusterOptions options);

// main's StopSignals callback (on its thread): drains the local clusters, or ends the process
// with the signal's default action when there are none.
void OnStopSignal(int signo);

}  // namespace xcpipe::cli
