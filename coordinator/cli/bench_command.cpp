// xcpipe bench strategies: the placement strategies compared on one fixed workload. For each
// strategy a LocalCluster (coordinator thread + xcpipe-worker processes) plans with it, the
// same requests run through it (half of them with an image, several clients at once, greedy),
// and the figures are printed side by side: throughput, TTFT percentiles, per-stage compute
// time and its imbalance, the planner's predicted bottleneck and each stage's peak resident
// memory. Greedy decoding makes the tokens a function of the model and the prompt only, so
// every strategy must produce the same tokens; a difference is reported and fails (exit 6).
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "commands.h"
#include "signalled_cluster.h"
#include "xcpipe/base/exit_codes.h"
#include "xcpipe/base/files.h"
#include "xcpipe/base/log.h"
#include "xcpipe/base/subprocess.h"
#include "xcpipe/coordinator/client.h"
#include "xcpipe/coordinator/local_cluster.h"
#include "xcpipe/image/synthetic.h"

namespace xcpipe::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// Worker heartbeats carry the stage counters (busy time) every 250 ms; waiting a few intervals
// after the workload lets the status reflect its last steps.
constexpr auto kCountersSettle = 1000ms;
constexpr auto kConnectTimeout = 30s;
constexpr auto kStatusTimeout = 10s;

struct BenchOptions {
  fs::path model_dir;
  fs::path tokenizer;
  int workers = 3;
  std::string strategies = "balanced,even,greedy-memory";
  int requests = 8;
  int clients = 4;
  uint32_t max_new_tokens = 32;
  std::string threads_per_worker;  // "N" or "N1,N2,...": one per worker
  fs::path image;
  std::string dtype = "f32";
  int64_t max_sequences = 8;
  int64_t max_context = 2048;
  std::string spec_overrides;
  bool rebalance = false;
  std::string vision_stage = "auto";  // CoordinatorOptions::vision_stage for every strategy
  bool json = false;
  fs::path out;
  int timeout_s = 600;
  std::string log_level = "warn";
};

std::vector<std::string> SplitList(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

// --- the workload --------------------------------------------------------------------------

// Request i of the fixed workload: even indices ask about the image, odd ones are text only.
coordinator::GenerateRequest WorkloadRequest(int i, const std::string& image, uint32_t max_new_tokens) {
  coordinator::GenerateRequest r;
  if (i % 2 == 0) {
    r.prompt_json =
        nlohmann::json("<ImageHere>Describe this picture in detail, view " + std::to_string(i) + ".").dump();
    r.images = {image};
  } else {
    r.prompt_json =
        nlohmann::json("Write a short story about a lighthouse keeper, chapter " + std::to_string(i) + ".").dump();
  }
  r.max_new_tokens = max_new_tokens;
  r.sampling.greedy = true;
  return r;
}

// Nearest-rank percentile (p in 0..100) of unsorted values.
double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  return v[std::clamp<size_t>(rank, 1, v.size()) - 1];
}

struct StageFigures {
  int stage = 0;
  std::string worker;
  std::string blocks;
  int threads = 0;
  double busy_ms = 0;  // compute time during the measured workload
  double predicted_step_ms = 0;
  double step_p50_ms = 0;
  double step_p99_ms = 0;
  uint64_t planned_bytes = 0;
  uint64_t peak_resident_bytes = 0;
};

// A vision worker (vision apart): the images it encoded during the workload and its median
// encode time. Its encodes are not in the worker's busy time (busy_ms_total counts pipeline
// steps only), so busy max/mean counts it as idle.
struct VisionFigures {
  std::string worker;
  uint64_t images_encoded = 0;
  double encode_p50_ms = 0;
  uint64_t peak_resident_bytes = 0;
};

