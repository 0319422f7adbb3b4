// split_bench: what splitting one request's decode step into pipeline stages costs on this
// machine with no runtime at all: no sockets, no messages, no coordinator. It is the floor under
// pipeline_bench's latency ratios: what a pipeline of separate workers could at best reach here.
//
// One process loads the model twice: whole (one StageModel over every block) and as --stages
// stages (the decoder layers split evenly; the first stage also holds vision and embed, the last
// the head). Decode tokens then go through six paths:
//   whole         the whole model's step on the main thread (the single-process reference);
//   back-to-back  the stages' steps one after another on the main thread;
//   thread ring   one thread per stage, each waiting on a pipe for the hidden state [1, H] the
//                 previous one wrote (the main thread feeds the first and waits on the last):
//                 every hand-off wakes a sleeping thread, which the scheduler places on whichever
//                 core is idle;
//   pinned ring   the same with every thread held on one core (sched_setaffinity), so each stage
//                 runs where the previous one just ran;
//   process ring  one process per stage (forked after loading, sharing the weights' pages),
//                 pipes between them: separate workers with nothing of a runtime between them;
//   relay ring    the process ring where, in each process, a receiver thread takes the message
//                 off the pipe and hands it to the computing thread through a second pipe (two
//                 wake-ups per hand-off, as a worker's receiver thread hands frames to its actor).
// Each path keeps its own sequence in the stages' KV caches and decodes the same positions
// (fixed token ids: the figure is time, not text). The paths take turns in blocks of 10 tokens,
// the first of each block not counted, so each is timed in its own steady state and background
// load on a shared machine hits every path alike (a path timed right after another pays for
// the move: on the 2-core VM, ~3% for a token or so). Per path: the median ms per token, the
// median of the stages' summed compute (ring timings exclude the pipe waits), the median of the
// rest (hand-offs), and the ratio to whole.
//
// Prints a table and writes JSON (default <build>/reports/split_bench.json).
//
//   build/bin/split_bench --model DIR [--stages 4] [--steps 150] [--prompt-tokens 300] [--out FILE]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>
#include <sched.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "bench_common.h"
#include "xcpipe/base/cli.h"
#include "xcpipe/base/subprocess.h"
#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/model/stage_model.h"

using namespace xcpipe;
using Clock = std::chrono::steady_clock;

namespace {

using bench::Median;
using bench::Ms;
using bench::Die;

struct Options {
  std::string model;
  int stages = 4;
  int steps = 150;
  int prompt_tokens = 300;
  std::string out;
};

void Pin(const cpu_set_t& set) {
  if (sched_setaffinity(0, sizeof set, &set) != 0) Die("sched_setaffinity failed");
}

void WriteAll(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w <= 0) Die("pipe write failed");
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void ReadAll(int fd, void* data, size_t n) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t r = ::read(fd, p, n);
    if (r <= 0) Die("pipe read failed");
    p += r;
    n -= static_cast<size_t>(r);
  }
}

// One step of `rows` rows at position `start` on stage k: token ids on the first stage, the
// previous stage's hidden states elsewhere.
model::StepInput Step(size_t k, uint64_t sequence, int64_t rows, int64_t start, const at::Tensor& hidden) {
  model::StepInput in;
  in.segments = {{sequence, rows, start}};
  in.im_mask = at::zeros({rows}, at::kBool);
  if (k == 0) in.token_ids = at::full({rows}, 7, at::kLong);
  else in.hidden = hidden;
  return in;
}

