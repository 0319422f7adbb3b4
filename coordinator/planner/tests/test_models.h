// Hand-built models and clusters for planner tests: small, fast, no fixtures needed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "xcpipe/planner/cluster.h"
#include "xcpipe/planner/planning_model.h"

namespace xcpipe::planner::testing {

struct SyntheticModelOptions {
  int64_t layers = 8;
  int64_t hidden = 512;
  int64_t heads = 8;
  int64_t kv_heads = 2;
  int64_t intermediate = 1024;
  int64_t vocab = 4096;
  int64_t max_positions = 32768;
  // Vision tower (CLIP-like).
  int64_t vision_width = 256;
  int64_t vision_layers = 4;
  int64_t image_size = 224;
  bool hd = false;  // HD tiling (4KHD-like)
  // Per-layer FFN widths; empty: every layer uses `intermediate`.
  std::vector<int64_t> layer_intermediate;
  checkpoint::DType table_dtype = checkpoint::DType::kBF16;
};

// An XComposer2-shaped spec (vision, embed, layer.i, head) and its tensor table, through the
// coverage proof.
PlanningModel MakeSyntheticModel(const SyntheticModelOptions& options = {});

struct DeviceSpec {
  double memory_gib = 24;
  double tflops = 100;
  double mem_bw_gbps = 1000;
};

// One host per entry of `hosts`, each with the given devices ("cuda:0".. per host).
ClusterSpec MakeCluster(const std::vector<std::vector<DeviceSpec>>& hosts, double intra_gbps = 256,
                        double inter_gbps = 25);

}  // namespace xcpipe::planner::testing
