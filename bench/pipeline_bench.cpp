// pipeline_bench: what the pipeline costs and what it buys, measured in one run on one model
// folder through real LocalClusters (coordinator thread + xcpipe-worker processes, loopback
// TCP between stages); text prompts, and in (c) one image prompt.
//
// (a) Decode latency of ONE request: ms per generated token (the client's time after the first
//     token / (tokens - 1)) through 1 worker (the single-process `xcpipe run` path) and through
//     pipelines of --workers (default 2 and 4) stages. The clusters of one thread setting are
//     up together and their repeats interleave (1, 2, 4, 1, 2, 4, ...), so background load hits
//     each alike. ratio = pipeline / single (goal <= 1.05). Beside it, where a decode step's
//     time went, from the coordinator's step counters (`xcpipe status`): the stages' compute,
//     summed, and the rest of the round trip (the hand-offs between processes).
// (b) Throughput: --concurrency (8) requests submitted at once, each from its own client, vs
//     one request alone, on the --batch-workers (2) pipeline; repeats alternate. Two figures,
//     ratio = concurrent / single for each (goal >= 4):
//       end to end: all generated tokens / wall time from submit to the last token. Every
//         prompt's prefill is in it: the chat template makes a text prompt a few hundred
//         tokens, nearly all of them the template's system text, which the coordinator
//         computes once and copies (the shared prompt head; --no-prefix-cache prefills it with
//         every prompt, as before). What is left of prefill grows with the requests.
//       decode: the sum over requests of each one's decode rate ((tokens - 1) / time after its
//         first token): the rate the pipeline sustains once the requests are generating, which
//         is what continuous batching is for.
//
// (c) An image prompt arriving while one request decodes: the decoding request's largest gap
//     between tokens after the image request was sent (when it had 8 tokens), its ordinary
//     decode step (the median gap with no image in flight: before the image was sent or after
//     the image request ended) and their ratio (goal: largest gap < 1.5x the ordinary step), and
//     the image request's time to first token. Configurations, all up together, their repeats
//     alternating; medians:
//       whole prompts, vision on stage 0, N-1 workers (N = --vision-workers, 3)
//       pieces of --piece rows (256; `--prefill-chunk`), vision on stage 0, N-1 workers
//       the same on N workers (N stages)
//       pieces, vision on a worker of its own (`--vision-stage separate`), N workers (1 vision
//         worker + N-1 stages: the same processes as the line above, one more than the N-1 line)
//     and a control on the last cluster: the same decoding request with no image at all, whose
//     largest gap over its median gap is the floor the machine's scheduling noise sets under the
//     ratio. The JSON also gives the window's 50th and 99th percentile gaps over the step.
//     Each cluster's placement is read back from its status (vision_stage, vision workers,
//     stages) and printed. Rebalancing is off, so each plan is measured as made. The image is a
//     synthetic 490x490 PNG (1225 rows on XComposer2-VL). "covered" counts the decoding
//     request's tokens after the image's first token: 0 means it finished first, and its
//     largest gap did not see all of the image's prefill (raise --tokens).
//
// Threads: one request keeps one stage busy at a time, so every worker gets the same compute
// threads as the single process has (--threads, default "1,2": each setting is a section of
// the table). With 1 thread per worker, 2 workers fill the 2 cores exactly and 4 workers only
// oversubscribe when several stages are busy, which (b) does and (a) does not. With 2 threads
// per worker each stage can use both cores while it computes (the default of `xcpipe run` on
// 2 cores). (b) runs at the first setting of --threads (1: 2 workers x 1 thread = the 2 cores).
// Medians of --runs repeats after one warm-up request (or burst) per cluster; generation is
// greedy, --tokens (64) new tokens in (a) and --batch-tokens (192) in (b), where a longer
// generation keeps the prefills from hiding the decode (a request that meets a stop token
// earlier counts the tokens it made; the JSON lists them).
//
// Prints a table per scenario (--scenarios picks them) and writes JSON (default
// <build>/reports/pipeline_bench.json).
//
//   build/bin/pipeline_bench --model DIR [--workers 2,4] [--threads 1,2] [--runs 5]
//                            [--tokens 64] [--batch-tokens 192] [--concurrency 8]
//                            [--batch-workers 2] [--piece 256] [--vision-workers 3]
//                            [--scenarios a,b,c] [--out FILE]
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench_common.h"
#include "xcpipe/base/cli.h"
#include "xcpipe/base/log.h"
#include "xcpipe/base/subprocess.h"
#include "xcpipe/coordinator/client.h"
#include "xcpipe/coordinator/local_cluster.h"
#include "xcpipe/image/synthetic.h"

