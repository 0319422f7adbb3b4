#include "xcpipe/planner/cost_model.h"

#include <algorithm>
#include <cmath>

namespace xcpipe::planner {
namespace {

using checkpoint::BlockKind;
using checkpoint::DType;
using checkpoint::ModelArch;
using checkpoint::TensorInfo;

bool IsFloatingPoint(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16 || dtype == DType::kF64;
}

// Floating-point tensors are converted to the serving dtype at load; others keep their width.
uint64_t BytesAtServingDtype(const TensorInfo& tensor, DType serving) {
  if (!IsFloatingPoint(tensor.dtype)) return tensor.bytes();
  return static_cast<uint64_t>(tensor.numel()) * checkpoint::DTypeBytes(serving);
}

// The image encoder proper (run once per tile); the rest of the vision block (projector,
// Q-Former, separators) runs once per image token.
bool IsVisionTower(const std::string& name) {
  return name.rfind("vit.", 0) == 0 || name.rfind("visual_encoder.", 0) == 0;
}
// In the 2.5 checkpoint but unused for images and text (fixtures README): weights, no work.
bool IsUnusedForImages(const std::string& name) { return name.rfind("video_mem_proj.", 0) == 0; }

int64_t DefaultHdTiles(const checkpoint::ModelSpec& spec, int64_t max_images) {
  // XComposer-2.5's chat() forces hd_num = 6 when a request has more than one image.
  if (spec.arch == ModelArch::kIxc2_5 && max_images > 1) return 6;
  if (spec.vision.default_hd_num > 0) return spec.vision.default_hd_num;
  return spec.arch == ModelArch::kIxc2_4khd ? 25 : 24;
}

StatusOr<ResolvedLimits> Resolve(const checkpoint::ModelSpec& spec, const ServingLimits& limits) {
  XCPIPE_RETURN_IF_ERROR(ValidateServingLimits(limits));
  ResolvedLimits r;
  r.max_sequences = limits.max_sequences;
  r.max_context = limits.max_context;
  if (spec.llm.max_position_embeddings > 0 && r.max_context > spec.llm.max_position_embeddings) {
    r.max_context = spec.llm.max_position_embeddings;
    r.context_capped = true;
  }
  r.max_images = r.requested_max_images = limits.max_images;
  r.prefill_chunk = std::min(limits.prefill_chunk, r.max_context);
  r.dtype = limits.dtype;
  const auto& v = spec.vision;
  // The worst grid for a tile budget: every gh x gw <= tiles, gw as wide as allowed.
  auto image_tokens = [&](int64_t tiles) {
    int64_t worst = 0;
    for (int64_t gh = 1; gh <= tiles; ++gh) worst = std::max(worst, spec.ImageTokens(gh, tiles / gh));
    return worst;
  };
  if (v.hd) {
    r.hd_tiles = r.requested_hd_tiles = limits.hd_tiles.value_or(DefaultHdTiles(spec, limits.max_images));
    while (r.max_images > 0 && r.hd_tiles > 1 && r.max_images * image_tokens(r.hd_tiles) > r.max_context) {
      --r.hd_tiles;
    }
    r.image_tokens = image_tokens(r.hd_tiles);
    r.vision_passes = r.hd_tiles + 1;  // the tiles plus the global view
  } else {
    r.image_tokens = spec.ImageTokens(1, 1);
    r.vision_passes = 1;
  }
  if (r.image_tokens > 0) r.max_images = std::min(r.max_images, r.max_context / r.image_tokens);
  if (v.positions > 0) {
    r.tokens_per_pass = v.positions;
  } else if (v.patch > 0) {
    r.tokens_per_pass = 1 + (v.image_size / v.patch) * (v.image_size / v.patch);
  }
  return r;
}

}  // namespace

StatusOr<ModelCost> EstimateModelCost(const checkpoint::ModelSpec& spec, const checkpoint::TensorTable& tensors,
                                      const std::map<std::string, size_t>& assignment, const ServingLimits& limits) {
  const auto& llm = spec.llm;
  if (llm.hidden <= 0 || llm.layers <= 0 || llm.heads <= 0 || llm.kv_heads <= 0 || llm.head_dim <= 0 ||
      llm.vocab <= 0) {
    return InvalidArgumentError("model spec lacks LLM dimensions (hidden, layers, heads, kv_heads, head_dim, vocab)");
  }
  if (spec.blocks.empty()) return InvalidArgumentError("model spec has no blocks");
  XCPIPE_ASSIGN_OR_RETURN(ResolvedLimits r, Resolve(spec, limits));

  ModelCost cost;
  cost.limits = r;
  cost.blocks.resize(spec.blocks.size());
  std::vector<std::vector<const TensorInfo*>> owned(spec.blocks.size());
  for (const TensorInfo& tensor : tensors.tensors) {
    auto it = assignment.find(tensor.name);
    if (it == assignment.end() || it->second >= spec.blocks.size()) {
      return InvalidArgumentError("tensor '" + tensor.name + "' has no block in the coverage proof");
    }
    owned[it->second].push_back(&tensor);
  }

  const double b = static_cast<double>(checkpoint::DTypeBytes(r.dtype));
  const double S = static_cast<double>(r.max_sequences);
  const double ctx = static_cast<double>(r.max_context);
  const double avg_ctx = ctx / 2;
  const double C = static_cast<double>(r.prefill_chunk);
  const double step_tokens = S + C;
  const double hidden = static_cast<double>(llm.hidden);
  const double heads = static_cast<double>(llm.heads);
  const double head_dim = static_cast<double>(llm.head_dim);
  const double kv_per_token = 2.0 * static_cast<double>(llm.kv_heads) * head_dim * b;  // one layer
  const double qkv_width = (heads + 2.0 * static_cast<double>(llm.kv_heads)) * head_dim;
  const double intermediate = static_cast<double>(std::max<int64_t>(llm.intermediate, llm.hidden));
  const double vocab = static_cast<double>(llm.vocab);
  const double header = kHeaderBytesPerSequence * (S + 1);
  const double hidden_send = step_tokens * (hidden * b + kSideBytesPerToken) + header;

  // Vision, amortised: one step's chunk carries chunk / prompt_tokens of the largest request's
  // prompt, and with it that share of its images' tower work.
  const auto& vis = spec.vision;
  const double image_tokens = static_cast<double>(std::max<int64_t>(r.image_tokens, 1));
  const double images = static_cast<double>(r.max_images);
  const double prompt_tokens = images * image_tokens + kPromptTextTokens;
  const double images_per_step = r.max_images == 0 ? 0.0 : std::min(C / prompt_tokens * images, S * images);
  const double passes = static_cast<double>(r.vision_passes);
  const double T = static_cast<double>(r.tokens_per_pass);
  const double vwidth = static_cast<double>(vis.width);
  const double vheads = static_cast<double>(vis.heads > 0 ? vis.heads : std::max<int64_t>(1, vis.width / 64));
  const double vmlp = static_cast<double>(vis.mlp > 0 ? vis.mlp : 4 * vis.width);
  const double proj_in = static_cast<double>(vis.proj_in > 0 ? vis.proj_in : vis.width);

  uint64_t largest_send = 0;
  for (size_t i = 0; i < spec.blocks.size(); ++i) {
    const checkpoint::Block& block = spec.blocks[i];
    BlockCost& c = cost.blocks[i];
    c.name = block.name;
    c.kind = block.kind;
    c.tensor_count = owned[i].size();
    double params = 0, tower_params = 0, adapter_params = 0;
    for (const TensorInfo* t : owned[i]) {
      c.weight_bytes += BytesAtServingDtype(*t, r.dtype);
      if (!IsFloatingPoint(t->dtype)) continue;
      const double n = static_cast<double>(t->numel());
      params += n;
      if (IsVisionTower(t->name)) {
        tower_params += n;
      } else if (!IsUnusedForImages(t->name)) {
        adapter_params += n;
      }
    }
    const double weights = static_cast<double>(c.weight_bytes);
    double activation = 0, send = hidden_send;
    switch (block.kind) {
      case BlockKind::kVision: {
        const double flops_per_image =
            passes * (2.0 * tower_params * T + 4.0 * vis.layers * T * T * vwidth) + 2.0 * adapter_params * image_tokens;
        c.flops_per_image = flops_per_image;
        c.bytes_read_per_image = weights;
        c.flops_per_step = flops_per_image * images_per_step;
        c.bytes_read_per_step = weights * std::min(1.0, images_per_step);
        if (r.max_images > 0) {
          // One image's tiles go through the tower together (the official img2emb); the
          // embeddings of every image of the request wait for the prefill.
          const double layer_peak = passes * T * (6.0 * vwidth + vmlp) * b + passes * vheads * T * T * (4.0 + b);
          const double pixels = passes * 3.0 * vis.image_size * vis.image_size * 4.0;
          const double outputs = image_tokens * (proj_in + hidden) * b;
          const double held = static_cast<double>(r.max_images) * image_tokens * hidden * b;
          // The message that brings the pixels stays alive through the encode, and a vision
          // worker lays one image's rows out as the frame it sends to stage 0.
          const double message_and_frame = pixels + image_tokens * hidden * 4.0;
          activation = layer_peak + pixels + outputs + held + message_and_frame;
        }
        const double image_rows = std::min(C, images_per_step * image_tokens);
        send = image_rows * (hidden * b + kSideBytesPerToken) + header;
        break;
      }
      case BlockKind::kEmbed:
        c.bytes_read_per_step = step_tokens * hidden * b;
        activation = step_tokens * hidden * b + static_cast<double>(r.max_images) * image_tokens * hidden * b;
        break;
      case BlockKind::kLayer: {
        c.kv_bytes = static_cast<uint64_t>(kv_per_token * S * ctx);
        c.flops_per_step = 2.0 * params * step_tokens + 4.0 * heads * head_dim * avg_ctx * step_tokens;
        c.bytes_read_per_step =
            weights + (S + 1) * avg_ctx * kv_per_token + step_tokens * (4.0 * hidden + 3.0 * intermediate) * b;
        const double rows = std::max(C, S);
        activation = rows * (2.0 * hidden + qkv_width + 3.0 * intermediate) * b + heads * rows * ctx * (4.0 + b);
        break;
      }
      case BlockKind::kHead:
        c.flops_per_step = 2.0 * vocab * hidden * (S + 1);
        c.bytes_read_per_step = weights + (S + 1) * vocab * 4.0;
        // fp32 logits plus a same-size buffer for sampling (softmax, top-k/top-p sort).
        activation = 2.0 * (S + 1) * vocab * 4.0 + step_tokens * hidden * b;
        send = (S + 1) * 8.0;  // token ids back to the coordinator
        break;
    }
    c.activation_bytes = static_cast<uint64_t>(activation);
    c.send_bytes_per_step = static_cast<uint64_t>(send);
    if (block.kind != BlockKind::kHead) largest_send = std::max(largest_send, c.send_bytes_per_step);
  }
  const double rope_tables = ctx * head_dim * 4.0 * 2.0;  // fp32 cos and sin
  cost.stage_buffer_bytes = kInFlightTransfers * largest_send + static_cast<uint64_t>(rope_tables);
  return cost;
}

StageBytes PredictStageBytes(const ModelCost& cost, size_t first, size_t end, const GpuSpec& device) {
  StageBytes bytes;
  for (size_t i = first; i < end && i < cost.blocks.size(); ++i) {
    bytes.weights += cost.blocks[i].weight_bytes;
    bytes.kv += cost.blocks[i].kv_bytes;
    bytes.activations = std::max(bytes.activations, cost.blocks[i].activation_bytes);
  }
  bytes.workspace = device.reserved_bytes() + cost.stage_buffer_bytes;
  return bytes;
}

double PredictBlockMs(const BlockCost& block, const GpuSpec& device) {
  const double compute_s = block.flops_per_step / (device.tflops * 1e12 * kComputeEfficiency);
  const double memory_s = block.bytes_read_per_step / (device.mem_bw_gbps * 1e9 * kMemoryEfficiency);
  return std::max(compute_s, memory_s) * 1e3;
}

double PredictImageEncodeMs(const BlockCost& block, const GpuSpec& device) {
  if (block.kind != BlockKind::kVision) return 0;
  const double compute_s = block.flops_per_image / (device.tflops * 1e12 * kComputeEfficiency);
  const double memory_s = block.bytes_read_per_image / (device.mem_bw_gbps * 1e9 * kMemoryEfficiency);
  return std::max(compute_s, memory_s) * 1e3;
}

double PredictTransferMs(uint64_t bytes, double gbps, double latency_us) {
  if (gbps <= 0) return latency_us / 1e3;
  return static_cast<double>(bytes) * 8.0 / (gbps * 1e9) * 1e3 + latency_us / 1e3;
}

}  // namespace xcpipe::planner
