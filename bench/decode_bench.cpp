// decode_bench: the single-process decode step per token against this machine's memory
// bandwidth, measured in one run.
//
// Loads a model folder whole (StageModel over every block, the compute dtype of --dtype), then
// per repeat: prefills one sequence with a --prompt-tokens text prompt (random ids, no image),
// runs --steps greedy decode steps (each feeds back the argmax of the previous logits) and keeps
// the median step time. In the same run, interleaved with the decode repeats so background
// load hits both alike, it times memcpy of a --copy-mib buffer (larger than any cache; both
// buffers written once before timing, so first-touch costs stay out) and keeps the median
// GB/s (1e9 bytes copied per second). It also times a read-only pass (at::sum over a buffer of
// the same size) for a stricter floor, reported beside the goal's ratio.
//
//   bound (ms/token) = weight bytes read per token / memcpy bandwidth
//   ratio            = decode ms/token / bound           (goal <= 1.5)
//
// Weight bytes read per token: every decoder layer's tensors and the head (final norm +
// lm_head) in the compute dtype, plus one embedding row. Not counted: the vision tower (text
// prompts never run it), Partial-LoRA / LoRA adapters (2.x applies them at image rows only;
// 1.0 merges them into W at load), and the KV cache (listed separately in the JSON: it grows
// with the position and is small next to the weights at these lengths).
//
// Two more columns time the projection kernels alone: one token through every weight matrix
// the step reads (the "sweep"), as at::linear and as at::mv (the GEMV fast path), so the
// decode figure can be read against its kernel floor; and the process CPU time per decode step
// (all threads), which is less sensitive than wall time to other load on a shared machine.
//
// A second table (--batch, default 8; 0 skips it) is what continuous batching gives one
// process: --batch sequences stepping together (one row each) against one sequence, repeats
// alternating, with the GEMM sweep (at::linear over the same rows) beside it.
//
// Prints the tables and writes JSON (default <build>/reports/decode_bench.json).
//
//   build/bin/decode_bench --model DIR [--threads 1,2] [--runs 5] [--steps 48]
//                          [--prompt-tokens 16] [--dtype f32|bf16] [--copy-mib 256] [--batch 8]
//                          [--out FILE]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include <dlfcn.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench_common.h"
#include "xcpipe/base/cli.h"
#include "xcpipe/base/subprocess.h"
#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/checkpoint/safetensors.h"
#include "xcpipe/model/stage_model.h"

using namespace xcpipe;
using Clock = std::chrono::steady_clock;