using namespace xcpipe;
using namespace xcpipe::coordinator;
using SteadyTime = std::chrono::steady_clock;  // not xcpipe::Clock (base/clock.h)
using namespace std::chrono_literals;

namespace {

using bench::Die;
using bench::Median;

struct Options {
  std::string model;
  std::vector<int64_t> workers = {2, 4};
  std::vector<int64_t> threads = {1, 2};
  int runs = 5;
  int tokens = 64;
  int batch_tokens = 192;
  int concurrency = 8;
  int batch_workers = 2;
  int piece = 256;
  int vision_workers = 3;
  std::vector<std::string> scenarios = {"a", "b", "c"};
  std::vector<std::string> stall_configs = {"whole", "pieces", "first", "separate"};
  bool prefix_cache = true;
  std::string out;
};

std::string Prompt(int i) {
  return nlohmann::json("Write a long story about a lighthouse keeper and the sea, chapter " + std::to_string(i + 1) +
                        ".")
      .dump();
}

GenerateRequest MakeRequest(int i, int tokens) {
  GenerateRequest r;
  r.prompt_json = Prompt(i);
  r.max_new_tokens = static_cast<uint32_t>(tokens);
  r.sampling.greedy = true;
  return r;
}

struct Cluster {
  int workers = 0;
  std::unique_ptr<LocalCluster> cluster;
  std::unique_ptr<Client> client;
  std::unique_ptr<Client> status_client;  // asks for the step figures while `client` generates
};

// `vision`: CoordinatorOptions::vision_stage (empty: the coordinator's default); `rebalance`
// false keeps the plan as made.
Cluster StartCluster(const Options& o, int workers, int threads, int64_t piece = 0, const std::string& vision = "",
                     bool rebalance = true) {
  LocalClusterOptions lo;
  lo.model_dir = o.model;
  lo.workers = workers;
  lo.threads_per_worker = threads;
  lo.quiet_workers = true;
  lo.coordinator.prefix_cache = o.prefix_cache;
  lo.coordinator.prefill_chunk_rows = piece;
  if (!vision.empty()) lo.coordinator.vision_stage = vision;
  lo.coordinator.rebalance = rebalance;
  auto started = LocalCluster::Start(lo);
  if (!started.ok()) Die("starting " + std::to_string(workers) + " workers: " + started.status().ToString());
  Cluster c;
  c.workers = workers;
  c.cluster = std::move(started).value();
  auto client = Client::Connect(c.cluster->address(), 30s);
  if (!client.ok()) Die("connecting: " + client.status().ToString());
  c.client = std::move(client).value();
  auto status_client = Client::Connect(c.cluster->address(), 30s);
  if (!status_client.ok()) Die("connecting: " + status_client.status().ToString());
  c.status_client = std::move(status_client).value();
  return c;
}

GenerateResult Generate(Client& client, const GenerateRequest& request,
                        const std::function<void(uint32_t, const std::string&)>& on_text = {}) {
  auto r = client.Generate(request, 10min, on_text);
  if (!r.ok()) Die("generate: " + r.status().ToString());
  if (!r->error.empty()) Die("generate: " + r->error);
  if (r->token_ids.empty() || r->token_ids[0].size() < 2) Die("a request made fewer than 2 tokens");
  return *std::move(r);
}

// Where one request's decode steps went, from the coordinator's step counters read when its
// first token arrived and after its last: per step, the stages' compute (summed over stages)
// and the rest of the round trip (hand-offs between processes; one request never waits behind
// another).
struct DecodeSteps {
  double compute_ms = 0;
  double other_ms = 0;
};

struct StepCounters {
  uint64_t steps = 0;
  double round_trip_ms = 0, compute_ms = 0;
};

StepCounters ReadStepCounters(Client& status_client) {
  auto s = status_client.GetStatus(30s);
  if (!s.ok()) Die("status: " + s.status().ToString());
  return {(*s)["steps_completed"].get<uint64_t>(), (*s)["step_round_trip_ms_total"].get<double>(),
          (*s)["step_compute_ms_total"].get<double>()};
}

GenerateResult GenerateMeasured(Cluster& c, const GenerateRequest& request, DecodeSteps& steps) {
  std::optional<StepCounters> at_first;
  GenerateResult r = Generate(*c.client, request, [&](uint32_t, const std::string&) {
    if (!at_first) at_first = ReadStepCounters(*c.status_client);
  });
  const StepCounters end = ReadStepCounters(*c.status_client);
  if (!at_first || end.steps <= at_first->steps) Die("no decode steps were counted");
  const double n = static_cast<double>(end.steps - at_first->steps);
  steps.compute_ms = (end.compute_ms - at_first->compute_ms) / n;
  steps.other_ms = (end.round_trip_ms - at_first->round_trip_ms) / n - steps.compute_ms;
  return r;
}

// (c): one request decodes; after its 8th token an image prompt arrives. The decoding request's
// largest gap between tokens from then on (ms), its ordinary decode step (the median gap with no
// image in flight), the image request's time to first token, and how many of the decoding
// request's tokens came after the image's first token.
struct Stall {
  double max_gap_ms = 0;
  double decode_step_ms = 0;
  double image_ttft_ms = 0;
  int covered = 0;
  std::vector<double> gaps_ms;  // the decoding request's gaps from the one after the image was sent
};

Stall RunStall(Cluster& c, const std::string& png, int tokens, int salt) {
  auto other = Client::Connect(c.cluster->address(), 30s);
  if (!other.ok()) Die("connecting: " + other.status().ToString());
  std::vector<SteadyTime::time_point> times;  // guarded by mu until `decoding` is joined
  std::mutex mu;
  std::condition_variable cv;
  bool arrived = false;
  auto signal = [&] {
    arrived = true;
    cv.notify_all();
  };
  std::thread decoding([&] {
    Generate(*c.client, MakeRequest(salt, tokens), [&](uint32_t, const std::string&) {
      std::lock_guard lock(mu);
      times.push_back(SteadyTime::now());
      if (times.size() == 8) signal();
    });
    std::lock_guard lock(mu);
    signal();  // a request that stopped early
  });
  size_t from = 0;
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return arrived; });
    from = times.size();
  }
  GenerateRequest image;
  image.prompt_json = nlohmann::json("<ImageHere>Describe the picture.").dump();
  image.images = {png};
  image.max_new_tokens = 2;
  image.sampling.greedy = true;
  const auto sent = SteadyTime::now();
  std::optional<SteadyTime::time_point> image_first;
  const GenerateResult r = Generate(**other, image, [&](uint32_t, const std::string&) {
    if (!image_first) image_first = SteadyTime::now();
  });
  const auto image_done = SteadyTime::now();
  decoding.join();
  Stall s;
  s.image_ttft_ms = r.ttft_ms;
  std::vector<double> ordinary;
  for (size_t i = 1; i < times.size(); ++i) {
    const double gap = bench::Ms(times[i] - times[i - 1]);
    if (i >= from) {
      s.max_gap_ms = std::max(s.max_gap_ms, gap);
      s.gaps_ms.push_back(gap);
    }
    if (times[i] <= sent || times[i - 1] >= image_done) ordinary.push_back(gap);
  }
  s.decode_step_ms = Median(ordinary);
  for (const auto& t : times) s.covered += image_first && t > *image_first;
  return s;
}