struct StrategyRun {
  std::string strategy;
  double wall_s = 0;
  uint64_t tokens = 0;
  double tokens_per_s = 0;
  double ttft_p50_ms = 0;
  double ttft_p99_ms = 0;
  std::vector<StageFigures> stages;
  // Max over mean of the busy time over every worker of the cluster: a worker the plan leaves
  // without a stage counts as idle, so a plan that uses fewer workers is not "balanced".
  double busy_imbalance = 0;
  int bottleneck_stage = -1;  // the stage with the largest predicted step time
  double bottleneck_predicted_ms = 0;
  uint64_t peak_resident_max_bytes = 0;
  uint64_t rebalances = 0;
  std::vector<std::vector<int64_t>> request_tokens;
  // Where the vision block ran (the status's vision_stage: "first" on stage 0, "separate" on
  // vision workers of its own) and why (vision_reason); the vision workers when separate.
  std::string vision_stage;
  std::string vision_reason;
  std::vector<VisionFigures> vision_workers;
};

// Busy milliseconds per worker id, from a status reply.
std::map<std::string, double> BusyByWorker(const nlohmann::json& status) {
  std::map<std::string, double> out;
  for (const auto& w : status["workers"]) out[w["id"].get<std::string>()] = w.value("busy_ms_total", 0.0);
  return out;
}