namespace {

using bench::Median;
using bench::Ms;
using bench::Die;

struct Options {
  std::string model;
  std::vector<int64_t> threads = {1, 2};
  int runs = 5;
  int steps = 48;
  int prompt_tokens = 16;
  std::string dtype = "f32";
  double copy_mib = 256;
  int copies_per_run = 3;
  int batch = 8;
  std::string out;
};

// memcpy bandwidth: `copies` copies of src into dst, GB/s (1e9 bytes copied per second) each.
std::vector<double> TimeCopies(std::vector<char>& src, std::vector<char>& dst, int copies) {
  std::vector<double> gbps;
  for (int i = 0; i < copies; ++i) {
    auto t0 = Clock::now();
    std::memcpy(dst.data(), src.data(), src.size());
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    gbps.push_back(static_cast<double>(src.size()) / s / 1e9);
  }
  // Keep the copy observable.
  volatile char sink = dst[dst.size() / 2];
  (void)sink;
  return gbps;
}

// Read bandwidth: at::sum over a float buffer larger than the caches (libtorch's vectorised
// reduction, at the current thread count), GB/s (1e9 bytes read per second) each.
std::vector<double> TimeReads(const at::Tensor& buffer, int reads) {
  std::vector<double> gbps;
  const double bytes = static_cast<double>(buffer.numel()) * buffer.element_size();
  for (int i = 0; i < reads; ++i) {
    auto t0 = Clock::now();
    at::Tensor total = buffer.sum();
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    gbps.push_back(bytes / s / 1e9);
  }
  return gbps;
}

// Which weight bytes one decode token reads, from the checkpoint's tensor table.
struct WeightBytes {
  uint64_t layers = 0, head = 0, embed_row = 0, adapters_skipped = 0, vision_skipped = 0, embed_table = 0;
  uint64_t per_token() const { return layers + head + embed_row; }
};

bool IsAdapter(const std::string& name) {
  return name.find("lora_") != std::string::npos || name.find("Plora_") != std::string::npos;
}

WeightBytes CountWeightBytes(const checkpoint::CheckpointDescription& d, size_t elem) {
  WeightBytes w;
  for (const auto& block : d.spec.blocks) {
    for (const auto& t : block.tensors) {
      const auto* info = d.tensors.Find(t.name);
      if (info == nullptr) continue;
      // Floating tensors are held in the compute dtype.
      const uint64_t bytes = static_cast<uint64_t>(info->numel()) * elem;
      switch (block.kind) {
        case checkpoint::BlockKind::kVision: w.vision_skipped += bytes; break;
        case checkpoint::BlockKind::kEmbed: w.embed_table += bytes; break;
        case checkpoint::BlockKind::kLayer: (IsAdapter(t.name) ? w.adapters_skipped : w.layers) += bytes; break;
        case checkpoint::BlockKind::kHead: (IsAdapter(t.name) ? w.adapters_skipped : w.head) += bytes; break;
      }
    }
  }
  w.embed_row = static_cast<uint64_t>(d.spec.llm.hidden) * elem;
  return w;
}

// CPU seconds of this process (every thread: OpenMP and OpenBLAS workers included).
double ProcessCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_utime.tv_usec * 1e-6 + u.ru_stime.tv_sec + u.ru_stime.tv_usec * 1e-6;
}

// OpenBLAS's own thread count (its pthread pool is separate from ATen's OpenMP threads); -1 when
// the BLAS in use is not OpenBLAS.
int BlasThreads() {
  using Get = int (*)();
  auto get = reinterpret_cast<Get>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  return get ? get() : -1;
}

struct DecodeRun {
  double prefill_ms = 0;
  double step_median_ms = 0;
  double cpu_ms_per_step = 0;  // process CPU time over the decode loop / steps (all threads)
  std::vector<double> steps_ms;
};

// `batch` sequences (ids first_id, first_id + 1, ...): each prefilled alone, then o.steps decode
// steps that carry one row per sequence (greedy: each row feeds back its own argmax).
DecodeRun RunDecode(model::StageModel& m, const Options& o, uint64_t first_id, std::mt19937_64& rng, int batch = 1) {
  const int64_t vocab = m.spec().llm.vocab;
  const int64_t capacity = o.prompt_tokens + o.steps + 1;
  std::uniform_int_distribution<int64_t> pick(3, vocab - 1);
  DecodeRun run;
  std::vector<int64_t> next(static_cast<size_t>(batch));
  for (int b = 0; b < batch; ++b) {
    Status r = m.ReserveSequence(first_id + b, capacity);
    if (!r.ok()) Die("reserve: " + r.ToString());
    std::vector<int64_t> prompt(static_cast<size_t>(o.prompt_tokens));
    for (auto& id : prompt) id = pick(rng);
    model::StepInput in;
    in.segments = {{first_id + b, o.prompt_tokens, 0}};
    in.token_ids = at::tensor(prompt, at::kLong);
    in.im_mask = at::zeros({o.prompt_tokens}, at::kBool);
    auto t0 = Clock::now();
    auto out = m.Forward(in);
    if (b == 0) run.prefill_ms = Ms(Clock::now() - t0);
    if (!out.ok()) Die("prefill: " + out.status().ToString());
    next[b] = out->logits.select(0, 0).argmax().item<int64_t>();
  }

  // Decode inputs built once; the loop only writes the token ids into them.
  at::Tensor ids = at::empty({batch}, at::kLong);
  at::Tensor mask = at::zeros({batch}, at::kBool);
  const double cpu0 = ProcessCpuSeconds();
  for (int s = 0; s < o.steps; ++s) {
    model::StepInput step;
    for (int b = 0; b < batch; ++b) {
      step.segments.push_back({first_id + b, 1, o.prompt_tokens + s});
      ids.data_ptr<int64_t>()[b] = next[b];
    }
    step.token_ids = ids;
    step.im_mask = mask;
    auto t = Clock::now();
    auto o2 = m.Forward(step);
    if (!o2.ok()) Die("decode step: " + o2.status().ToString());
    at::Tensor picked = o2->logits.argmax(-1);
    for (int b = 0; b < batch; ++b) next[b] = picked[b].item<int64_t>();
    run.steps_ms.push_back(Ms(Clock::now() - t));
  }
  run.cpu_ms_per_step = (ProcessCpuSeconds() - cpu0) * 1e3 / o.steps;
  for (int b = 0; b < batch; ++b) m.ReleaseSequence(first_id + b);
  run.step_median_ms = Median(run.steps_ms);
  return run;
}

