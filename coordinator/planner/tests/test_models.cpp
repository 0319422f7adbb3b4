#include "test_models.h"

#include <cstdio>
#include <cstdlib>

namespace xcpipe::planner::testing {

using checkpoint::Block;
using checkpoint::BlockKind;
using checkpoint::ExpectedTensor;
using checkpoint::TensorInfo;

PlanningModel MakeSyntheticModel(const SyntheticModelOptions& o) {
  checkpoint::ModelSpec spec;
  spec.arch = o.hd ? checkpoint::ModelArch::kIxc2_4khd : checkpoint::ModelArch::kIxc2Vl;
  spec.llm.hidden = o.hidden;
  spec.llm.layers = o.layers;
  spec.llm.heads = o.heads;
  spec.llm.kv_heads = o.kv_heads;
  spec.llm.head_dim = o.hidden / o.heads;
  spec.llm.intermediate = o.intermediate;
  spec.llm.vocab = o.vocab;
  spec.llm.max_position_embeddings = o.max_positions;
  spec.vision.image_size = o.image_size;
  spec.vision.patch = 14;
  spec.vision.width = o.vision_width;
  spec.vision.layers = o.vision_layers;
  spec.vision.heads = o.vision_width / 64 > 0 ? o.vision_width / 64 : 1;
  spec.vision.mlp = 4 * o.vision_width;
  spec.vision.positions = 1 + (o.image_size / 14) * (o.image_size / 14);
  spec.vision.hd = o.hd;
  spec.vision.default_hd_num = o.hd ? 25 : 0;
  spec.vision.proj_in = o.hd ? 4 * o.vision_width : o.vision_width;

  checkpoint::TensorTable table;
  table.source = "synthetic";
  auto add = [&](Block& block, const std::string& name, std::vector<int64_t> shape) {
    block.tensors.push_back(ExpectedTensor{name, shape, false});
    TensorInfo info;
    info.name = name;
    info.dtype = o.table_dtype;
    info.shape = std::move(shape);
    table.tensors.push_back(std::move(info));
  };
  Block vision{BlockKind::kVision, -1, "vision", {}};
  for (int64_t j = 0; j < o.vision_layers; ++j) {
    const std::string p = "vit.vision_tower.vision_model.encoder.layers." + std::to_string(j) + ".";
    add(vision, p + "self_attn.qkv.weight", {3 * o.vision_width, o.vision_width});
    add(vision, p + "mlp.fc1.weight", {4 * o.vision_width, o.vision_width});
    add(vision, p + "mlp.fc2.weight", {o.vision_width, 4 * o.vision_width});
  }
  add(vision, "vision_proj.0.weight", {o.hidden, spec.vision.proj_in});
  add(vision, "vision_proj.2.weight", {o.hidden, o.hidden});
  if (o.hd) {
    add(vision, "plora_glb_GN", {1, 1, 4 * o.vision_width});
    add(vision, "plora_sub_GN", {1, 1, 1, 4 * o.vision_width});
  }
  spec.blocks.push_back(std::move(vision));
  Block embed{BlockKind::kEmbed, -1, "embed", {}};
  add(embed, "model.tok_embeddings.weight", {o.vocab, o.hidden});
  spec.blocks.push_back(std::move(embed));
  const int64_t qkv = (o.heads + 2 * o.kv_heads) * (o.hidden / o.heads);
  for (int64_t i = 0; i < o.layers; ++i) {
    const int64_t ffn = o.layer_intermediate.empty() ? o.intermediate : o.layer_intermediate[static_cast<size_t>(i)];
    Block layer{BlockKind::kLayer, i, "layer." + std::to_string(i), {}};
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add(layer, p + "attention_norm.weight", {o.hidden});
    add(layer, p + "attention.wqkv.weight", {qkv, o.hidden});
    add(layer, p + "attention.wo.weight", {o.hidden, o.hidden});
    add(layer, p + "ffn_norm.weight", {o.hidden});
    add(layer, p + "feed_forward.w1.weight", {ffn, o.hidden});
    add(layer, p + "feed_forward.w3.weight", {ffn, o.hidden});
    add(layer, p + "feed_forward.w2.weight", {o.hidden, ffn});
    spec.blocks.push_back(std::move(layer));
  }
  Block head{BlockKind::kHead, -1, "head", {}};
  add(head, "model.norm.weight", {o.hidden});
  add(head, "output.weight", {o.vocab, o.hidden});
  spec.blocks.push_back(std::move(head));

  auto model = MakePlanningModel("synthetic", std::move(spec), std::move(table));
  if (!model.ok()) {
    std::fprintf(stderr, "synthetic model: %s\n", model.status().ToString().c_str());
    std::abort();
  }
  return std::move(model).value();
}

ClusterSpec MakeCluster(const std::vector<std::vector<DeviceSpec>>& hosts, double intra_gbps, double inter_gbps) {
  ClusterSpec cluster;
  cluster.source = "test cluster";
  cluster.network.inter_host_gbps = inter_gbps;
  for (size_t h = 0; h < hosts.size(); ++h) {
    HostSpec host;
    host.name = "host" + std::to_string(h);
    host.intra_host_gbps = intra_gbps;
    for (size_t g = 0; g < hosts[h].size(); ++g) {
      GpuSpec gpu;
      gpu.device = "cuda:" + std::to_string(g);
      gpu.memory_gib = hosts[h][g].memory_gib;
      gpu.tflops = hosts[h][g].tflops;
      gpu.mem_bw_gbps = hosts[h][g].mem_bw_gbps;
      gpu.reserved_gib = 0.25;
      host.gpus.push_back(gpu);
    }
    cluster.hosts.push_back(std::move(host));
  }
  return cluster;
}

}  // namespace xcpipe::planner::testing