// One strategy: cluster up, one warm-up request, the workload, the figures, cluster down.
StatusOr<StrategyRun> RunStrategy(const BenchOptions& o, const std::string& strategy, const std::vector<int>& threads,
                                  const std::string& image) {
  coordinator::LocalClusterOptions lo;
  lo.model_dir = o.model_dir;
  lo.tokenizer = o.tokenizer;
  lo.workers = o.workers;
  lo.dtype = o.dtype;
  lo.quiet_workers = true;
  lo.threads_per_worker = threads.front();
  for (int t : threads) lo.worker_extra_args.push_back({"--threads", std::to_string(t)});
  lo.coordinator.strategy = strategy;
  lo.coordinator.max_sequences = o.max_sequences;
  lo.coordinator.max_context = o.max_context;
  lo.coordinator.spec_overrides = o.spec_overrides;
  // The plan under test must stay the plan: rebalancing would move every strategy's blocks
  // toward the same measured balance.
  lo.coordinator.rebalance = o.rebalance;
  lo.coordinator.vision_stage = o.vision_stage;
  const auto timeout = std::chrono::seconds(o.timeout_s);

  auto started = StartLocalCluster(lo);
  if (!started.ok()) return started.status().WithContext("strategy " + strategy + ": starting the cluster");
  auto cluster = std::move(started).value();
  const std::string address = cluster->address();

  std::vector<std::unique_ptr<coordinator::Client>> clients;
  for (int c = 0; c < o.clients; ++c) {
    auto client = coordinator::Client::Connect(address, kConnectTimeout, cluster->client_curve());
    if (!client.ok()) return client.status().WithContext("strategy " + strategy + ": connecting a client");
    clients.push_back(std::move(client).value());
  }
  // Warm-up (not measured): first-step allocations and the image path.
  {
    auto warm = clients[0]->Generate(WorkloadRequest(0, image, 2), timeout);
    if (!warm.ok()) return warm.status().WithContext("strategy " + strategy + ": warm-up request");
    if (!warm->error.empty()) return InternalError("strategy " + strategy + ": warm-up request failed: " + warm->error);
  }
  std::this_thread::sleep_for(kCountersSettle);
  auto before = clients[0]->GetStatus(kStatusTimeout);
  if (!before.ok()) return before.status().WithContext("strategy " + strategy + ": status before the workload");

  // The workload: request i goes to client i % clients; every client sends its share one after
  // another, all clients at once.
  std::vector<StatusOr<coordinator::GenerateResult>> results(static_cast<size_t>(o.requests), InternalError("not run"));
  std::mutex mu;
  std::condition_variable cv;
  bool go = false;
  std::vector<std::thread> senders;
  for (int c = 0; c < o.clients; ++c) {
    senders.emplace_back([&, c] {
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return go; });
      }
      for (int i = c; i < o.requests; i += o.clients) {
        results[static_cast<size_t>(i)] =
            clients[static_cast<size_t>(c)]->Generate(WorkloadRequest(i, image, o.max_new_tokens), timeout);
      }
    });
  }
  const auto start = Clock::now();
  {
    std::lock_guard lock(mu);
    go = true;
  }
  cv.notify_all();
  for (auto& t : senders) t.join();
  StrategyRun run;
  run.strategy = strategy;
  run.wall_s = std::chrono::duration<double>(Clock::now() - start).count();

  std::vector<double> ttft;
  for (int i = 0; i < o.requests; ++i) {
    auto& r = results[static_cast<size_t>(i)];
    if (!r.ok()) return r.status().WithContext("strategy " + strategy + ": request " + std::to_string(i));
    if (!r->error.empty()) {
      return InternalError("strategy " + strategy + ": request " + std::to_string(i) + " failed: " + r->error);
    }
    std::vector<int64_t> ids = r->token_ids.empty() ? std::vector<int64_t>{} : r->token_ids[0];
    run.tokens += ids.size();
    run.request_tokens.push_back(std::move(ids));
    ttft.push_back(r->ttft_ms);
  }
  run.tokens_per_s = run.wall_s > 0 ? static_cast<double>(run.tokens) / run.wall_s : 0;
  run.ttft_p50_ms = Percentile(ttft, 50);
  run.ttft_p99_ms = Percentile(ttft, 99);

  std::this_thread::sleep_for(kCountersSettle);
  auto after = clients[0]->GetStatus(kStatusTimeout);
  if (!after.ok()) return after.status().WithContext("strategy " + strategy + ": status after the workload");
  run.rebalances = after->value("rebalances", uint64_t{0});
  run.vision_stage = after->value("vision_stage", "");
  run.vision_reason = after->value("vision_reason", "");
  std::map<std::string, uint64_t> encoded_before;
  for (const auto& w : (*before)["workers"])
    encoded_before[w["id"].get<std::string>()] = w.value("images_encoded", uint64_t{0});
  const auto busy_before = BusyByWorker(*before);
  for (const auto& w : (*after)["workers"]) {
    if (w.value("role", "") == "vision") {
      VisionFigures v;
      v.worker = w["id"].get<std::string>();
      v.images_encoded = w.value("images_encoded", uint64_t{0}) - encoded_before[v.worker];
      v.encode_p50_ms = w.value("encode_p50_ms", 0.0);
      v.peak_resident_bytes = PeakResidentBytes(static_cast<pid_t>(w.value("pid", int64_t{0})));
      run.vision_workers.push_back(v);
      continue;
    }
    if (w.value("stage", -1) < 0) continue;
    StageFigures s;
    s.stage = w["stage"].get<int>();
    s.worker = w["id"].get<std::string>();
    s.blocks = w.value("blocks", "");
    // LocalCluster names its workers local-<i> in start order, which is the order of --threads-per-worker.
    if (s.worker.rfind("local-", 0) == 0) {
      const size_t index = std::stoul(s.worker.substr(6));
      if (index < threads.size()) s.threads = threads[index];
    }
    auto prior = busy_before.find(s.worker);
    s.busy_ms = w.value("busy_ms_total", 0.0) - (prior == busy_before.end() ? 0.0 : prior->second);
    s.predicted_step_ms = w.value("predicted_step_ms", 0.0);
    s.step_p50_ms = w.value("step_p50_ms", 0.0);
    s.step_p99_ms = w.value("step_p99_ms", 0.0);
    s.planned_bytes = w.value("planned_bytes", uint64_t{0});
    s.peak_resident_bytes = PeakResidentBytes(static_cast<pid_t>(w.value("pid", int64_t{0})));
    run.stages.push_back(s);
  }
  std::sort(run.stages.begin(), run.stages.end(), [](const auto& a, const auto& b) { return a.stage < b.stage; });
  if (run.stages.empty()) return InternalError("strategy " + strategy + ": the status lists no stage");
  double busy_sum = 0, busy_max = 0;
  for (const auto& s : run.stages) {
    busy_sum += s.busy_ms;
    busy_max = std::max(busy_max, s.busy_ms);
    if (s.predicted_step_ms > run.bottleneck_predicted_ms) {
      run.bottleneck_predicted_ms = s.predicted_step_ms;
      run.bottleneck_stage = s.stage;
    }
    run.peak_resident_max_bytes = std::max(run.peak_resident_max_bytes, s.peak_resident_bytes);
  }
  const double busy_mean = busy_sum / static_cast<double>(std::max(run.stages.size(), static_cast<size_t>(o.workers)));
  run.busy_imbalance = busy_mean > 0 ? busy_max / busy_mean : 0;
  clients.clear();
  cluster->Stop();
  return run;
}