// The kernel floor: one token's projections alone, x [1, in] through every weight matrix the
// decode step reads (layers in order, then lm_head), as at::linear and as at::mv. The matrices
// together are far larger than the caches, so each sweep streams them from memory like a step.
struct Sweep {
  std::unique_ptr<checkpoint::MappedCheckpoint> mapped;
  std::vector<at::Tensor> weights;
  std::map<int64_t, at::Tensor> inputs;  // by `in`
  uint64_t bytes = 0;

  static Sweep Open(const checkpoint::CheckpointDescription& d, const std::string& dir, at::ScalarType dtype) {
    std::vector<std::string> names;
    for (const auto& block : d.spec.blocks) {
      if (block.kind != checkpoint::BlockKind::kLayer && block.kind != checkpoint::BlockKind::kHead) continue;
      for (const auto& t : block.tensors) {
        const auto* info = d.tensors.Find(t.name);
        if (info != nullptr && info->shape.size() == 2 && !IsAdapter(t.name)) names.push_back(t.name);
      }
    }
    Sweep s;
    std::set<std::string> wanted(names.begin(), names.end());
    auto mapped = checkpoint::MappedCheckpoint::Open(dir, [&](const std::string& n) { return wanted.count(n) > 0; });
    if (!mapped.ok()) Die(mapped.status().ToString());
    s.mapped = std::move(mapped).value();
    for (const auto& name : names) {
      auto view = s.mapped->Get(name);
      if (!view.ok()) Die(view.status().ToString());
      at::Tensor w = at::from_blob(const_cast<void*>(view->data), view->info->shape,
                                   at::TensorOptions().dtype(view->info->dtype == checkpoint::DType::kBF16
                                                                 ? at::kBFloat16
                                                                 : at::kFloat));
      if (w.scalar_type() != dtype) w = w.to(dtype);
      w = w.contiguous();
      s.bytes += static_cast<uint64_t>(w.numel()) * w.element_size();
      const int64_t in = w.size(1);
      if (!s.inputs.count(in)) s.inputs[in] = at::randn({1, in}, at::kFloat).to(dtype);
      s.weights.push_back(w);
    }
    return s;
  }
  double Run(bool mv) {
    auto t0 = Clock::now();
    for (const auto& w : weights) {
      const at::Tensor& x = inputs.at(w.size(1));
      at::Tensor y = mv ? at::mv(w, x.select(0, 0)) : at::linear(x, w);
    }
    return Ms(Clock::now() - t0);
  }
  // `rows` tokens at once through at::linear (one GEMM per matrix).
  double RunRows(int64_t rows) {
    std::map<int64_t, at::Tensor> xs;
    for (const auto& [in, x] : inputs) xs[in] = x.expand({rows, in}).contiguous();
    auto t0 = Clock::now();
    for (const auto& w : weights) at::Tensor y = at::linear(xs.at(w.size(1)), w);
    return Ms(Clock::now() - t0);
  }
};

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"decode_bench: decode ms/token of one sequence in one process vs the bound weight bytes/token / "
               "memcpy GB/s.\nMake a model with: xcpipe mkmodel --arch ixc2-vl --preset small --out DIR"};
  app.add_option("--model", o.model, "checkpoint folder")->required();
  app.add_option("--threads", o.threads, "thread counts to measure, comma-separated")->delimiter(',')->capture_default_str();
  app.add_option("--runs", o.runs, "runs (the median is reported)")->capture_default_str();
  app.add_option("--steps", o.steps, "decode steps per run")->capture_default_str();
  app.add_option("--prompt-tokens", o.prompt_tokens, "prompt length before decoding")->capture_default_str();
  app.add_option("--dtype", o.dtype, "f32 or bf16")->capture_default_str();
  app.add_option("--batch", o.batch, "rows of the batched-GEMM comparison")->capture_default_str();
  app.add_option("--copy-mib", o.copy_mib, "MiB per memcpy measurement")->capture_default_str();
  app.add_option("--out", o.out, "report file (default: <build>/reports/decode_bench.json)");
  if (auto code = ParseOrExit(app, argc, argv)) return *code;
  if (o.dtype != "f32" && o.dtype != "bf16") {
    std::fprintf(stderr, "decode_bench: --dtype must be f32 or bf16\n");
    return 2;
  }
  if (o.runs < 1 || o.steps < 1 || o.prompt_tokens < 1 || o.threads.empty()) {
    std::fprintf(stderr, "decode_bench: --runs, --steps, --prompt-tokens and --threads must be positive\n");
    return 2;
  }
  if (o.out.empty()) o.out = (ExecutableDir().parent_path() / "reports" / "decode_bench.json").string();

  auto described = checkpoint::DescribeCheckpoint(o.model);
  if (!described.ok()) Die(described.status().ToString());
  const auto& spec = described->spec;
  const bool bf16 = o.dtype == "bf16";
  const size_t elem = bf16 ? 2 : 4;
  const WeightBytes wb = CountWeightBytes(*described, elem);

  model::StageOptions so;
  so.dtype = bf16 ? model::ComputeDType::kBF16 : model::ComputeDType::kF32;
  auto load_start = Clock::now();
  auto loaded = model::StageModel::Load(o.model, spec, model::WholeModel(spec), so);
  if (!loaded.ok()) Die(loaded.status().ToString());
  auto& m = **loaded;
  const double load_s = Ms(Clock::now() - load_start) / 1e3;

  // memcpy buffers: written once here, so the timed copies never pay first touch.
  const size_t copy_bytes = static_cast<size_t>(o.copy_mib * (1 << 20));
  std::vector<char> src(copy_bytes), dst(copy_bytes);
  for (size_t i = 0; i < copy_bytes; i += 64) src[i] = static_cast<char>(i >> 6);
  std::memset(dst.data(), 1, dst.size());
  at::Tensor read_buffer = at::ones({static_cast<int64_t>(copy_bytes / sizeof(float))}, at::kFloat);

  std::printf("decode_bench: %s (%s, %lld layers, hidden %lld, vocab %lld), compute %s, loaded in %.1f s\n",
              o.model.c_str(), std::string(checkpoint::ArchName(spec.arch)).c_str(),
              static_cast<long long>(spec.llm.layers), static_cast<long long>(spec.llm.hidden),
              static_cast<long long>(spec.llm.vocab), o.dtype.c_str(), load_s);
  std::printf(
      "weight bytes read per token: %.1f MB (layers %.1f + head %.1f + embedding row); not counted: vision %.1f MB, "
      "adapters %.1f MB, rest of the embedding table %.1f MB\n",
      wb.per_token() / 1e6, wb.layers / 1e6, wb.head / 1e6, wb.vision_skipped / 1e6, wb.adapters_skipped / 1e6,
      (wb.embed_table - wb.embed_row) / 1e6);
  std::printf(
      "per repeat: memcpy %.0f MiB x %d; weights sweep (one token's projections alone, at::linear and at::mv); "
      "prefill %d tokens then %d greedy decode steps (median step). %d repeats, medians of those.\n",
      o.copy_mib, o.copies_per_run, o.prompt_tokens, o.steps, o.runs);
  std::printf("%7s %5s %8s %8s %9s %8s %9s %9s %9s %8s %7s %7s %8s\n", "threads", "blas", "memcpy", "read",
              "decode", "cpu", "sweep", "sweep", "bound", "eff.", "ratio", "ratio", "prefill");
  std::printf("%7s %5s %8s %8s %9s %8s %9s %9s %9s %8s %7s %7s %8s\n", "", "thr", "GB/s", "GB/s", "ms/tok",
              "ms/tok", "lin ms", "mv ms", "ms/tok", "GB/s", "", "vs read", "ms");

  nlohmann::json report;
  report["benchmark"] = "decode_bench";
  report["what"] =
      "single-process decode step time per token for one sequence vs weight bytes read per token / memcpy bandwidth";
  report["config"] = {{"model", o.model},
                      {"arch", std::string(checkpoint::ArchName(spec.arch))},
                      {"layers", spec.llm.layers},
                      {"hidden", spec.llm.hidden},
                      {"intermediate", spec.llm.intermediate},
                      {"vocab", spec.llm.vocab},
                      {"dtype", o.dtype},
                      {"runs", o.runs},
                      {"steps", o.steps},
                      {"prompt_tokens", o.prompt_tokens},
                      {"copy_mib", o.copy_mib},
                      {"copies_per_run", o.copies_per_run},
                      {"cores", std::thread::hardware_concurrency()},
                      {"goal_ratio", 1.5}};
  report["weight_bytes"] = {{"per_token", wb.per_token()},
                            {"layers", wb.layers},
                            {"head", wb.head},
                            {"embedding_row", wb.embed_row},
                            {"not_counted_vision", wb.vision_skipped},
                            {"not_counted_adapters", wb.adapters_skipped},
                            {"embedding_table", wb.embed_table}};
  const uint64_t kv_per_pos = m.kv_bytes_per_token();
  report["kv_bytes_read_per_token_at_last_step"] = kv_per_pos * static_cast<uint64_t>(o.prompt_tokens + o.steps);
  report["results"] = nlohmann::json::array();

  Sweep sweep = Sweep::Open(*described, o.model, bf16 ? at::kBFloat16 : at::kFloat);
  std::mt19937_64 rng(1234);
  bool all_met = true;
  uint64_t sequence_id = 1;
  for (int64_t threads : o.threads) {
    at::set_num_threads(static_cast<int>(threads));
    RunDecode(m, o, sequence_id++, rng);  // warm-up: code paths, allocator, KV pages
    TimeCopies(src, dst, 1);
    sweep.Run(false);
    sweep.Run(true);
    TimeReads(read_buffer, 1);
    std::vector<double> copy_gbps, read_gbps, decode_ms, cpu_ms, prefill_ms, sweep_linear, sweep_mv;
    for (int r = 0; r < o.runs; ++r) {
      // OpenBLAS's worker threads spin-wait for a while after each call: let them go idle so
      // they do not share the cores with the bandwidth passes.
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      auto c = TimeCopies(src, dst, o.copies_per_run);
      copy_gbps.insert(copy_gbps.end(), c.begin(), c.end());
      auto rd = TimeReads(read_buffer, o.copies_per_run);
      read_gbps.insert(read_gbps.end(), rd.begin(), rd.end());
      sweep_linear.push_back(sweep.Run(false));
      sweep_mv.push_back(sweep.Run(true));
      DecodeRun d = RunDecode(m, o, sequence_id++, rng);
      decode_ms.push_back(d.step_median_ms);
      cpu_ms.push_back(d.cpu_ms_per_step);
      prefill_ms.push_back(d.prefill_ms);
    }
    const double bw = Median(copy_gbps);
    const double ms = Median(decode_ms);
    const double bound_ms = static_cast<double>(wb.per_token()) / (bw * 1e9) * 1e3;
    const double ratio = ms / bound_ms;
    const double effective = static_cast<double>(wb.per_token()) / (ms / 1e3) / 1e9;
    const double read_bw = Median(read_gbps);
    const double ratio_read = ms / (static_cast<double>(wb.per_token()) / (read_bw * 1e9) * 1e3);
    all_met = all_met && ratio <= 1.5;
    std::printf("%7lld %5d %8.2f %8.2f %9.2f %8.2f %9.2f %9.2f %9.2f %8.2f %7.2f %7.2f %8.1f\n",
                static_cast<long long>(threads), BlasThreads(), bw, read_bw, ms, Median(cpu_ms), Median(sweep_linear),
                Median(sweep_mv), bound_ms, effective, ratio, ratio_read, Median(prefill_ms));
    std::fflush(stdout);
    report["results"].push_back({{"threads", threads},
                                 {"openblas_threads", BlasThreads()},
                                 {"memcpy_gbps", copy_gbps},
                                 {"memcpy_median_gbps", bw},
                                 {"read_gbps", read_gbps},
                                 {"read_median_gbps", read_bw},
                                 {"ratio_decode_over_read_bound", ratio_read},
                                 {"decode_ms_per_token", decode_ms},
                                 {"decode_median_ms_per_token", ms},
                                 {"decode_cpu_ms_per_token", cpu_ms},
                                 {"sweep_linear_ms", sweep_linear},
                                 {"sweep_mv_ms", sweep_mv},
                                 {"sweep_bytes", sweep.bytes},
                                 {"prefill_ms", prefill_ms},
                                 {"bound_ms_per_token", bound_ms},
                                 {"effective_weight_gbps", effective},
                                 {"ratio_decode_over_bound", ratio}});
  }

  // Batched decode (what continuous batching gives one process): --batch sequences, one row each
  // per step, against one sequence, alternating, at the last thread count.
  if (o.batch > 1) {
    std::vector<double> one_ms, many_ms, rows_ms;
    RunDecode(m, o, sequence_id, rng, o.batch);  // warm-up
    sequence_id += o.batch;
    for (int r = 0; r < o.runs; ++r) {
      one_ms.push_back(RunDecode(m, o, sequence_id++, rng).step_median_ms);
      many_ms.push_back(RunDecode(m, o, sequence_id, rng, o.batch).step_median_ms);
      sequence_id += o.batch;
      rows_ms.push_back(sweep.RunRows(o.batch));
    }
    const double one = Median(one_ms), many = Median(many_ms);
    const double tps_one = 1000.0 / one, tps_many = 1000.0 * o.batch / many;
    std::printf("\nbatched decode, %lld threads: %d sequences per step vs 1 (median step of %d steps, %d repeats)\n",
                static_cast<long long>(o.threads.back()), o.batch, o.steps, o.runs);
    std::printf("%10s %12s %12s %16s %10s\n", "sequences", "step ms", "tokens/s", "sweep GEMM ms", "ratio");
    std::printf("%10d %12.2f %12.2f %16s %10s\n", 1, one, tps_one, "-", "(single)");
    std::printf("%10d %12.2f %12.2f %16.2f %9.2fx\n", o.batch, many, tps_many, Median(rows_ms), tps_many / tps_one);
    report["batched"] = {{"threads", o.threads.back()},
                         {"sequences", o.batch},
                         {"single_step_ms", one_ms},
                         {"batch_step_ms", many_ms},
                         {"sweep_gemm_ms", rows_ms},
                         {"single_tokens_per_s", tps_one},
                         {"batch_tokens_per_s", tps_many},
                         {"ratio_batch_over_single_tokens_per_s", tps_many / tps_one}};
  }

  report["goal_met"] = all_met;
  std::filesystem::create_directories(std::filesystem::path(o.out).parent_path());
  std::ofstream(o.out) << report.dump(2) << "\n";
  std::printf(
      "bound = weight bytes per token / memcpy GB/s (bytes copied: each is read and written once); ratio = decode "
      "ms/token / bound; goal <= 1.5: %s\n"
      "ratio vs read = decode ms/token / (weight bytes per token / read GB/s of at::sum at that thread count), the "
      "stricter floor\nwrote %s\n",
      all_met ? "met" : "NOT met", o.out.c_str());
  return 0;
}