// (c)'s control: the same decoding request with no image at all, on the same cluster. Its largest
// gap from the 8th token on is what this machine's scheduling noise alone gives a request of
// that length (the floor under (c)'s largest gap), next to its median gap.
struct Quiet {
  double max_gap_ms = 0;
  double median_gap_ms = 0;
};

Quiet RunQuiet(Cluster& c, int tokens, int salt) {
  std::vector<SteadyTime::time_point> times;
  Generate(*c.client, MakeRequest(salt, tokens),
           [&](uint32_t, const std::string&) { times.push_back(SteadyTime::now()); });
  std::vector<double> gaps;
  for (size_t i = 8; i < times.size(); ++i) gaps.push_back(bench::Ms(times[i] - times[i - 1]));
  Quiet q;
  for (double g : gaps) q.max_gap_ms = std::max(q.max_gap_ms, g);
  q.median_gap_ms = Median(gaps);
  return q;
}

// A percentile (0..1) of a list, by rank.
double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

// (b): `n` requests at once, each from its own connected client: tokens, wall seconds, and the
// sum of the requests' own decode rates (tokens after the first / time after the first).
struct Burst {
  uint64_t tokens = 0;
  double seconds = 0;
  double decode_rate_sum = 0;
  double ttft_ms_max = 0;
};