// The columns compared across strategies, and which way is better.
struct Column {
  const char* key;
  bool higher_is_better;
  double (*value)(const StrategyRun&);
};
const std::array<Column, 6> kColumns = {{
    {"tokens_per_s", true, [](const StrategyRun& r) { return r.tokens_per_s; }},
    {"ttft_p50_ms", false, [](const StrategyRun& r) { return r.ttft_p50_ms; }},
    {"ttft_p99_ms", false, [](const StrategyRun& r) { return r.ttft_p99_ms; }},
    {"busy_imbalance", false, [](const StrategyRun& r) { return r.busy_imbalance; }},
    {"bottleneck_predicted_ms", false, [](const StrategyRun& r) { return r.bottleneck_predicted_ms; }},
    {"peak_resident_max_bytes", false,
     [](const StrategyRun& r) { return static_cast<double>(r.peak_resident_max_bytes); }},
}};

// The best strategy per column (the first one on a tie).
std::map<std::string, std::string> BestPerColumn(const std::vector<StrategyRun>& runs) {
  std::map<std::string, std::string> best;
  for (const auto& c : kColumns) {
    const StrategyRun* winner = nullptr;
    for (const auto& r : runs) {
      if (winner == nullptr || (c.higher_is_better ? c.value(r) > c.value(*winner) : c.value(r) < c.value(*winner))) {
        winner = &r;
      }
    }
    if (winner != nullptr) best[c.key] = winner->strategy;
  }
  return best;
}

double Mib(uint64_t bytes) { return static_cast<double>(bytes) / 1048576.0; }

std::string JoinStages(const StrategyRun& r, const std::function<std::string(const StageFigures&)>& cell) {
  std::string out;
  for (const auto& s : r.stages) out += (out.empty() ? "" : "/") + cell(s);
  return out;
}

std::string Fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

// "first" (on stage 0) or "separate (N)" with N vision workers.
std::string VisionCell(const StrategyRun& r) {
  if (r.vision_stage == "separate") return "separate (" + std::to_string(r.vision_workers.size()) + ")";
  return r.vision_stage.empty() ? "-" : r.vision_stage;
}