// A ring of one thread (or one process) per stage joined by pipes: pipe k feeds stage k; the
// last stage writes to pipe `stages`. Each message is one step: a header (rows, start) and the
// hidden rows. Processes are forked after the weights are loaded and share them (read-only
// pages, never copied); each writes its compute time into a shared page.
class Ring {
 public:
  enum class Kind { kThreads, kPinnedThreads, kProcesses, kProcessesRelay };
  Ring(std::vector<std::unique_ptr<model::StageModel>>& stages, uint64_t sequence, int64_t hidden, Kind kind,
       const cpu_set_t& pin)
      : stages_(stages), sequence_(sequence), hidden_(hidden), kind_(kind), pin_(pin) {
    void* shared = ::mmap(nullptr, stages.size() * sizeof(double), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                          -1, 0);
    if (shared == MAP_FAILED) Die("mmap failed");
    compute_ms_ = static_cast<double*>(shared);
    pipes_.resize(stages.size() + 1);
    for (auto& p : pipes_)
      if (::pipe(p.data()) != 0) Die("pipe failed");
    for (size_t k = 0; k < stages.size(); ++k) {
      if (kind_ != Kind::kProcesses && kind_ != Kind::kProcessesRelay) {
        threads_.emplace_back([this, k] { Run(k); });
        continue;
      }
      const pid_t pid = ::fork();
      if (pid < 0) Die("fork failed");
      if (pid == 0) {
        if (kind_ == Kind::kProcessesRelay) {
          // A receiver thread takes each message off the pipe and hands it to this thread through
          // a second pipe (as a worker's receiver thread hands frames to its actor).
          int relay[2];
          if (::pipe(relay) != 0) Die("pipe failed");
          const int from = pipes_[k][0];
          std::thread receiver([&] {
            while (true) {
              int64_t header[2];
              ReadAll(from, header, sizeof header);
              std::vector<float> in(static_cast<size_t>(header[0] * hidden_));
              if (header[0] > 0) ReadAll(from, in.data(), in.size() * sizeof(float));
              WriteAll(relay[1], header, sizeof header);
              if (header[0] == 0) return;
              WriteAll(relay[1], in.data(), in.size() * sizeof(float));
            }
          });
          pipes_[k][0] = relay[0];
          Run(k);
          receiver.join();
          std::_Exit(0);
        }
        Run(k);
        std::_Exit(0);
      }
      children_.push_back(pid);
    }
  }
  ~Ring() {
    const int64_t stop[2] = {0, 0};
    WriteAll(pipes_[0][1], stop, sizeof stop);
    for (auto& t : threads_) t.join();
    for (pid_t pid : children_) ::waitpid(pid, nullptr, 0);
    for (auto& p : pipes_) {
      ::close(p[0]);
      ::close(p[1]);
    }
    ::munmap(compute_ms_, stages_.size() * sizeof(double));
  }
  // Sends a step through every stage and waits for the last; returns the wall time (ms).
  double Token(int64_t rows, int64_t start) {
    if (kind_ == Kind::kPinnedThreads) Pin(pin_);  // the feeding thread joins the ring's core
    const int64_t header[2] = {rows, start};
    std::vector<float> zeros(static_cast<size_t>(rows * hidden_), 0.f), back(zeros.size());
    const auto t0 = Clock::now();
    WriteAll(pipes_[0][1], header, sizeof header);
    WriteAll(pipes_[0][1], zeros.data(), zeros.size() * sizeof(float));
    int64_t got[2];
    ReadAll(pipes_.back()[0], got, sizeof got);
    ReadAll(pipes_.back()[0], back.data(), back.size() * sizeof(float));
    const double ms = Ms(Clock::now() - t0);
    if (kind_ == Kind::kPinnedThreads) Unpin();
    return ms;
  }
  // The stages' compute of the last Token, summed.
  double last_compute_ms() const {
    double sum = 0;
    for (size_t k = 0; k < stages_.size(); ++k) sum += compute_ms_[k];
    return sum;
  }
  static void Unpin() {
    static const cpu_set_t all = [] {
      cpu_set_t s;
      CPU_ZERO(&s);
      for (unsigned c = 0; c < std::thread::hardware_concurrency(); ++c) CPU_SET(c, &s);
      return s;
    }();
    Pin(all);
  }

 private:
  void Run(size_t k) {
    if (kind_ == Kind::kPinnedThreads) Pin(pin_);
    at::set_num_threads(1);
    while (true) {
      int64_t header[2];
      ReadAll(pipes_[k][0], header, sizeof header);
      if (header[0] == 0) {
        if (k + 1 < stages_.size()) WriteAll(pipes_[k + 1][1], header, sizeof header);
        return;
      }
      const int64_t rows = header[0];
      std::vector<float> in(static_cast<size_t>(rows * hidden_));
      ReadAll(pipes_[k][0], in.data(), in.size() * sizeof(float));
      const auto t0 = Clock::now();
      auto out = stages_[k]->Forward(Step(k, sequence_, rows, header[1], at::from_blob(in.data(), {rows, hidden_})));
      if (!out.ok()) Die("stage " + std::to_string(k) + ": " + out.status().ToString());
      compute_ms_[k] = Ms(Clock::now() - t0);
      // The last stage hands back [rows, H] zeros (its logits are not needed here).
      at::Tensor h = k + 1 == stages_.size() ? at::zeros({rows, hidden_}) : out->hidden.contiguous();
      WriteAll(pipes_[k + 1][1], header, sizeof header);
      WriteAll(pipes_[k + 1][1], h.data_ptr(), static_cast<size_t>(rows * hidden_) * sizeof(float));
    }
  }

