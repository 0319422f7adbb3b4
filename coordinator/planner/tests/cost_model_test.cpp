#include "xcpipe/planner/cost_model.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "test_models.h"
#include "xcpipe/planner/planning_model.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::planner {
namespace {

using checkpoint::BlockKind;
using checkpoint::DType;
using testing::MakeSyntheticModel;
using testing::SyntheticModelOptions;

ModelCost Cost(const PlanningModel& model, const ServingLimits& limits) {
  auto cost = EstimateModelCost(model.spec, model.tensors, model.assignment, limits);
  EXPECT_TRUE(cost.ok()) << cost.status().ToString();
  return std::move(cost).value();
}

uint64_t Numel(const PlanningModel& model, size_t block) {
  uint64_t n = 0;
  for (const auto& t : model.tensors.tensors) {
    if (model.assignment.at(t.name) == block) n += static_cast<uint64_t>(t.numel());
  }
  return n;
}

TEST(CostModel, WeightsAreCountedAtTheServingDtype) {
  SyntheticModelOptions options;
  options.table_dtype = DType::kF32;
  const PlanningModel model = MakeSyntheticModel(options);
  ServingLimits limits;
  limits.dtype = DType::kBF16;
  const ModelCost bf16 = Cost(model, limits);
  limits.dtype = DType::kF32;
  const ModelCost fp32 = Cost(model, limits);
  ASSERT_EQ(bf16.blocks.size(), model.spec.blocks.size());
  for (size_t b = 0; b < bf16.blocks.size(); ++b) {
    EXPECT_EQ(bf16.blocks[b].weight_bytes, 2 * Numel(model, b)) << bf16.blocks[b].name;
    EXPECT_EQ(fp32.blocks[b].weight_bytes, 4 * Numel(model, b)) << fp32.blocks[b].name;
  }
}

TEST(CostModel, KvCacheIsGqaAwareAndSizedForTheLimits) {
  SyntheticModelOptions options;
  options.hidden = 512, options.heads = 8, options.kv_heads = 2;  // head_dim 64
  const PlanningModel model = MakeSyntheticModel(options);
  ServingLimits limits;
  limits.max_sequences = 3;
  limits.max_context = 1000;
  limits.dtype = DType::kF16;
  const ModelCost cost = Cost(model, limits);
  for (const auto& block : cost.blocks) {
    if (block.kind == BlockKind::kLayer) {
      EXPECT_EQ(block.kv_bytes, uint64_t{2} * 2 * 64 * 2 * 3 * 1000) << block.name;  // K,V x kv x d x bytes x S x T
    } else {
      EXPECT_EQ(block.kv_bytes, 0u) << block.name;
    }
  }
  options.kv_heads = 8;  // no GQA: four times the KV
  const ModelCost mha = Cost(MakeSyntheticModel(options), limits);
  EXPECT_EQ(mha.blocks[2].kv_bytes, 4 * cost.blocks[2].kv_bytes);
  limits.max_sequences = 6;
  EXPECT_EQ(Cost(model, limits).blocks[2].kv_bytes, 2 * cost.blocks[2].kv_bytes);
}

TEST(CostModel, ContextIsCappedAtTheModelsLimit) {
  SyntheticModelOptions options;
  options.max_positions = 2048;
  const PlanningModel model = MakeSyntheticModel(options);
  ServingLimits limits;
  limits.max_context = 4096;
  const ModelCost cost = Cost(model, limits);
  EXPECT_EQ(cost.limits.max_context, 2048);
  EXPECT_TRUE(cost.limits.context_capped);
  limits.max_context = 1024;
  EXPECT_FALSE(Cost(model, limits).limits.context_capped);
}

TEST(CostModel, VisionCostGrowsWithTilesAndImages) {
  SyntheticModelOptions options;
  options.hd = true;
  options.image_size = 336;
  const PlanningModel model = MakeSyntheticModel(options);
  ServingLimits limits;
  limits.max_context = 16384;  // room for three images of 25 tiles
  limits.hd_tiles = 4;
  const ModelCost small = Cost(model, limits);
  limits.hd_tiles = 25;
  const ModelCost large = Cost(model, limits);
  EXPECT_EQ(small.limits.vision_passes, 5);
  EXPECT_EQ(large.limits.vision_passes, 26);
  EXPECT_GT(large.limits.image_tokens, small.limits.image_tokens);
  EXPECT_GT(large.blocks[0].activation_bytes, 3 * small.blocks[0].activation_bytes);
  limits.max_images = 3;
  EXPECT_GT(Cost(model, limits).blocks[0].activation_bytes, large.blocks[0].activation_bytes);
  limits.max_images = 0;
  const ModelCost none = Cost(model, limits);
  EXPECT_EQ(none.blocks[0].activation_bytes, 0u);
  EXPECT_EQ(none.blocks[0].flops_per_step, 0.0);
  // Without HD tiling the model's own tile count does not apply.
  EXPECT_EQ(Cost(MakeSyntheticModel(), ServingLimits{}).limits.hd_tiles, 0);
}

TEST(CostModel, ImagesAreCappedAtWhatTheContextHolds) {
  SyntheticModelOptions options;
  options.hd = true;
  options.image_size = 336;  // 12 x 12 merged patches per tile
  const PlanningModel model = MakeSyntheticModel(options);
  ServingLimits limits;
  limits.hd_tiles = 25;
  limits.max_images = 2;
  limits.max_context = 4096;
  const ModelCost cost = Cost(model, limits);
  EXPECT_EQ(cost.limits.requested_hd_tiles, 25);
  EXPECT_LT(cost.limits.hd_tiles, 25);
  EXPECT_LE(2 * cost.limits.image_tokens, 4096);
  EXPECT_EQ(cost.limits.max_images, 2);
  // One more tile would not fit two images.
  limits.hd_tiles = cost.limits.hd_tiles + 1;
  limits.max_context = 2 * cost.limits.image_tokens;
  EXPECT_EQ(Cost(model, limits).limits.hd_tiles, cost.limits.hd_tiles);
  // Without HD tiling, the image count is what gives.
  ServingLimits plain;
  plain.max_images = 8;
  plain.max_context = 1000;
  const ModelCost vl = Cost(MakeSyntheticModel(), plain);  // 224 px: 256 tokens per image
  EXPECT_EQ(vl.limits.image_tokens, 256);
  EXPECT_EQ(vl.limits.max_images, 3);
  EXPECT_EQ(vl.limits.requested_max_images, 8);
}

TEST(CostModel, DefaultTilesAreTheModelsOwn) {
  SyntheticModelOptions options;
  options.hd = true;
  options.image_size = 336;
  const ModelCost cost = Cost(MakeSyntheticModel(options), ServingLimits{});
  EXPECT_EQ(cost.limits.hd_tiles, 25);
}

TEST(CostModel, StageBytesAddWeightsAndKvAndTakeThePeakActivation) {
  const PlanningModel model = MakeSyntheticModel();
  const ModelCost cost = Cost(model, ServingLimits{});
  GpuSpec gpu;
  gpu.device = "cuda:0";
  gpu.memory_gib = 24;
  gpu.tflops = 100;
  gpu.mem_bw_gbps = 1000;
  gpu.reserved_gib = 0.5;
  const StageBytes bytes = PredictStageBytes(cost, 2, 5, gpu);
  uint64_t weights = 0, kv = 0, peak = 0;
  for (size_t b = 2; b < 5; ++b) {
    weights += cost.blocks[b].weight_bytes;
    kv += cost.blocks[b].kv_bytes;
    peak = std::max(peak, cost.blocks[b].activation_bytes);
  }
  EXPECT_EQ(bytes.weights, weights);
  EXPECT_EQ(bytes.kv, kv);
  EXPECT_EQ(bytes.activations, peak);
  EXPECT_EQ(bytes.workspace, (uint64_t{1} << 29) + cost.stage_buffer_bytes);
  EXPECT_EQ(bytes.total(), weights + kv + peak + bytes.workspace);
}

TEST(CostModel, BlockTimeIsARoofline) {
  BlockCost block;
  block.flops_per_step = 1e12;
  block.bytes_read_per_step = 1e9;
  GpuSpec gpu;
  gpu.tflops = 100;
  gpu.mem_bw_gbps = 1000;
  // compute 1e12 / (100e12 * 0.5) = 20 ms; memory 1e9 / (1000e9 * 0.8) = 1.25 ms
  EXPECT_NEAR(PredictBlockMs(block, gpu), 20.0, 1e-9);
  block.flops_per_step = 1e9;
  EXPECT_NEAR(PredictBlockMs(block, gpu), 1.25, 1e-9);
  gpu.mem_bw_gbps = 2000;
  EXPECT_NEAR(PredictBlockMs(block, gpu), 0.625, 1e-9);
  // 1e9 bytes over 80 Gbit/s = 100 ms, plus 50 us.
  EXPECT_NEAR(PredictTransferMs(1'000'000'000, 80, 50), 100.05, 1e-9);
}

TEST(CostModel, ImageEncodeIsPerImageWorkOnTheSameRoofline) {
  SyntheticModelOptions options;
  options.hd = true;
  options.image_size = 336;
  const PlanningModel model = MakeSyntheticModel(options);
  ServingLimits limits;
  limits.max_context = 16384;
  limits.hd_tiles = 4;
  const ModelCost small = Cost(model, limits);
  limits.hd_tiles = 25;
  const ModelCost large = Cost(model, limits);
  const BlockCost& vision = large.blocks[0];
  ASSERT_EQ(vision.kind, BlockKind::kVision);
  // More tiles, more tower passes per image: at least the ratio of passes on the tower's part.
  EXPECT_GT(vision.flops_per_image, 4 * small.blocks[0].flops_per_image);
  EXPECT_EQ(vision.bytes_read_per_image, static_cast<double>(vision.weight_bytes));
  // Per image, not per step: the step's figure moves with the chunk, the image's does not.
  limits.prefill_chunk = 128;
  const ModelCost short_chunk = Cost(model, limits);
  EXPECT_EQ(short_chunk.blocks[0].flops_per_image, vision.flops_per_image);
  EXPECT_LT(short_chunk.blocks[0].flops_per_step, vision.flops_per_step);

  GpuSpec gpu;
  gpu.tflops = 100;
  gpu.mem_bw_gbps = 1000;
  const double compute_ms = vision.flops_per_image / (100e12 * kComputeEfficiency) * 1e3;
  const double memory_ms = vision.bytes_read_per_image / (1000e9 * kMemoryEfficiency) * 1e3;
  EXPECT_DOUBLE_EQ(PredictImageEncodeMs(vision, gpu), std::max(compute_ms, memory_ms));
  gpu.tflops = 25;
  EXPECT_DOUBLE_EQ(PredictImageEncodeMs(vision, gpu),
                   std::max(vision.flops_per_image / (25e12 * kComputeEfficiency) * 1e3, memory_ms));
  // Only the vision block encodes images.
  for (size_t b = 1; b < large.blocks.size(); ++b) {
    EXPECT_EQ(large.blocks[b].flops_per_image, 0.0) << large.blocks[b].name;
    EXPECT_EQ(PredictImageEncodeMs(large.blocks[b], gpu), 0.0) << large.blocks[b].name;
  }
}

TEST(CostModel, RejectsSpecsWithoutDimensions) {
  PlanningModel model = MakeSyntheticModel();
  model.spec.llm.heads = 0;
  EXPECT_FALSE(EstimateModelCost(model.spec, model.tensors, model.assignment, ServingLimits{}).ok());
  model = MakeSyntheticModel();
  ServingLimits limits;
  limits.max_sequences = 0;
  EXPECT_FALSE(EstimateModelCost(model.spec, model.tensors, model.assignment, limits).ok());
}

// The real 4KHD layout: its weights at bf16 are exactly the released byte count (2 bytes per
// parameter), and its KV cache (32 layers, 8 KV heads of 128) at 8 x 4096 tokens is 4 GiB.
TEST(CostModel, Real4khdLayoutBytes) {
  const auto path = xcpipe::testing::FixturesDir() / "real_layouts/internlm-xcomposer2-4khd-7b.layout.json";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "fixtures not found: " << path;
  auto model = LoadLayoutForPlanning(path);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  const ModelCost cost = Cost(*model, ServingLimits{});
  uint64_t weights = 0, kv = 0;
  for (const auto& b : cost.blocks) weights += b.weight_bytes, kv += b.kv_bytes;
  EXPECT_EQ(weights, uint64_t{17195003904});  // the layout's bytes_at_dtype (8,597,501,952 x 2)
  EXPECT_EQ(kv, uint64_t{4} << 30);
  EXPECT_EQ(cost.limits.hd_tiles, 25);
  EXPECT_EQ(cost.limits.image_tokens, 4057);  // a 25x1 grid: 26*144 + 1 + 26*12
}

}  // namespace
}  // namespace xcpipe::planner
