// The planner's cost model: what each block of a model costs in memory and time under given
// serving limits, and what a stage (a contiguous block range on one device) adds up to.
// Pure arithmetic over the model spec and tensor table; never reads weights or the clock.
//
// Memory per stage, by category (StageBytes):
//   weights      every tensor of the stage's blocks, at the serving dtype (integer tensors keep
//                their own width)
//   kv           per decoder layer: 2 (K, V) x kv_heads x head_dim x dtype bytes (GQA aware)
//                x max_sequences x max_context
//   activations  the largest transient peak among the stage's blocks: a decoder layer running
//                one prefill chunk (projections, FFN, fp32 attention scores over the full
//                context), the vision tower at max tiles of one image plus the embeddings of
//                max_images images, the message that brought its pixels and the float32
//                frame a vision worker sends its rows in, the head's fp32 logits and
//                sampling buffers
//   workspace    the device runtime's own memory (GpuSpec::reserved_gib), the transport
//                buffers for micro-batches in flight (kInFlightTransfers) and the RoPE tables
//
// Time per stage (predicted_step_ms): one steady-state pipeline step of chunked-prefill
// serving, in which every one of max_sequences sequences advances by one decode token and
// one prefill chunk of prefill_chunk prompt tokens goes through. Prompts are taken to be the
// largest request: max_images images at the worst tile grid plus kPromptTextTokens of text, so
// the vision tower's work per step is its work per image times the images that one chunk's
// worth of such prompts carries. Each block is a roofline: max(FLOPs / (tflops x kComputeEfficiency),
// bytes read / (mem_bw x kMemoryEfficiency)); a stage sums its blocks and adds the hop that
// sends the step's activations (hidden states, image mask, positions) to the next stage over
// the link between the two devices. The bottleneck stage bounds pipeline throughput.
//
// Value types; thread-compatible. Failure: EstimateModelCost returns InvalidArgument when the
// spec lacks the dimensions it needs or a limit is out of range.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "xcpipe/base/status.h"
#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/checkpoint/tensor_table.h"
#include "xcpipe/planner/cluster.h"

namespace xcpipe::planner {

// Fractions of peak a real kernel reaches; applied to every device alike, so they scale
// predicted milliseconds without changing which plan wins.
inline constexpr double kComputeEfficiency = 0.5;
inline constexpr double kMemoryEfficiency = 0.8;
// Send and receive buffers each stage keeps for micro-batches in flight (double-buffered).
inline constexpr int64_t kInFlightTransfers = 4;
// Bytes per token that travel beside the hidden state: image-mask byte + int64 position.
inline constexpr int64_t kSideBytesPerToken = 1 + 8;
// Text around the images of the largest request (system prompt, question), in tokens.
inline constexpr int64_t kPromptTextTokens = 128;
// Per-sequence header of an activation message (sequence id, step, lengths).
inline constexpr int64_t kHeaderBytesPerSequence = 64;

// Serving limits resolved against the model: defaults filled, context capped at the model's
// limit, and images capped at the largest that fit in the context (larger requests are refused
// at admission, so no stage needs room for them): HD tiles are lowered first, then images.
struct ResolvedLimits {
  int64_t max_sequences = 0;
  int64_t max_context = 0;      // after capping at the model's max_position_embeddings
  bool context_capped = false;  // the requested max_context was above the model's limit
  int64_t max_images = 0;       // after lowering to what the context holds
  int64_t hd_tiles = 0;         // 0 for models without HD tiling; lowered likewise
  int64_t requested_max_images = 0;
  int64_t requested_hd_tiles = 0;
  int64_t image_tokens = 0;     // LLM rows of one image at hd_tiles (worst tile grid)
  int64_t vision_passes = 0;    // tower passes per image (tiles + global view, or 1)
  int64_t tokens_per_pass = 0;  // tower sequence length (patches + CLS)
  int64_t prefill_chunk = 0;    // capped at max_context
  checkpoint::DType dtype = checkpoint::DType::kBF16;
  int64_t step_tokens() const { return max_sequences + prefill_chunk; }
};

struct BlockCost {
  std::string name;  // the spec's block name ("vision", "embed", "layer.3", "head")
  checkpoint::BlockKind kind = checkpoint::BlockKind::kLayer;
  size_t tensor_count = 0;
  uint64_t weight_bytes = 0;
  uint64_t kv_bytes = 0;
  uint64_t activation_bytes = 0;  // transient peak while this block runs
  double flops_per_step = 0;
  double bytes_read_per_step = 0;  // weights, KV and activations streamed per step
  // Vision block only (0 elsewhere): encoding ONE image at the worst tile grid, every tower
  // pass (ResolvedLimits::vision_passes) plus the projector. The per-step figures above are
  // these times the images one step's prefill chunk carries.
  double flops_per_image = 0;
  double bytes_read_per_image = 0;  // the block's weights, read once per image
  // Bytes sent per step to the next stage when a stage boundary follows this block.
  uint64_t send_bytes_per_step = 0;
};

struct ModelCost {
  ResolvedLimits limits;
  std::vector<BlockCost> blocks;  // the spec's pipeline order
  // Per-stage workspace besides the device's reserved memory: transport buffers + RoPE tables.
  uint64_t stage_buffer_bytes = 0;
};

// `assignment` maps tensor name -> block index (CheckCoverage's proof); every tensor of
// `tensors` must be in it.
StatusOr<ModelCost> EstimateModelCost(const checkpoint::ModelSpec& spec, const checkpoint::TensorTable& tensors,
                                      const std::map<std::string, size_t>& assignment, const ServingLimits& limits);

struct StageBytes {
  uint64_t weights = 0;
  uint64_t kv = 0;
  uint64_t activations = 0;
  uint64_t workspace = 0;
  uint64_t total() const { return weights + kv + activations + workspace; }
};

// Blocks [first, end) on `device`.
StageBytes PredictStageBytes(const ModelCost& cost, size_t first, size_t end, const GpuSpec& device);
// Milliseconds `device` spends on one block per step (its roofline).
double PredictBlockMs(const BlockCost& block, const GpuSpec& device);
// Milliseconds `device` spends encoding one image at the worst tile grid with the vision
// block (the same roofline over BlockCost::flops_per_image and bytes_read_per_image); 0 for
// other blocks.
double PredictImageEncodeMs(const BlockCost& block, const GpuSpec& device);
// Milliseconds to move `bytes` over a link of `gbps` gigabits per second with `latency_us`.
double PredictTransferMs(uint64_t bytes, double gbps, double latency_us);

}  // namespace xcpipe::planner
