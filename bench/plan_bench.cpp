// Planner speed: the balanced search for a 100-block model over 64 devices (and smaller
// cases), against the one-second budget of issue 4. Writes <build>/reports/plan_bench.json.
//
//   plan_bench [--repeats N] [--out FILE]
//
// Exits 1 when a 100-block x 64-device case takes a second or more.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "xcpipe/planner/planner.h"

namespace {

using namespace xcpipe;
using namespace xcpipe::planner;
using checkpoint::Block;
using checkpoint::BlockKind;

constexpr double kBudgetMs = 1000.0;

std::filesystem::path ExecutableDir() {
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::filesystem::current_path() : exe.parent_path();
}

// A 7B-like XComposer2 spec with `layers` decoder layers: vision + embed + layers + head blocks.
PlanningModel MakeModel(int64_t layers) {
  checkpoint::ModelSpec spec;
  spec.arch = checkpoint::ModelArch::kIxc2Vl;
  auto& llm = spec.llm;
  llm.hidden = 4096, llm.layers = layers, llm.heads = 32, llm.kv_heads = 8, llm.head_dim = 128;
  llm.intermediate = 14336, llm.vocab = 92544, llm.max_position_embeddings = 32768;
  auto& v = spec.vision;
  v.image_size = 490, v.patch = 14, v.width = 1024, v.layers = 24, v.heads = 16, v.mlp = 4096;
  v.positions = 1226, v.proj_in = 1024;
  checkpoint::TensorTable table;
  auto add = [&](Block& block, std::string name, std::vector<int64_t> shape) {
    block.tensors.push_back({name, shape, false});
    table.tensors.push_back({std::move(name), checkpoint::DType::kBF16, std::move(shape), ""});
  };
  Block vision{BlockKind::kVision, -1, "vision", {}};
  for (int j = 0; j < 24; ++j) {
    const std::string p = "vit.vision_tower.vision_model.encoder.layers." + std::to_string(j) + ".";
    add(vision, p + "self_attn.qkv.weight", {3072, 1024});
    add(vision, p + "mlp.fc1.weight", {4096, 1024});
    add(vision, p + "mlp.fc2.weight", {1024, 4096});
  }
  add(vision, "vision_proj.0.weight", {4096, 1024});
  add(vision, "vision_proj.2.weight", {4096, 4096});
  spec.blocks.push_back(std::move(vision));
  Block embed{BlockKind::kEmbed, -1, "embed", {}};
  add(embed, "model.tok_embeddings.weight", {92544, 4096});
  spec.blocks.push_back(std::move(embed));
  for (int64_t i = 0; i < layers; ++i) {
    Block layer{BlockKind::kLayer, i, "layer." + std::to_string(i), {}};
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add(layer, p + "attention.wqkv.weight", {6144, 4096});
    add(layer, p + "attention.wo.weight", {4096, 4096});
    add(layer, p + "feed_forward.w1.weight", {14336, 4096});
    add(layer, p + "feed_forward.w3.weight", {14336, 4096});
    add(layer, p + "feed_forward.w2.weight", {4096, 14336});
    spec.blocks.push_back(std::move(layer));
  }
  Block head{BlockKind::kHead, -1, "head", {}};
  add(head, "model.norm.weight", {4096});
  add(head, "output.weight", {92544, 4096});
  spec.blocks.push_back(std::move(head));
  auto model = MakePlanningModel("synthetic-" + std::to_string(layers) + "-layers", std::move(spec), std::move(table));
  if (!model.ok()) {
    std::fprintf(stderr, "plan_bench: %s\n", model.status().ToString().c_str());
    std::exit(1);
  }
  return std::move(model).value();
}

struct Kind {
  const char* model;
  double memory_gib, tflops, mem_bw_gbps;
};
constexpr Kind kA100{"A100 80GB", 80, 312, 2039};
constexpr Kind k4090{"RTX 4090", 24, 165, 1008};
constexpr Kind kA6000{"RTX A6000", 48, 155, 768};
constexpr Kind kL40S{"L40S", 48, 362, 864};

// `hosts` hosts; device d of host h has kind kinds_of(h, d).
template <typename KindOf>
ClusterSpec MakeCluster(int hosts, int per_host, KindOf kinds_of) {
  ClusterSpec cluster;
  cluster.source = "synthetic";
  cluster.network.inter_host_gbps = 100;
  for (int h = 0; h < hosts; ++h) {
    HostSpec host;
    host.name = "node-" + std::to_string(h);
    host.intra_host_gbps = 600;
    for (int d = 0; d < per_host; ++d) {
      const Kind& k = kinds_of(h, d);
      GpuSpec gpu;
      gpu.device = "cuda:" + std::to_string(d);
      gpu.model = k.model;
      gpu.memory_gib = k.memory_gib, gpu.tflops = k.tflops, gpu.mem_bw_gbps = k.mem_bw_gbps;
      gpu.reserved_gib = kDefaultCudaReservedGib;
      host.gpus.push_back(gpu);
    }
    cluster.hosts.push_back(std::move(host));
  }
  return cluster;
}

struct Scenario {
  std::string name;
  int64_t layers;
  ClusterSpec cluster;
};

}  // namespace

