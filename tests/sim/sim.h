// A deterministic simulation of a whole xcpipe cluster in one process and one thread, on
// simulated time: the real Coordinator (driven through Coordinator::Poll, reading a
// SimulatedClock and talking through a simulated ControlTransport), stand-in workers and
// clients, and a network that reorders, loses, duplicates and delays messages. Each seed picks
// a cluster, a workload and a fault schedule; RunSeed runs it to quiescence and checks the
// invariants (see sim.cpp). A failing seed is replayed exactly by `xcpipe-sim --seed N`.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace xcpipe::sim {

struct SimOptions {
  uint64_t seed = 1;
  std::filesystem::path model_dir;  // a checkpoint the coordinator can describe (no weights read)
  bool faults = true;               // false: the fault-free run of the same workload
  bool verbose = false;             // print the simulation's events and the coordinator's log
  // Simulated time a run may take to quiesce (every request terminal, the cluster idle).
  std::chrono::milliseconds deadline{180000};
};

struct SimResult {
  std::vector<std::string> violations;  // each names the invariant and what was seen
  std::string schedule;                 // the seed's cluster, workload and fault schedule in words
  uint64_t delivered = 0, lost = 0, duplicated = 0;
  uint64_t worker_kills = 0, worker_pauses = 0, coordinator_restarts = 0, client_disconnects = 0;
  uint64_t completed = 0, failed = 0, abandoned = 0;
  double simulated_s = 0;
};

SimResult RunSeed(const SimOptions& options);

}  // namespace xcpipe::sim