Burst RunConcurrent(const std::string& address, int n, int tokens, int salt) {
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < n; ++i) {
    auto c = Client::Connect(address, 30s);
    if (!c.ok()) Die("connecting: " + c.status().ToString());
    clients.push_back(std::move(c).value());
  }
  std::mutex mu;
  std::condition_variable cv;
  bool go = false;
  std::vector<GenerateResult> results(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      GenerateRequest req = MakeRequest(salt * n + i, tokens);
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return go; });
      }
      results[i] = Generate(*clients[i], req);
    });
  }
  auto start = SteadyTime::now();
  {
    std::lock_guard lock(mu);
    go = true;
  }
  cv.notify_all();
  for (auto& t : threads) t.join();
  Burst b;
  b.seconds = std::chrono::duration<double>(SteadyTime::now() - start).count();
  for (const auto& r : results) {
    b.tokens += r.token_ids[0].size();
    b.decode_rate_sum += r.tokens_per_s;
    b.ttft_ms_max = std::max(b.ttft_ms_max, r.ttft_ms);
  }
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{
      "pipeline_bench: (a) one request's decode ms/token through N-stage pipelines vs 1 worker; (b)\n"
      "aggregate tokens/s of --concurrency requests vs one on the --batch-workers pipeline; (c) the stall\n"
      "an arriving image prompt causes a decoding request, prefilled whole vs in --piece rows. Greedy.\n"
      "Make a model with: xcpipe mkmodel --arch ixc2-vl --preset small --out DIR"};
  app.add_option("--model", o.model, "checkpoint folder")->required();
  app.add_option("--workers", o.workers, "pipeline sizes to measure, comma-separated")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--threads", o.threads, "threads per worker to measure, comma-separated")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--runs", o.runs, "runs (the median is reported)")->capture_default_str();
  app.add_option("--tokens", o.tokens, "tokens per latency request")->capture_default_str();
  app.add_option("--batch-tokens", o.batch_tokens, "tokens per throughput request")->capture_default_str();
  app.add_option("--concurrency", o.concurrency, "concurrent requests of the throughput run")->capture_default_str();
  app.add_option("--batch-workers", o.batch_workers, "pipeline size of the throughput run")->capture_default_str();
  app.add_option("--piece", o.piece, "(c): prefill piece in rows for the pieces clusters (0 skips (c))")
      ->capture_default_str();
  app.add_option("--vision-workers", o.vision_workers,
                 "(c): workers of the vision comparison: vision on stage 0 over N stages vs vision apart "
                 "(1 vision worker + N-1 stages); whole prompts and the first pieces line run on N-1")
      ->capture_default_str();
  app.add_option("--scenarios", o.scenarios, "scenarios to run, comma-separated: a, b, c")
      ->delimiter(',')
      ->capture_default_str()
      ->check(CLI::IsMember({"a", "b", "c"}));
  app.add_option("--stall-configs", o.stall_configs,
                 "(c): configurations to run, comma-separated: whole (whole prompts, N-1 workers), pieces (N-1 "
                 "workers), first (pieces, vision on stage 0 of N), separate (pieces, 1 vision worker + N-1 stages, "
                 "and its no-image control)")
      ->delimiter(',')
      ->capture_default_str()
      ->check(CLI::IsMember({"whole", "pieces", "first", "separate"}));
  app.add_flag("--no-prefix-cache{false}", o.prefix_cache,
               "prefill the chat template's system text with every prompt (default: computed once, KV copied)");
  app.add_option("--out", o.out, "report file (default: <build>/reports/pipeline_bench.json)");
  if (auto code = ParseOrExit(app, argc, argv)) return *code;
  if (o.runs < 1 || o.tokens < 2 || o.batch_tokens < 2 || o.concurrency < 1 || o.batch_workers < 1 ||
      o.threads.empty() || o.vision_workers < 3) {
    std::fprintf(stderr,
                 "pipeline_bench: --runs, --concurrency, --batch-workers must be >= 1, --tokens, --batch-tokens >= 2, "
                 "--vision-workers >= 3\n");
    return 2;
  }
  auto runs_scenario = [&](const char* name) {
    return std::find(o.scenarios.begin(), o.scenarios.end(), name) != o.scenarios.end();
  };
  if (o.out.empty()) o.out = (ExecutableDir().parent_path() / "reports" / "pipeline_bench.json").string();
  // The coordinator runs on a thread of this process: keep its per-request lines off the table.
  (void)InitLogging({.process_name = "pipeline_bench", .level = "warn"});

  nlohmann::json report;
  report["benchmark"] = "pipeline_bench";
  report["what"] =
      "(a) one request's decode ms/token through N-worker pipelines vs 1 worker; (b) aggregate tokens/s of "
      "concurrent requests vs one, on one pipeline; (c) a decoding request's largest gap between tokens while an image "
      "prompt arrives, vision on stage 0 vs on a worker of its own; LocalCluster, loopback TCP, greedy";
  report["config"] = {{"model", o.model},
                      {"workers", o.workers},
                      {"threads_per_worker", o.threads},
                      {"runs", o.runs},
                      {"tokens", o.tokens},
                      {"batch_tokens", o.batch_tokens},
                      {"concurrency", o.concurrency},
                      {"batch_workers", o.batch_workers},
                      {"cores", std::thread::hardware_concurrency()},
                      {"prefix_cache", o.prefix_cache},
                      {"goal_latency_ratio", 1.05},
                      {"goal_throughput_ratio", 4.0}};
  std::printf("pipeline_bench: %s; %d tokens per request, %d repeats (medians), %u cores\n", o.model.c_str(), o.tokens,
              o.runs, std::thread::hardware_concurrency());

  // (a) ------------------------------------------------------------------------------------
  bool latency_met = true;
  std::unique_ptr<LocalCluster> kept_cluster;  // the (b) pipeline, if (a) started it
  if (runs_scenario("a")) {
    std::vector<int> configs = {1};
    for (int64_t w : o.workers)
      if (w > 1 && std::find(configs.begin(), configs.end(), w) == configs.end())
        configs.push_back(static_cast<int>(w));
    std::printf("\n(a) one request, decode ms per token (client time after the first token / (tokens - 1))\n");
    std::printf(
        "    per decode step, from the coordinator's counters: stages computing (summed) + the rest of the\n"
        "    round trip (hand-offs: coordinator -> stage 0 -> ... -> last stage -> coordinator)\n");
    std::printf("%16s %8s %12s %12s %10s %10s %12s %12s\n", "threads/worker", "workers", "ms/token", "tokens/s",
                "ttft ms", "ratio", "compute ms", "hand-off ms");
    report["latency"] = nlohmann::json::array();
    for (size_t ti = 0; ti < o.threads.size(); ++ti) {
      const int threads = static_cast<int>(o.threads[ti]);
      std::vector<Cluster> clusters;
      for (int w : configs) clusters.push_back(StartCluster(o, w, threads));
      for (auto& c : clusters) Generate(*c.client, MakeRequest(0, o.tokens));  // warm-up
      std::map<int, std::vector<double>> ms, ttft, compute, handoff;
      std::map<int, std::vector<uint64_t>> made;
      for (int r = 0; r < o.runs; ++r) {
        for (auto& c : clusters) {
          DecodeSteps steps;
          GenerateResult g = GenerateMeasured(c, MakeRequest(r + 1, o.tokens), steps);
          ms[c.workers].push_back(1000.0 / g.tokens_per_s);
          ttft[c.workers].push_back(g.ttft_ms);
          made[c.workers].push_back(g.token_ids[0].size());
          compute[c.workers].push_back(steps.compute_ms);
          handoff[c.workers].push_back(steps.other_ms);
        }
      }
      const double single = Median(ms[1]);
      for (int w : configs) {
        const double m = Median(ms[w]);
        const double ratio = m / single;
        if (w > 1) latency_met = latency_met && ratio <= 1.05;
        char ratio_text[32];
        std::snprintf(ratio_text, sizeof ratio_text, "%.3fx", ratio);
        std::printf("%16d %8d %12.2f %12.2f %10.1f %10s %12.2f %12.2f\n", threads, w, m, 1000.0 / m, Median(ttft[w]),
                    w == 1 ? "(single)" : ratio_text, Median(compute[w]), Median(handoff[w]));
        report["latency"].push_back({{"threads_per_worker", threads},
                                     {"workers", w},
                                     {"ms_per_token", ms[w]},
                                     {"median_ms_per_token", m},
                                     {"ttft_ms", ttft[w]},
                                     {"tokens_made", made[w]},
                                     {"compute_ms_per_step", compute[w]},
                                     {"handoff_ms_per_step", handoff[w]},
                                     {"ratio_over_single", ratio}});
      }
      std::fflush(stdout);
      if (ti == 0 && runs_scenario("b")) {
        for (auto& c : clusters) {
          if (c.workers == o.batch_workers) {
            c.client.reset();
            kept_cluster = std::move(c.cluster);
          }
        }
      }
      clusters.clear();  // stops those clusters
    }
  }

  // (b) ------------------------------------------------------------------------------------
  const int threads_b = static_cast<int>(o.threads.front());
  bool throughput_met = true, decode_met = true;
  if (runs_scenario("b")) {
    if (!kept_cluster) {
      Cluster c = StartCluster(o, o.batch_workers, threads_b);
      c.client.reset();
      kept_cluster = std::move(c.cluster);
    }
    const std::string address = kept_cluster->address();
    RunConcurrent(address, o.concurrency, o.tokens, 0);  // warm-up
    std::vector<double> single_tps, burst_tps, single_decode, burst_decode, single_ttft, burst_ttft;
    std::vector<uint64_t> burst_tokens;
    for (int r = 0; r < o.runs; ++r) {
      Burst one = RunConcurrent(address, 1, o.batch_tokens, 1000 + r);
      single_tps.push_back(static_cast<double>(one.tokens) / one.seconds);
      single_decode.push_back(one.decode_rate_sum);
      single_ttft.push_back(one.ttft_ms_max);
      Burst many = RunConcurrent(address, o.concurrency, o.batch_tokens, 2000 + r);
      burst_tps.push_back(static_cast<double>(many.tokens) / many.seconds);
      burst_decode.push_back(many.decode_rate_sum);
      burst_ttft.push_back(many.ttft_ms_max);
      burst_tokens.push_back(many.tokens);
    }
    kept_cluster.reset();
    const double s_tps = Median(single_tps), b_tps = Median(burst_tps), tratio = b_tps / s_tps;
    const double s_dec = Median(single_decode), b_dec = Median(burst_decode), dratio = b_dec / s_dec;
    throughput_met = tratio >= 4.0;
    decode_met = dratio >= 4.0;
    std::printf("\n(b) aggregate tokens/s on %d workers x %d thread(s), %d requests at once vs 1, %d new tokens each\n",
                o.batch_workers, threads_b, o.concurrency, o.batch_tokens);
    std::printf(
        "    end to end = all tokens / wall time from submit to the last token (each prompt's prefill included)\n");
    std::printf("    decode     = sum over requests of (tokens - 1) / (time after that request's first token)\n");
    std::printf("%10s %16s %10s %16s %10s %14s\n", "requests", "end-to-end tok/s", "ratio", "decode tok/s", "ratio",
                "last ttft ms");
    std::printf("%10d %16.2f %10s %16.2f %10s %14.1f\n", 1, s_tps, "(single)", s_dec, "(single)", Median(single_ttft));
    std::printf("%10d %16.2f %9.2fx %16.2f %9.2fx %14.1f\n", o.concurrency, b_tps, tratio, b_dec, dratio,
                Median(burst_ttft));
    report["throughput"] = {{"workers", o.batch_workers},
                            {"threads_per_worker", threads_b},
                            {"concurrency", o.concurrency},
                            {"single_tokens_per_s", single_tps},
                            {"concurrent_tokens_per_s", burst_tps},
                            {"concurrent_tokens_made", burst_tokens},
                            {"median_single_tokens_per_s", s_tps},
                            {"median_concurrent_tokens_per_s", b_tps},
                            {"ratio_concurrent_over_single", tratio},
                            {"single_decode_tokens_per_s", single_decode},
                            {"concurrent_decode_tokens_per_s", burst_decode},
                            {"median_single_decode_tokens_per_s", s_dec},
                            {"median_concurrent_decode_tokens_per_s", b_dec},
                            {"ratio_decode_concurrent_over_single", dratio},
                            {"single_ttft_ms", single_ttft},
                            {"concurrent_last_ttft_ms", burst_ttft}};
  }

  // (c) ------------------------------------------------------------------------------------
  if (runs_scenario("c") && o.piece > 0) {
    const std::string png = image::SyntheticPng(490, 490);
    const int n = o.vision_workers;
    struct StallConfig {
      std::string key;      // JSON
      std::string prefill;  // table
      int workers = 0;
      int64_t piece = 0;
      std::string vision;  // CoordinatorOptions::vision_stage asked for
      Cluster cluster;
      std::string placed, reason;  // the status's vision_stage and vision_reason
      int64_t stages = 0, vision_workers = 0;
      std::vector<Stall> runs;
      std::vector<Quiet> quiet;  // the separate configuration only: the same request, no image
    };
    const std::string pieces = "pieces of " + std::to_string(o.piece) + " rows";
    std::vector<StallConfig> stall;
    auto add = [&](std::string key, std::string prefill, int workers, int64_t piece, std::string vision) {
      StallConfig& c = stall.emplace_back();
      c.key = std::move(key);
      c.prefill = std::move(prefill);
      c.workers = workers;
      c.piece = piece;
      c.vision = std::move(vision);
    };
    auto wanted = [&](const char* name) {
      return std::find(o.stall_configs.begin(), o.stall_configs.end(), name) != o.stall_configs.end();
    };
    if (wanted("whole")) add("whole", "whole prompts", n - 1, 0, "first");
    if (wanted("pieces")) add("pieces", pieces, n - 1, o.piece, "first");
    if (wanted("first")) add("pieces_first_" + std::to_string(n) + "w", pieces, n, o.piece, "first");
    if (wanted("separate")) add("pieces_separate_" + std::to_string(n) + "w", pieces, n, o.piece, "separate");
    for (auto& c : stall) {
      c.cluster = StartCluster(o, c.workers, threads_b, c.piece, c.vision, /*rebalance=*/false);
      RunStall(c.cluster, png, o.tokens, 0);  // warm-up
      auto st = c.cluster.status_client->GetStatus(30s);
      if (!st.ok()) Die("status: " + st.status().ToString());
      c.placed = st->value("vision_stage", "");
      c.reason = st->value("vision_reason", "");
      c.stages = st->value("stages", int64_t{0});
      for (const auto& w : (*st)["workers"]) c.vision_workers += w.value("role", "") == "vision";
    }
    // Repeat r runs the configurations in turn, starting one further along each time.
    for (int r = 0; r < o.runs; ++r) {
      for (size_t k = 0; k < stall.size(); ++k) {
        auto& c = stall[(k + static_cast<size_t>(r)) % stall.size()];
        c.runs.push_back(RunStall(c.cluster, png, o.tokens, 3000 + r));
      }
      if (stall.back().vision == "separate") {
        stall.back().quiet.push_back(RunQuiet(stall.back().cluster, o.tokens, 3000 + r));
      }
    }
    std::printf(
        "\n(c) one request decoding while an image prompt arrives (after its 8th token), %d thread(s) per worker:\n"
        "    largest gap = the decoding request's largest gap between tokens after the image was sent;\n"
        "    decode step = its median gap with no image in flight; ratio = largest gap / decode step (goal < 1.5);\n"
        "    image ttft = the image request's time to first token; covered = the decoding request's tokens\n"
        "    after the image's first token (0: it ended first). Rebalancing off.\n",
        threads_b);
    std::printf("%20s %8s %18s %16s %15s %8s %14s %8s\n", "prefill", "workers", "vision", "largest gap ms",
                "decode step ms", "ratio", "image ttft ms", "covered");
    nlohmann::json rows = nlohmann::json::array();
    for (auto& c : stall) {
      std::vector<double> gap, step, ttft, ratio, covered, p50, p99;
      std::vector<std::vector<double>> gaps;
      for (const Stall& s : c.runs) {
        gaps.push_back(s.gaps_ms);
        p50.push_back(Percentile(s.gaps_ms, 0.5) / s.decode_step_ms);
        p99.push_back(Percentile(s.gaps_ms, 0.99) / s.decode_step_ms);
        gap.push_back(s.max_gap_ms);
        step.push_back(s.decode_step_ms);
        ttft.push_back(s.image_ttft_ms);
        ratio.push_back(s.max_gap_ms / s.decode_step_ms);
        covered.push_back(s.covered);
      }
      auto st = c.cluster.status_client->GetStatus(30s);
      if (!st.ok()) Die("status: " + st.status().ToString());
      nlohmann::json encode = nlohmann::json::array();  // per vision worker: its median of recent encodes
      for (const auto& w : (*st)["workers"]) {
        if (w.value("role", "") == "vision") {
          encode.push_back({{"worker", w.value("id", "")},
                            {"images_encoded", w.value("images_encoded", uint64_t{0})},
                            {"encode_p50_ms", w.value("encode_p50_ms", 0.0)}});
        }
      }
      const std::string vision =
          c.placed == "separate" ? std::to_string(c.vision_workers) + " apart + " + std::to_string(c.stages) + " stages"
                                 : "stage 0 of " + std::to_string(c.stages);
      const double ratio_of_medians = Median(gap) / Median(step);
      std::printf("%20s %8d %18s %16.1f %15.2f %7.1fx %14.1f %8.0f\n", c.prefill.c_str(), c.workers, vision.c_str(),
                  Median(gap), Median(step), ratio_of_medians, Median(ttft), Median(covered));
      rows.push_back({{"configuration", c.key},
                      {"workers", c.workers},
                      {"piece_rows", c.piece},
                      {"vision_stage_asked", c.vision},
                      {"vision_stage", c.placed},
                      {"vision_reason", c.reason},
                      {"stages", c.stages},
                      {"vision_workers", c.vision_workers},
                      {"largest_gap_ms", gap},
                      {"decode_step_ms", step},
                      {"gap_over_step", ratio},
                      {"image_ttft_ms", ttft},
                      {"tokens_after_image_first_token", covered},
                      {"median_largest_gap_ms", Median(gap)},
                      {"median_decode_step_ms", Median(step)},
                      {"median_gap_over_median_step", ratio_of_medians},
                      {"median_image_ttft_ms", Median(ttft)},
                      {"images_encoded_apart", st->value("images_encoded_total", uint64_t{0})},
                      {"vision_worker_encodes", encode},
                      {"gaps_after_image_sent_ms", gaps},
                      {"median_p50_gap_over_step", Median(p50)},
                      {"median_p99_gap_over_step", Median(p99)},
                      {"rebalances", st->value("rebalances", uint64_t{0})}});
    }
    if (!stall.back().quiet.empty()) {
      std::vector<double> largest, median, ratio;
      for (const Quiet& q : stall.back().quiet) {
        largest.push_back(q.max_gap_ms);
        median.push_back(q.median_gap_ms);
        ratio.push_back(q.max_gap_ms / q.median_gap_ms);
      }
      const std::string placed =
          std::to_string(stall.back().vision_workers) + " apart + " + std::to_string(stall.back().stages) + " stages";
      std::printf("%20s %8d %18s %16.1f %15.2f %7.1fx %14s %8s\n", "no image (control)", stall.back().workers,
                  placed.c_str(), Median(largest), Median(median), Median(ratio), "-", "-");
      std::printf(
          "    control: the same decoding request with no image, on the vision-apart cluster: its largest\n"
          "    gap over its median gap is the floor this machine's noise puts under the ratio.\n");
      rows.push_back({{"configuration", "no_image_control"},
                      {"workers", stall.back().workers},
                      {"cluster", stall.back().key},
                      {"largest_gap_ms", largest},
                      {"median_gap_ms", median},
                      {"gap_over_step", ratio},
                      {"median_largest_gap_ms", Median(largest)},
                      {"median_gap_over_median_step", Median(ratio)}});
    }
    // The configuration named `key`'s figures (empty when --stall-configs left it out).
    auto figures = [&](const std::string& key, double Stall::*field) {
      std::vector<double> v;
      for (const auto& c : stall)
        if (c.key == key)
          for (const Stall& s : c.runs) v.push_back(s.*field);
      return v;
    };
    auto median_or_null = [](const std::vector<double>& v) {
      return v.empty() ? nlohmann::json() : nlohmann::json(Median(v));
    };
    report["image_arrival"] = {{"workers", n - 1},
                               {"threads_per_worker", threads_b},
                               {"piece_rows", o.piece},
                               {"largest_gap_ms_whole", figures("whole", &Stall::max_gap_ms)},
                               {"largest_gap_ms_pieces", figures("pieces", &Stall::max_gap_ms)},
                               {"image_ttft_ms_whole", figures("whole", &Stall::image_ttft_ms)},
                               {"image_ttft_ms_pieces", figures("pieces", &Stall::image_ttft_ms)},
                               {"median_largest_gap_ms_whole", median_or_null(figures("whole", &Stall::max_gap_ms))},
                               {"median_largest_gap_ms_pieces", median_or_null(figures("pieces", &Stall::max_gap_ms))},
                               {"vision_workers", n},
                               {"goal_gap_over_step", 1.5},
                               {"order", "repeat r runs the configurations in turn, starting at configuration r mod " +
                                             std::to_string(stall.size())},
                               {"configurations", rows}};
  }
  if (runs_scenario("a")) report["goal_latency_met"] = latency_met;
  if (runs_scenario("b")) {
    report["goal_throughput_met"] = throughput_met;
    report["goal_decode_throughput_met"] = decode_met;
  }
  std::filesystem::create_directories(std::filesystem::path(o.out).parent_path());
  std::ofstream(o.out) << report.dump(2) << "\n";
  std::string goals;
  if (runs_scenario("a"))
    goals += std::string("pipeline/single ms per token <= 1.05: ") + (latency_met ? "met" : "NOT met");
  if (runs_scenario("b")) {
    goals += (goals.empty() ? "" : "; ") + std::to_string(o.concurrency) +
             " concurrent / 1 tokens/s >= 4: end to end " + (throughput_met ? "met" : "NOT met") + ", decode " +
             (decode_met ? "met" : "NOT met");
  }
  if (!goals.empty()) std::printf("\ngoals: %s", goals.c_str());
  std::printf("\nwrote %s\n", o.out.c_str());
  return 0;
}