  std::vector<std::unique_ptr<model::StageModel>>& stages_;
  const uint64_t sequence_;
  const int64_t hidden_;
  const Kind kind_;
  const cpu_set_t pin_;
  double* compute_ms_ = nullptr;  // per stage, written by its thread or process before it hands on
  std::vector<std::array<int, 2>> pipes_;
  std::vector<std::thread> threads_;
  std::vector<pid_t> children_;
};

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"split_bench: one request's decode step whole vs split into stages: back to back on one thread,\n"
               "and as rings of threads (free, or pinned to one core) or of processes (with or without a\n"
               "receiver thread) handing the hidden state through pipes, taking turns in blocks of tokens.\n"
               "No runtime at all: the floor under pipeline_bench's latency ratios."};
  app.add_option("--model", o.model, "checkpoint folder (e.g. xcpipe mkmodel --arch ixc2-vl --preset small)")
      ->required();
  app.add_option("--stages", o.stages, "stages to split the decoder layers into")->capture_default_str();
  app.add_option("--steps", o.steps, "decode tokens per path")->capture_default_str();
  app.add_option("--prompt-tokens", o.prompt_tokens, "prefilled context before decoding")->capture_default_str();
  app.add_option("--out", o.out, "report file (default: <build>/reports/split_bench.json)");
  if (auto code = ParseOrExit(app, argc, argv)) return *code;
  if (o.stages < 2 || o.steps < 1 || o.prompt_tokens < 1) {
    std::fprintf(stderr, "split_bench: --stages must be >= 2, --steps and --prompt-tokens >= 1\n");
    return 2;
  }
  if (o.out.empty()) o.out = (ExecutableDir().parent_path() / "reports" / "split_bench.json").string();

  auto described = checkpoint::DescribeCheckpoint(o.model);
  if (!described.ok()) Die(described.status().ToString());
  const auto& spec = described->spec;
  const int64_t layers = spec.llm.layers, hidden = spec.llm.hidden;
  if (o.stages > layers) Die("--stages is more than the model's " + std::to_string(layers) + " decoder layers");
  // Blocks: vision, embed, layer.0 .. layer.{L-1}, head. Stage k holds layers [k L/S, (k+1) L/S).
  std::vector<model::BlockRange> ranges;
  for (int k = 0; k < o.stages; ++k) {
    const size_t first = 2 + static_cast<size_t>(k * layers / o.stages);
    const size_t last = 2 + static_cast<size_t>((k + 1) * layers / o.stages);
    ranges.push_back({k == 0 ? 0 : first, k + 1 == o.stages ? spec.blocks.size() : last});
  }

  at::set_num_threads(1);
  model::StageOptions so;
  auto whole_loaded = model::StageModel::Load(o.model, spec, model::WholeModel(spec), so);
  if (!whole_loaded.ok()) Die(whole_loaded.status().ToString());
  auto whole = std::move(whole_loaded).value();
  std::vector<std::unique_ptr<model::StageModel>> stages;
  for (const auto& r : ranges) {
    auto s = model::StageModel::Load(o.model, spec, r, so);
    if (!s.ok()) Die(s.status().ToString());
    stages.push_back(std::move(s).value());
  }

  // Sequences: 1 whole, 2 back-to-back, 3 thread ring, 4 pinned ring, 5 process ring, 6 relay ring.
  const int64_t capacity = o.prompt_tokens + o.steps + 1;
  if (!whole->ReserveSequence(1, capacity).ok()) Die("KV reserve failed");
  for (auto& s : stages)
    for (uint64_t id : {2, 3, 4, 5, 6})
      if (!s->ReserveSequence(id, capacity).ok()) Die("KV reserve failed");
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(0, &one);
  // The processes first, while this process has no other threads to lose in the fork (a
  // relay ring's receiver thread lives in its child only).
  Ring processes(stages, 5, hidden, Ring::Kind::kProcesses, one);
  Ring relay(stages, 6, hidden, Ring::Kind::kProcessesRelay, one);
  Ring ring(stages, 3, hidden, Ring::Kind::kThreads, one);
  Ring pinned(stages, 4, hidden, Ring::Kind::kPinnedThreads, one);

  auto run_back_to_back = [&](int64_t rows, int64_t start, double& compute) {
    const auto t0 = Clock::now();
    at::Tensor h;
    compute = 0;
    for (size_t k = 0; k < stages.size(); ++k) {
      const auto t1 = Clock::now();
      auto out = stages[k]->Forward(Step(k, 2, rows, start, h));
      if (!out.ok()) Die(out.status().ToString());
      compute += Ms(Clock::now() - t1);
      h = out->hidden;
    }
    return Ms(Clock::now() - t0);
  };
  enum Path { kWhole, kBackToBack, kRing, kPinned, kProcessRing, kRelay, kPaths };
  const char* names[kPaths] = {"whole", "back-to-back", "thread ring", "pinned ring", "process ring", "relay ring"};
  Ring* rings[kPaths] = {nullptr, nullptr, &ring, &pinned, &processes, &relay};
  std::vector<double> token_ms[kPaths], compute_ms[kPaths], handoff_ms[kPaths];
  std::printf("split_bench: %s, %lld layers in %d stages, %d-token context, %d decode tokens per path, %u cores\n",
              o.model.c_str(), static_cast<long long>(layers), o.stages, o.prompt_tokens, o.steps,
              std::thread::hardware_concurrency());
  // One token of a path: rows at position start (the prefill when rows > 1).
  auto token = [&](int p, int64_t rows, int64_t start, double& compute) -> double {
    switch (p) {
      case kWhole: {
        const auto t0 = Clock::now();
        auto w = whole->Forward(Step(0, 1, rows, start, {}));
        if (!w.ok()) Die(w.status().ToString());
        return compute = Ms(Clock::now() - t0);
      }
      case kBackToBack: return run_back_to_back(rows, start, compute);
      default: {
        const double t = rings[p]->Token(rows, start);
        compute = rings[p]->last_compute_ms();
        return t;
      }
    }
  };
  for (int p = 0; p < kPaths; ++p) {
    double ignored;
    token(p, o.prompt_tokens, 0, ignored);  // the prefill, not timed
  }
  // Paths take turns in blocks of kBlock tokens, the first of each block not counted: each
  // path is timed in its own steady state (the scheduler has placed its threads), and
  // background load on a shared machine hits every path alike.
  constexpr int kBlock = 10;
  for (int done = 0; done < o.steps;) {
    const int n = std::min(kBlock, o.steps - done);
    for (int p = 0; p < kPaths; ++p) {
      for (int i = 0; i < n; ++i) {
        double c = 0;
        const double t = token(p, 1, o.prompt_tokens + done + i, c);
        if (i == 0) continue;
        token_ms[p].push_back(t);
        compute_ms[p].push_back(c);
        handoff_ms[p].push_back(t - c);
      }
    }
    done += n;
  }

  nlohmann::json report;
  report["benchmark"] = "split_bench";
  report["config"] = {{"model", o.model},       {"stages", o.stages}, {"steps", o.steps},
                      {"prompt_tokens", o.prompt_tokens}, {"cores", std::thread::hardware_concurrency()}};
  report["paths"] = nlohmann::json::array();
  const double base = Median(token_ms[kWhole]);
  std::printf("%14s %12s %12s %12s %10s\n", "path", "ms/token", "compute ms", "hand-off ms", "ratio");
  for (int p = 0; p < kPaths; ++p) {
    const double m = Median(token_ms[p]);
    std::printf("%14s %12.2f %12.2f %12.2f %9.3fx\n", names[p], m, Median(compute_ms[p]), Median(handoff_ms[p]),
                m / base);
    report["paths"].push_back({{"path", names[p]},
                               {"median_ms_per_token", m},
                               {"median_compute_ms", Median(compute_ms[p])},
                               {"median_handoff_ms", Median(handoff_ms[p])},
                               {"ratio_over_whole", m / base}});
  }
  std::filesystem::create_directories(std::filesystem::path(o.out).parent_path());
  std::ofstream(o.out) << report.dump(2) << "\n";
  std::printf("report: %s\n", o.out.c_str());
  return 0;
}