void PrintTable(const nlohmann::json& report, const std::vector<StrategyRun>& runs,
                const std::map<std::string, std::string>& best) {
  const auto& cfg = report["config"];
  std::printf(
      "xcpipe bench strategies: %s, %d workers (threads %s), %d requests from %d clients, %u new tokens, greedy\n",
      cfg["model"].get<std::string>().c_str(), cfg["workers"].get<int>(), cfg["threads_per_worker"].dump().c_str(),
      cfg["requests"].get<int>(), cfg["clients"].get<int>(), cfg["max_new_tokens"].get<uint32_t>());
  auto mark = [&](const char* column, const StrategyRun& r, const std::string& text) {
    return text + (best.at(column) == r.strategy ? "*" : " ");
  };
  std::printf("vision: --vision-stage %s\n", cfg["vision_stage"].get<std::string>().c_str());
  std::printf("\n%-14s %10s %12s %12s %10s %22s %14s  %s\n", "strategy", "tok/s", "ttft p50 ms", "ttft p99 ms",
              "busy max/", "predicted bottleneck", "peak RSS max", "vision");
  std::printf("%-14s %10s %12s %12s %10s %22s %14s  %s\n", "", "", "", "", "mean", "stage: step ms", "MiB", "");
  for (const auto& r : runs) {
    std::printf("%-14s %10s %12s %12s %10s %22s %14s  %s\n", r.strategy.c_str(),
                mark("tokens_per_s", r, Fixed(r.tokens_per_s, 2)).c_str(),
                mark("ttft_p50_ms", r, Fixed(r.ttft_p50_ms, 0)).c_str(),
                mark("ttft_p99_ms", r, Fixed(r.ttft_p99_ms, 0)).c_str(),
                mark("busy_imbalance", r, Fixed(r.busy_imbalance, 2)).c_str(),
                mark("bottleneck_predicted_ms", r,
                     std::to_string(r.bottleneck_stage) + ": " + Fixed(r.bottleneck_predicted_ms, 2))
                    .c_str(),
                mark("peak_resident_max_bytes", r, Fixed(Mib(r.peak_resident_max_bytes), 0)).c_str(),
                VisionCell(r).c_str());
  }
  std::printf("(* best in its column)\n\nvision placement (the status's vision_reason):\n");
  for (const auto& r : runs) {
    std::printf("%-14s %s\n", r.strategy.c_str(), r.vision_reason.c_str());
    for (const auto& v : r.vision_workers) {
      std::printf("%-14s   vision worker %s: %llu images encoded, encode p50 %.1f ms, peak RSS %.0f MiB\n", "",
                  v.worker.c_str(), static_cast<unsigned long long>(v.images_encoded), v.encode_p50_ms,
                  Mib(v.peak_resident_bytes));
    }
  }
  std::printf("\nper stage (stage 0/1/...):\n");
  std::printf("%-14s %-22s %-12s %-24s %-24s %-22s\n", "strategy", "blocks", "threads", "busy ms", "predicted step ms",
              "peak RSS MiB");
  for (const auto& r : runs) {
    std::printf("%-14s %-22s %-12s %-24s %-24s %-22s\n", r.strategy.c_str(),
                JoinStages(r, [](const StageFigures& s) { return s.blocks; }).c_str(),
                JoinStages(r, [](const StageFigures& s) { return std::to_string(s.threads); }).c_str(),
                JoinStages(r, [](const StageFigures& s) { return Fixed(s.busy_ms, 0); }).c_str(),
                JoinStages(r, [](const StageFigures& s) { return Fixed(s.predicted_step_ms, 2); }).c_str(),
                JoinStages(r, [](const StageFigures& s) { return Fixed(Mib(s.peak_resident_bytes), 0); }).c_str());
  }
  std::printf("\ntokens identical across strategies: %s\n", report["tokens_identical"].get<bool>() ? "yes" : "NO");
}

nlohmann::json RunToJson(const StrategyRun& r) {
  nlohmann::json vision = nlohmann::json::array();
  for (const auto& v : r.vision_workers) {
    vision.push_back({{"worker", v.worker},
                      {"images_encoded", v.images_encoded},
                      {"encode_p50_ms", v.encode_p50_ms},
                      {"peak_resident_bytes", v.peak_resident_bytes}});
  }
  nlohmann::json stages = nlohmann::json::array();
  for (const auto& s : r.stages) {
    stages.push_back({{"stage", s.stage},
                      {"worker", s.worker},
                      {"blocks", s.blocks},
                      {"threads", s.threads},
                      {"busy_ms", s.busy_ms},
                      {"predicted_step_ms", s.predicted_step_ms},
                      {"step_p50_ms", s.step_p50_ms},
                      {"step_p99_ms", s.step_p99_ms},
                      {"planned_bytes", s.planned_bytes},
                      {"peak_resident_bytes", s.peak_resident_bytes}});
  }
  return {{"strategy", r.strategy},
          {"wall_s", r.wall_s},
          {"tokens", r.tokens},
          {"tokens_per_s", r.tokens_per_s},
          {"ttft_p50_ms", r.ttft_p50_ms},
          {"ttft_p99_ms", r.ttft_p99_ms},
          {"stages_used", r.stages.size()},
          {"busy_imbalance", r.busy_imbalance},
          {"bottleneck_stage", r.bottleneck_stage},
          {"bottleneck_predicted_ms", r.bottleneck_predicted_ms},
          {"peak_resident_max_bytes", r.peak_resident_max_bytes},
          {"rebalances", r.rebalances},
          {"stages", stages},
          {"request_tokens", r.request_tokens},
          {"vision_stage", r.vision_stage},
          {"vision_reason", r.vision_reason},
          {"vision_workers", vision}};
}