int main(int argc, char** argv) {
  int repeats = 5;
  std::string out;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--repeats" && i + 1 < argc) {
      repeats = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--out" && i + 1 < argc) {
      out = argv[++i];
    } else {
      std::fprintf(stderr, "usage: plan_bench [--repeats N] [--out FILE]\n");
      return 2;
    }
  }
  if (out.empty()) out = (ExecutableDir().parent_path() / "reports" / "plan_bench.json").string();

  std::vector<Scenario> scenarios;
  scenarios.push_back({"100 blocks, 64 identical GPUs on 8 hosts", 97,
                       MakeCluster(8, 8, [](int, int) -> const Kind& { return kA100; })});
  scenarios.push_back({"100 blocks, 64 GPUs of 2 kinds, hosts alternating", 97,
                       MakeCluster(8, 8, [](int h, int) -> const Kind& { return h % 2 ? k4090 : kA100; })});
  scenarios.push_back(
      {"100 blocks, 64 GPUs of 4 kinds mixed inside every host", 97, MakeCluster(8, 8, [](int, int d) -> const Kind& {
         static const Kind* kinds[] = {&kA100, &k4090, &kA6000, &kL40S};
         return *kinds[d % 4];
       })});
  scenarios.push_back(
      {"100 blocks, 64 GPUs of 4 kinds on one host", 97, MakeCluster(1, 64, [](int, int d) -> const Kind& {
         static const Kind* kinds[] = {&kA100, &k4090, &kA6000, &kL40S};
         return *kinds[d % 4];
       })});
  scenarios.push_back({"35 blocks (a 7B model), 8 GPUs of 2 kinds on 2 hosts", 32,
                       MakeCluster(2, 4, [](int, int d) -> const Kind& { return d % 2 ? k4090 : kA6000; })});

  nlohmann::ordered_json report;
  report["budget_ms"] = kBudgetMs;
  report["repeats"] = repeats;
  report["scenarios"] = nlohmann::ordered_json::array();
  bool within_budget = true;
  std::printf("%-58s %8s %8s %8s %8s %7s\n", "scenario", "min ms", "median", "max ms", "stages", "bneck");
  for (const auto& s : scenarios) {
    const PlanningModel model = MakeModel(s.layers);
    std::vector<double> ms;
    Plan plan;
    for (int r = 0; r < repeats; ++r) {
      const auto start = std::chrono::steady_clock::now();
      auto result = MakePlan(model, s.cluster);
      const auto stop = std::chrono::steady_clock::now();
      if (!result.ok()) {
        std::fprintf(stderr, "plan_bench: %s: %s\n", s.name.c_str(), result.status().ToString().c_str());
        return 1;
      }
      plan = std::move(result).value();
      ms.push_back(std::chrono::duration<double, std::milli>(stop - start).count());
    }
    std::sort(ms.begin(), ms.end());
    const double median = ms[ms.size() / 2];
    const bool big = model.spec.blocks.size() >= 100 && s.cluster.device_count() >= 64;
    if (big && ms.back() >= kBudgetMs) within_budget = false;
    std::printf("%-58s %8.1f %8.1f %8.1f %8zu %7.2f\n", s.name.c_str(), ms.front(), median, ms.back(),
                plan.stages.size(), plan.bottleneck_ms);
    report["scenarios"].push_back({{"name", s.name},
                                   {"blocks", model.spec.blocks.size()},
                                   {"devices", s.cluster.device_count()},
                                   {"hosts", s.cluster.hosts.size()},
                                   {"min_ms", ms.front()},
                                   {"median_ms", median},
                                   {"max_ms", ms.back()},
                                   {"feasible", plan.feasible},
                                   {"stages", plan.stages.size()},
                                   {"cross_host_hops", plan.cross_host_hops},
                                   {"bottleneck_ms", plan.bottleneck_ms}});
  }
  report["within_budget"] = within_budget;
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(out).parent_path(), ec);
  std::ofstream(out) << report.dump(2) << "\n";
  std::printf("wrote %s\n", out.c_str());
  if (!within_budget) {
    std::fprintf(stderr, "plan_bench: planning 100 blocks over 64 devices took %.0f ms or more (budget %.0f ms)\n",
                 kBudgetMs, kBudgetMs);
    return 1;
  }
  return 0;
}
