// Beam search against independent greedy requests of the same prompt, in one run of one local
// cluster (coordinator thread + xcpipe-worker processes): a request with B beams, then B greedy
// requests of the same prompt sent at once (batched together as the beams are), each producing
// B x N sequence tokens after the prompt. The beams prefill the prompt once and fork its KV; the
// greedy requests prefill it B times. Both run with ignore_eos, so both compute exactly N steps.
// The order alternates between runs (drift on a shared machine falls on both); medians are
// printed and written to build/reports/beam_bench.json.
//
//   beam_bench --model DIR [--workers 2] [--prompt-tokens 128] [--new-tokens 16] [--beams 5] [--runs 5]
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <random>
#include <string>
#include <vector>

#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/coordinator/client.h"
#include "xcpipe/coordinator/local_cluster.h"

namespace {

using namespace xcpipe;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : (v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2);
}

// Wall seconds for `requests` sent at once, each from its own client; negative on a failure.
double RunAtOnce(const std::string& address, const std::vector<coordinator::GenerateRequest>& requests) {
  const auto start = Clock::now();
  std::vector<std::future<bool>> done;
  for (const auto& r : requests) {
    done.push_back(std::async(std::launch::async, [&address, r] {
      auto client = coordinator::Client::Connect(address, 10s);
      if (!client.ok()) return false;
      auto result = (*client)->Generate(r, 600s);
      if (!result.ok() || !result->error.empty()) {
        std::fprintf(stderr, "request failed: %s\n",
                     result.ok() ? result->error.c_str() : result.status().ToString().c_str());
        return false;
      }
      return true;
    }));
  }
  bool ok = true;
  for (auto& f : done) ok = f.get() && ok;
  return ok ? std::chrono::duration<double>(Clock::now() - start).count() : -1;
}

}  // namespace

int main(int argc, char** argv) {
  fs::path model;
  int workers = 2, prompt_tokens = 128, new_tokens = 16, beams = 5, runs = 5;
  fs::path out = "build/reports/beam_bench.json";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--model")
      model = value;
    else if (flag == "--workers")
      workers = std::stoi(value);
    else if (flag == "--prompt-tokens")
      prompt_tokens = std::stoi(value);
    else if (flag == "--new-tokens")
      new_tokens = std::stoi(value);
    else if (flag == "--beams")
      beams = std::stoi(value);
    else if (flag == "--runs")
      runs = std::stoi(value);
    else if (flag == "--out")
      out = value;
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 4;
    }
  }
  if (model.empty()) {
    std::fprintf(stderr,
                 "usage: beam_bench --model DIR [--workers N] [--prompt-tokens P] [--new-tokens N] [--beams B] "
                 "[--runs R] [--out FILE]\n");
    return 4;
  }
  auto described = checkpoint::DescribeCheckpoint(model);
  if (!described.ok()) {
    std::fprintf(stderr, "%s\n", described.status().ToString().c_str());
    return 4;
  }
  const int64_t vocab = described->spec.llm.vocab;
  coordinator::LocalClusterOptions o;
  o.model_dir = model;
  o.workers = workers;
  o.quiet_workers = true;
  o.worker_binary = fs::path(argv[0]).parent_path() / "xcpipe-worker";
  auto cluster = coordinator::LocalCluster::Start(o);
  if (!cluster.ok()) {
    std::fprintf(stderr, "%s\n", cluster.status().ToString().c_str());
    return 5;
  }
  // A pre-tokenized prompt of plain ids (no image, not the chat template's head, which the
  // coordinator would share between the greedy requests).
  std::mt19937 rng(7);
  coordinator::GenerateRequest greedy;
  greedy.token_ids.push_back(1);
  while (static_cast<int>(greedy.token_ids.size()) < prompt_tokens) {
    greedy.token_ids.push_back(3 + static_cast<int64_t>(rng() % static_cast<uint32_t>(vocab - 3)));
  }
  greedy.im_mask.assign(greedy.token_ids.size(), 0);
  greedy.max_new_tokens = static_cast<uint32_t>(new_tokens);
  greedy.sampling.ignore_eos = true;
  coordinator::GenerateRequest beam = greedy;
  beam.sampling.num_beams = beams;
  const std::vector<coordinator::GenerateRequest> one_beam = {beam};
  const std::vector<coordinator::GenerateRequest> many_greedy(static_cast<size_t>(beams), greedy);

  const std::string address = (*cluster)->address();
  if (RunAtOnce(address, one_beam) < 0 || RunAtOnce(address, many_greedy) < 0) return 1;  // warm-up
  std::vector<double> beam_s, greedy_s;
  for (int run = 0; run < runs; ++run) {
    double b = 0, g = 0;
    if (run % 2 == 0) {
      b = RunAtOnce(address, one_beam);
      g = RunAtOnce(address, many_greedy);
    } else {
      g = RunAtOnce(address, many_greedy);
      b = RunAtOnce(address, one_beam);
    }
    if (b < 0 || g < 0) return 1;
    beam_s.push_back(b);
    greedy_s.push_back(g);
    std::printf("run %d: %d beams %.3f s, %d greedy %.3f s\n", run + 1, beams, b, beams, g);
  }
  (*cluster)->Stop();
  const double tokens = static_cast<double>(beams) * new_tokens;  // sequence tokens after the prompt, both ways
  const double b = Median(beam_s), g = Median(greedy_s);
  std::printf(
      "%s, %d workers, prompt %d tokens, %d new tokens, %d runs (medians):\n"
      "  1 request of %d beams:      %.3f s, %.1f sequence tokens/s (prompt prefilled once)\n"
      "  %d greedy requests at once: %.3f s, %.1f sequence tokens/s (prompt prefilled %d times)\n"
      "  beams / greedy throughput: %.2fx\n",
      model.filename().string().c_str(), workers, prompt_tokens, new_tokens, runs, beams, b, tokens / b, beams, g,
      tokens / g, beams, g / b);
  nlohmann::json report = {{"model", model.string()},
                           {"workers", workers},
                           {"prompt_tokens", prompt_tokens},
                           {"new_tokens", new_tokens},
                           {"beams", beams},
                           {"runs", runs},
                           {"beam_seconds", beam_s},
                           {"greedy_seconds", greedy_s},
                           {"beam_tokens_per_s_median", tokens / b},
                           {"greedy_tokens_per_s_median", tokens / g},
                           {"speedup", g / b}};
  std::error_code ec;
  fs::create_directories(out.parent_path(), ec);
  std::ofstream(out) << report.dump(2) << "\n";
  return 0;
}