int RunBenchStrategies(const BenchOptions& o) {
  (void)InitLogging({"xcpipe", o.log_level});
  auto usage = [](const std::string& message) {
    std::fprintf(stderr, "xcpipe bench strategies: %s (see --help)\n", message.c_str());
    return static_cast<int>(kExitUsage);
  };
  const std::vector<std::string> strategies = SplitList(o.strategies);
  if (strategies.empty()) return usage("--strategies names no strategy");
  for (const auto& s : strategies) {
    if (s != "balanced" && s != "even" && s != "greedy-memory") {
      return usage("unknown strategy '" + s + "' (balanced, even, greedy-memory)");
    }
  }
  std::vector<int> threads;
  if (o.threads_per_worker.empty()) {
    threads.assign(static_cast<size_t>(o.workers),
                   std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / o.workers));
  } else {
    for (const auto& item : SplitList(o.threads_per_worker)) {
      try {
        size_t used = 0;
        const int t = std::stoi(item, &used);
        if (used != item.size() || t < 1) throw std::invalid_argument(item);
        threads.push_back(t);
      } catch (const std::exception&) {
        return usage("--threads-per-worker: '" + item + "' is not a positive whole number");
      }
    }
    if (threads.size() == 1) threads.assign(static_cast<size_t>(o.workers), threads.front());
    if (threads.size() != static_cast<size_t>(o.workers)) {
      return usage("--threads-per-worker lists " + std::to_string(threads.size()) + " values for " +
                   std::to_string(o.workers) + " workers (give one value, or one per worker)");
    }
  }
  if (!fs::is_directory(o.model_dir) || !fs::exists(o.model_dir / "config.json")) {
    std::fprintf(stderr, "xcpipe bench strategies: %s is not a model folder (no config.json)\n", o.model_dir.c_str());
    return kExitInvalidInput;
  }
  std::string image;
  std::string image_source = "synthetic 224x224 RGB PNG";
  if (!o.image.empty()) {
    auto bytes = ReadFileToString(o.image);
    if (!bytes.ok()) {
      std::fprintf(stderr, "xcpipe bench strategies: --image: %s\n", bytes.status().ToString().c_str());
      return kExitInvalidInput;
    }
    image = std::move(bytes).value();
    image_source = o.image.string();
  } else {
    image = image::SyntheticPng(224, 224);
  }

  nlohmann::json report;
  report["benchmark"] = "bench_strategies";
  report["config"] = {{"model", o.model_dir.string()},
                      {"workers", o.workers},
                      {"threads_per_worker", threads},
                      {"strategies", strategies},
                      {"requests", o.requests},
                      {"requests_with_image", (o.requests + 1) / 2},
                      {"clients", o.clients},
                      {"max_new_tokens", o.max_new_tokens},
                      {"image", image_source},
                      {"dtype", o.dtype},
                      {"max_sequences", o.max_sequences},
                      {"max_context", o.max_context},
                      {"rebalance", o.rebalance},
                      {"vision_stage", o.vision_stage},
                      {"cores", std::thread::hardware_concurrency()}};

  std::vector<StrategyRun> runs;
  for (size_t k = 0; k < strategies.size(); ++k) {
    const auto& strategy = strategies[k];
    std::fprintf(stderr, "[%zu/%zu] %s: starting %d workers and running %d requests...\n", k + 1, strategies.size(),
                 strategy.c_str(), o.workers, o.requests);
    auto run = RunStrategy(o, strategy, threads, image);
    if (!run.ok()) {
      std::fprintf(stderr, "xcpipe bench strategies: %s\n", run.status().ToString().c_str());
      const StatusCode code = run.status().code();
      if (code == StatusCode::kInvalidArgument || code == StatusCode::kNotFound) return kExitInvalidInput;
      if (run.status().message().find("starting the cluster") != std::string::npos) return kExitUnavailable;
      return ExitCodeFor(run.status());
    }
    std::fprintf(stderr, "[%zu/%zu] %s: %.2f tokens/s, TTFT p50 %.0f ms, stages %s, vision %s\n", k + 1,
                 strategies.size(), strategy.c_str(), run->tokens_per_s, run->ttft_p50_ms,
                 JoinStages(*run, [](const StageFigures& s) { return s.blocks; }).c_str(), VisionCell(*run).c_str());
    runs.push_back(std::move(run).value());
  }

  // Greedy tokens depend on the model and the prompt only: any difference is a bug.
  nlohmann::json mismatches = nlohmann::json::array();
  for (size_t k = 1; k < runs.size(); ++k) {
    for (size_t i = 0; i < runs[k].request_tokens.size(); ++i) {
      if (runs[k].request_tokens[i] != runs[0].request_tokens[i]) {
        mismatches.push_back({{"request", i}, {"strategy", runs[k].strategy}, {"reference", runs[0].strategy}});
      }
    }
  }
  const bool identical = mismatches.empty();
  const auto best = BestPerColumn(runs);
  report["strategies"] = nlohmann::json::array();
  for (const auto& r : runs) report["strategies"].push_back(RunToJson(r));
  report["best"] = best;
  report["tokens_identical"] = identical;
  report["token_mismatches"] = mismatches;

  if (o.json) {
    std::printf("%s\n", report.dump(2).c_str());
  } else {
    PrintTable(report, runs, best);
  }
  std::fflush(stdout);
  if (!o.out.empty()) {
    if (o.out.has_parent_path()) {
      std::error_code ec;
      fs::create_directories(o.out.parent_path(), ec);
    }
    if (Status st = WriteFileAtomically(o.out, report.dump(2) + "\n"); !st.ok()) {
      std::fprintf(stderr, "xcpipe bench strategies: --out: %s\n", st.ToString().c_str());
      return kExitFailure;
    }
    std::fprintf(stderr, "wrote %s\n", o.out.c_str());
  }
  if (!identical) {
    std::fprintf(stderr, "xcpipe bench strategies: greedy tokens differ between strategies on %zu request(s)\n",
                 mismatches.size());
    return kExitCheckFailed;
  }
  return kExitOk;
}

}  // namespace

