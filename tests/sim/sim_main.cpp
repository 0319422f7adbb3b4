// xcpipe-sim: runs the cluster simulator (sim.h) over a range of seeds and reports every
// invariant violation with the command that replays its seed.
//
//   xcpipe-sim --seed 17 [--verbose]        one seed (its schedule, events and the coordinator's log)
//   xcpipe-sim --seeds 1..1000              a range (what the sim.seeds test runs)
//   xcpipe-sim --seeds 1..100000 --jobs 2   a longer range on two processes' worth of threads
//   --no-faults                             the same workloads without the fault schedule
//   --model DIR                             the checkpoint (default: the ixc2_vl fixture)
// Exit status: 0 when no seed violated an invariant, 1 otherwise, 2 for bad arguments.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "sim.h"
#include "xcpipe/testing/paths.h"

namespace {

int Usage() {
  std::fprintf(stderr,
               "usage: xcpipe-sim (--seed N | --seeds A..B) [--jobs J] [--no-faults] [--verbose] [--model DIR]\n");
  return 2;
}

struct Totals {
  uint64_t seeds = 0, failing = 0, delivered = 0, lost = 0, duplicated = 0, kills = 0, pauses = 0, restarts = 0,
           disconnects = 0, completed = 0, failed = 0, abandoned = 0;
  double simulated_s = 0;

  void Add(const Totals& t) {
    seeds += t.seeds;
    failing += t.failing;
    delivered += t.delivered;
    lost += t.lost;
    duplicated += t.duplicated;
    kills += t.kills;
    pauses += t.pauses;
    restarts += t.restarts;
    disconnects += t.disconnects;
    completed += t.completed;
    failed += t.failed;
    abandoned += t.abandoned;
    simulated_s += t.simulated_s;
  }
};

using ull = unsigned long long;

// Runs seeds first + k, first + k + stride, ... up to last; prints each failing seed.
Totals RunSeeds(uint64_t first, uint64_t last, uint64_t k, uint64_t stride, const xcpipe::sim::SimOptions& base,
                const std::string& replay_flags) {
  Totals t;
  for (uint64_t seed = first + k; seed <= last; seed += stride) {
    xcpipe::sim::SimOptions o = base;
    o.seed = seed;
    const auto r = xcpipe::sim::RunSeed(o);
    ++t.seeds;
    t.delivered += r.delivered;
    t.lost += r.lost;
    t.duplicated += r.duplicated;
    t.kills += r.worker_kills;
    t.pauses += r.worker_pauses;
    t.restarts += r.coordinator_restarts;
    t.disconnects += r.client_disconnects;
    t.completed += r.completed;
    t.failed += r.failed;
    t.abandoned += r.abandoned;
    t.simulated_s += r.simulated_s;
    if (first == last) {
      std::printf("seed %llu: %s\n  %llu completed, %llu failed, %llu abandoned; %.1f s simulated\n", ull(seed),
                  r.schedule.c_str(), ull(r.completed), ull(r.failed), ull(r.abandoned), r.simulated_s);
    }
    if (!r.violations.empty()) {
      ++t.failing;
      std::printf("FAIL seed %llu (%s)\n", ull(seed), r.schedule.c_str());
      for (const auto& v : r.violations) std::printf("  %s\n", v.c_str());
      std::printf("  replay: build/bin/xcpipe-sim --seed %llu%s\n", ull(seed), replay_flags.c_str());
    }
    std::fflush(stdout);
  }
  return t;
}

void PrintTotals(const Totals& t, double wall_s) {
  std::printf(
      "%llu seeds, %llu failing, %.1f s wall, %.0f s simulated; %llu messages delivered, %llu lost, "
      "%llu duplicated; %llu worker kills, %llu pauses, %llu coordinator restarts, %llu client "
      "disconnects; requests %llu completed, %llu failed, %llu abandoned\n",
      ull(t.seeds), ull(t.failing), wall_s, t.simulated_s, ull(t.delivered), ull(t.lost), ull(t.duplicated),
      ull(t.kills), ull(t.pauses), ull(t.restarts), ull(t.disconnects), ull(t.completed), ull(t.failed),
      ull(t.abandoned));
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t first = 0, last = 0;
  int jobs = 1;
  xcpipe::sim::SimOptions base;
  bool have_seeds = false;
  std::string extra;  // flags to repeat in the replay command
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string { return i + 1 < argc ? argv[++i] : std::string(); };
    if (a == "--seed") {
      first = last = std::stoull(value());
      have_seeds = true;
    } else if (a == "--seeds") {
      const std::string v = value();
      const auto dots = v.find("..");
      if (dots == std::string::npos) return Usage();
      first = std::stoull(v.substr(0, dots));
      last = std::stoull(v.substr(dots + 2));
      have_seeds = true;
    } else if (a == "--jobs") {
      jobs = std::max(1, std::stoi(value()));
    } else if (a == "--no-faults") {
      base.faults = false;
      extra += " --no-faults";
    } else if (a == "--verbose") {
      base.verbose = true;
    } else if (a == "--model") {
      base.model_dir = value();
      extra += " --model " + base.model_dir.string();
    } else {
      return Usage();
    }
  }
  if (!have_seeds || last < first) return Usage();
  if (base.model_dir.empty()) base.model_dir = xcpipe::testing::FixturesDir() / "ixc2_vl" / "checkpoint";
  const auto started = std::chrono::steady_clock::now();
  auto wall = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(); };
  if (jobs == 1) {
    const Totals t = RunSeeds(first, last, 0, 1, base, extra);
    PrintTotals(t, wall());
    return t.failing == 0 ? 0 : 1;
  }
  // Seeds are split across `jobs` child processes (seed first + k + i * jobs to child k); each
  // prints its failing seeds and hands its totals to the parent through a pipe.
  std::vector<int> pipes;
  std::vector<pid_t> children;
  for (int k = 0; k < jobs; ++k) {
    int fds[2] = {-1, -1};
    if (pipe(fds) != 0) return 2;
    const pid_t pid = fork();
    if (pid < 0) return 2;
    if (pid == 0) {
      close(fds[0]);
      const Totals t = RunSeeds(first, last, static_cast<uint64_t>(k), static_cast<uint64_t>(jobs), base, extra);
      _exit(write(fds[1], &t, sizeof t) == static_cast<ssize_t>(sizeof t) ? 0 : 2);
    }
    close(fds[1]);
    pipes.push_back(fds[0]);
    children.push_back(pid);
  }
  Totals sum;
  bool broken = false;
  for (size_t k = 0; k < children.size(); ++k) {
    Totals t;
    if (read(pipes[k], &t, sizeof t) != static_cast<ssize_t>(sizeof t)) broken = true;
    close(pipes[k]);
    int status = 0;
    waitpid(children[k], &status, 0);
    sum.Add(t);
  }
  PrintTotals(sum, wall());
  return broken ? 2 : (sum.failing == 0 ? 0 : 1);
}