void AddBenchCommand(CLI::App& app, Action& action) {
  auto* bench = app.add_subcommand("bench", "benchmarks on this machine (placement strategies)");
  bench->require_subcommand(1);
  bench->footer("The decode, data-plane and pipeline benchmarks are separate programs: see bench/run_benchmarks.sh.");

  auto* sub = bench->add_subcommand("strategies", "compare the placement strategies on one fixed workload");
  sub->footer(
      "For each strategy, a local cluster (a coordinator planning with that strategy and --workers\n"
      "xcpipe-worker processes) serves the same workload: --requests requests, every other one with an\n"
      "image (--image, or a synthetic 224x224 PNG), sent by --clients clients at once, greedy. Printed\n"
      "side by side, the best of each column marked '*':\n"
      "  tok/s              generated tokens / wall time of the whole workload\n"
      "  ttft p50/p99       submit to first token, over the requests\n"
      "  busy max/mean      compute time during the workload, slowest worker over the mean of all the\n"
      "                     workers (one the plan leaves idle counts as 0); 1.00 is a perfect balance\n"
      "  predicted          the planner's slowest stage and its predicted step time\n"
      "  peak RSS           each worker's peak resident memory (VmHWM in /proc/<pid>/status)\n"
      "  vision             where the vision block ran, from the status: first (on stage 0) or\n"
      "                     separate (N) on N vision workers of its own; the reason is printed below\n"
      "                     the table. --vision-stage first|separate|auto asks every strategy for\n"
      "                     that placement (auto: the planner decides, the coordinator's default;\n"
      "                     separate falls back to first, saying why, when it does not fit). A\n"
      "                     vision worker's encodes are not in busy max/mean (it counts as idle\n"
      "                     there); its images and encode p50 are printed below the table\n"
      "Every strategy must produce the same greedy tokens; if not, the differences are reported and the\n"
      "command fails with exit code 6. Rebalancing is off unless --rebalance, so each plan is measured as\n"
      "made. Progress goes to stderr; the table (or --json) to stdout.\n\n"
      "Simulating unequal hosts: --threads-per-worker 1,1,2 gives the workers 1, 1 and 2 compute threads.\n"
      "On a small machine keep the sum at or below the cores, or the workers compete for them.\n\n"
      "Example:\n"
      "  xcpipe mkmodel --arch ixc2-vl --preset small --out /tmp/m\n"
      "  xcpipe bench strategies --model /tmp/m --workers 3 --threads-per-worker 1,1,1 --out strategies.json\n"
      "  xcpipe bench strategies --model /tmp/m --workers 3 --threads-per-worker 1,1,1 --vision-stage separate\n"
      "Exit codes: 0 done, 2 usage, 4 bad model or image, 5 a cluster did not come up, 6 tokens differ\n"
      "between strategies, 1 a request failed.");
  auto o = std::make_shared<BenchOptions>();
  sub->add_option("--model", o->model_dir, "checkpoint folder")->required();
  sub->add_option("--tokenizer", o->tokenizer, "tokenizer.model (default: found next to the model)");
  sub->add_option("--workers", o->workers, "worker processes (pipeline stages)")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  sub->add_option("--strategies", o->strategies, "comma-separated: balanced, even, greedy-memory")
      ->capture_default_str();
  sub->add_option("--requests", o->requests, "requests in the workload (every other one with the image)")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  sub->add_option("--clients", o->clients, "clients sending at once (request i goes to client i mod N)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  sub->add_option("--max-new-tokens", o->max_new_tokens, "new tokens per request (greedy)")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1u << 20));
  sub->add_option("--threads-per-worker", o->threads_per_worker,
                  "compute threads: one value for all workers or one per worker, e.g. 1,1,2 "
                  "(default: the cores split between the workers)");
  sub->add_option("--image", o->image, "PNG or JPEG for the image requests (default: a synthetic PNG)");
  sub->add_option("--dtype", o->dtype, "compute dtype: f32 or bf16")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "bf16"}));
  sub->add_option("--max-sequences", o->max_sequences, "sequences served at once (the plan's KV room)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  sub->add_option("--max-context", o->max_context, "prompt + new tokens of one sequence (an image takes its rows)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{16}, int64_t{1} << 24));
  sub->add_option("--spec-overrides", o->spec_overrides,
                  "JSON of model facts the checkpoint cannot state (default: from <model>/../model_info.json "
                  "when present, as for the test fixtures)");
  sub->add_flag("--rebalance", o->rebalance, "let the coordinator move blocks while serving (default: off)");
  sub->add_option("--vision-stage", o->vision_stage,
                  "where every strategy's plan puts the vision block: first (stage 0), separate (workers of its "
                  "own) or auto (the planner decides)")
      ->capture_default_str()
      ->check(CLI::IsMember({"first", "separate", "auto"}));
  sub->add_option("--timeout", o->timeout_s, "seconds one request may take")
      ->capture_default_str()
      ->check(CLI::Range(1, 86400));
  sub->add_option("--log-level", o->log_level, "coordinator log level on stderr: trace, debug, info, warn, error, off")
      ->capture_default_str();
  sub->add_flag("--json", o->json, "print the report as JSON instead of the table");
  sub->add_option("--out", o->out, "also write the JSON report to FILE");
  sub->callback([&action, o] { action = [o] { return RunBenchStrategies(*o); }; });
}

}  // namespace xcpipe::cli
