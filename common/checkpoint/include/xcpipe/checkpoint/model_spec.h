// The typed description of an XComposer model: its version, dimensions, and the ordered list
// of placeable blocks with the tensors each one owns. Built from config.json (plus
// clip_vision_config.json where present) and the checkpoint's tensor table; never reads
// weights. Shared by the planner (what to place), the loader (what a stage maps) and the
// forward pass (dimensions). Value type.
//
// Blocks, in pipeline order (docs/architecture.md, "The model as placeable blocks"). A stage
// runs a contiguous range of them; every tensor belongs to exactly one block (CheckCoverage):
//   1.0          vision: visual_encoder.*, ln_vision.*, Qformer.*, query_tokens, internlm_proj.*,
//                        flag_image_start, flag_image_end
//                embed:  internlm_model.model.embed_tokens.weight
//                layer i: internlm_model.model.layers.{i}.*
//                head:   internlm_model.model.norm.weight, internlm_model.lm_head.weight
//   2.x          vision: vit.*, vision_proj.*, plora_glb_GN, plora_sub_GN (HD), video_mem_proj.* (2.5, optional)
//                embed:  model.tok_embeddings.weight
//                layer i: model.layers.{i}.*
//                head:   model.norm.weight, output.weight
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "xcpipe/base/status.h"
#include "xcpipe/checkpoint/tensor_table.h"

namespace xcpipe::checkpoint {

enum class ModelArch : uint8_t {
  kIxc1,       // InternLM-XComposer 1.0: EVA ViT-g + Q-Former + InternLM-7B with LoRA
  kIxc2Vl,     // XComposer2-VL: CLIP-L/14 at 490 px + InternLM2 with Partial-LoRA
  kIxc2_4khd,  // XComposer2-4KHD: HD tiles of 336 px, GN separators, wqkv PLoRA r=8 alpha=16
  kIxc2_5,     // XComposer-2.5: HD tiles of 560 px, GN separators, padding at the bottom
};
std::string_view ArchName(ModelArch arch);  // "ixc1", "ixc2-vl", "ixc2-4khd", "ixc2.5"
std::optional<ModelArch> ParseArch(std::string_view name);

enum class RopeScaling : uint8_t { kNone, kDynamic, kLinear };

// LoRA / Partial-LoRA on one projection: y += scale * B(A(x)).
struct LoraSpec {
  int64_t rank = 0;
  double scale = 1.0;  // alpha / rank
};

struct LlmConfig {
  int64_t hidden = 0;
  int64_t layers = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;  // == heads for 1.0 (no GQA)
  int64_t head_dim = 0;
  int64_t intermediate = 0;
  int64_t vocab = 0;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling = RopeScaling::kNone;
  double rope_scaling_factor = 1.0;
  int64_t max_position_embeddings = 0;
  double rms_eps = 1e-5;
  bool attention_bias = false;  // 1.0: q,k,v,o carry biases
  // Per projection name ("wqkv","wo","w1","w2","w3" for 2.x; "q_proj","k_proj","v_proj","o_proj",
  // "up_proj","down_proj" for 1.0): present only where the checkpoint carries LoRA weights.
  // 2.x applies it at image positions only (Partial-LoRA); 1.0 to every token.
  std::map<std::string, LoraSpec> lora;
  int64_t bos_id = 1;
  int64_t eos_id = 2;
  int64_t pad_id = 2;
  std::vector<int64_t> stop_ids;  // generation stops at any of these
};

enum class VisionKind : uint8_t { kClip, kEvaQformer };

struct VisionConfig {
  VisionKind kind = VisionKind::kClip;
  int64_t image_size = 0;  // input px of one tower pass (490 VL, 336 4KHD, 560 2.5, 224 1.0)
  int64_t patch = 14;
  int64_t width = 0;  // tower hidden size C
  int64_t layers = 0;
  int64_t heads = 0;
  int64_t mlp = 0;
  double eps = 1e-5;           // tower LayerNorm eps (1e-6 for EVA)
  int64_t positions = 0;       // rows of the position table (1 + (image_size/patch)^2)
  bool hd = false;             // 4KHD / 2.5 tiling with 2x2 merge and GN separators
  int64_t default_hd_num = 0;  // chat() default tile budget (25 for 4KHD, 24 for 2.5)
  int64_t proj_in = 0;         // projector input width (C, or 4C for HD)
  // 1.0 only.
  int64_t qformer_width = 0;
  int64_t qformer_layers = 0;
  int64_t qformer_heads = 0;
  int64_t qformer_intermediate = 0;
  int64_t query_tokens = 0;  // NQ; image rows = NQ + 2
  int64_t qformer_cross_attention_every = 2;
  double qformer_eps = 1e-12;   // Q-Former (BERT, post-LN) LayerNorm eps
  double ln_vision_eps = 1e-5;  // ln_vision, applied to the EVA output
};

enum class BlockKind : uint8_t { kVision, kEmbed, kLayer, kHead };

// One tensor the spec expects. Dimensions of -1 match any size (e.g. an unknown LoRA rank).
struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
  bool optional = false;  // may be absent (unused buffers, video_mem_proj, post_layernorm, LoRA)
};

struct Block {
  BlockKind kind = BlockKind::kLayer;
  int64_t layer = -1;  // decoder layer index for kLayer, else -1
  std::string name;    // "vision", "embed", "layer.7", "head"
  std::vector<ExpectedTensor> tensors;
};

struct ModelSpec {
  ModelArch arch = ModelArch::kIxc2Vl;
  LlmConfig llm;
  VisionConfig vision;
  std::vector<Block> blocks;  // pipeline order: vision, embed, layer.0 .. layer.{L-1}, head
  // What was assumed rather than read (a default for a missing config key, a tower head count
  // not in any config), one line each, for `xcpipe plan` and logs to show.
  std::vector<std::string> notes;

  // Index of the block that owns `tensor_name`, or nullopt when no block claims it. Layer
  // names go straight to their block; cost is one scan of that block's tensors.
  std::optional<size_t> BlockOf(std::string_view tensor_name) const;
  // Image rows one image occupies in the LLM sequence for a tile grid (1 for non-HD).
  // Non-HD models take one tower pass whatever the grid: VL gives (image_size/patch)^2 (1225),
  // 1.0 gives NQ + 2. HD: (gh*gw + 1)*m^2 + 1 + (gh + 1)*m with m = image_size/patch/2.
  int64_t ImageTokens(int64_t grid_h, int64_t grid_w) const;
};

// Which version a tensor table holds, from names and shapes only (config.json's
// `architectures` cannot tell: 4KHD and 2.5 both say InternLM2ForCausalLM):
//   internlm_model.*                  -> 1.0
//   plora_glb_GN present (HD family)  -> by the CLIP position table: 577 rows (336 px tiles) 4KHD,
//                                        1601 rows (560 px) 2.5; without the table, by
//                                        clip_config image_size, then by video_mem_proj.* (2.5)
//   otherwise model.* / vit.*         -> 2.0-VL
// InvalidArgument (naming what was looked for) when none applies.
StatusOr<ModelArch> DetectArch(const TensorTable& tensors, const nlohmann::json* clip_config = nullptr);

// Builds the spec. `config` is config.json; `clip_config` is clip_vision_config.json when the
// checkpoint has one (otherwise the released tower's values are used and cross-checked
// against the tensor shapes). `tensors` decides the version (tensor names and shapes) and the
// LoRA ranks. `arch_override` forces a version.
//
// Where each value comes from:
//   LLM dims        config.json (hidden_size, num_hidden_layers, num_attention_heads,
//                   num_key_value_heads, intermediate_size, vocab_size, rope_theta, rope_scaling,
//                   rms_norm_eps, max_position_embeddings; `bias` (2.x) / `kqvo_bias` (1.0)).
//   2.x PLoRA       rank = rows of layer 0's X.Plora_A.weight (default 256; 4KHD wqkv 8); scale
//                   1.0, except 4KHD wqkv whose alpha is the class default 16 (r=8 -> 2.0).
//   1.0 LoRA        config `internlm_lora` {learn_param, lora_r, lora_alpha}: those projections
//                   must carry lora_A/lora_B of rank lora_r, scale alpha/r. Without it (the
//                   real 1.0 layout), LoRA tensors are optional: rank from their shapes, scale 1
//                   (what the official merge script uses), listed in `llm.lora` only if present.
//   CLIP tower      clip_config (hidden_size, num_hidden_layers, num_attention_heads,
//                   intermediate_size, layer_norm_eps, patch_size, image_size) or the released
//                   ViT-L/14 (1024, 24, 16, 4096, 1e-5, 14); tile px: config img_size (VL, 490),
//                   clip image_size or 336 (4KHD), or 560 (2.5). Cross-checked against
//                   class_embedding, fc1 and the layer count: a mismatch is InvalidArgument.
//   EVA / Q-Former  widths, depths, MLP sizes from tensor shapes; config `eva_vit_g` /
//                   `qformer` objects (as in the 1.0 layout) when present; heads from those,
//                   else the released value for the released width (16 for 1408, 12 for 768),
//                   else width/16 (recorded in `notes`). NQ from config num_query_token, else
//                   query_tokens. EVA eps 1e-6, ln_vision 1e-5, Q-Former 1e-12; cross-attention
//                   on layers j % cross_attention_freq == 0 (default 2).
//   stop ids        2.x {eos, 92542}; 1.0 {eos, 103027, 103028}.
// Optional tensors: CLIP post_layernorm and embeddings.position_ids, video_mem_proj.*, the
// Q-Former's position_ids, every rotary inv_freq, and 1.0 LoRA when the config has none.
// A config that lacks a required key (hidden_size, num_hidden_layers, num_attention_heads,
// intermediate_size, vocab_size) or holds a wrong type is InvalidArgument naming the key.
StatusOr<ModelSpec> BuildModelSpec(const nlohmann::json& config, const nlohmann::json* clip_config,
                                   const TensorTable& tensors, std::optional<ModelArch> arch_override = {});

// Convenience: reads config.json, clip_vision_config.json (if present) and the shard headers.
// For 1.0, whose config.json names no tower head counts, a fixture-style folder's
// ../model_info.json (vision.num_heads, qformer.num_attention_heads) fills them in when the
// config lacks them (noted in spec.notes). Errors carry "checkpoint <dir>: " as context.
struct CheckpointDescription {
  ModelSpec spec;
  TensorTable tensors;
};
StatusOr<CheckpointDescription> DescribeCheckpoint(const std::filesystem::path& dir,
                                                   std::optional<ModelArch> arch_override = {});
// The same for a real-size layout file (ReadLayoutFile in tensor_table.h: every tensor's name,
// shape and dtype, no data), using the config and CLIP config stored in it. `tensors` is the
// layout's parameter table (without the 1.0 LoRA pattern; append LayoutFile::lora_pattern to
// model a release that still carries LoRA).
StatusOr<CheckpointDescription> DescribeLayout(const std::filesystem::path& layout_file,
                                               std::optional<ModelArch> arch_override = {});

// The coverage proof: every tensor belongs to exactly one block, nothing is missing.
struct CoverageReport {
  std::vector<std::string> unknown;          // in the checkpoint, claimed by no block
  std::vector<std::string> duplicated;       // appears more than once in the checkpoint
  std::vector<std::string> missing;          // required by a block, absent from the checkpoint
  std::vector<std::string> wrong_shape;      // "name: expected [a,b], found [c,d]"
  std::map<std::string, size_t> assignment;  // tensor name -> block index (present tensors)

  bool ok() const { return unknown.empty() && duplicated.empty() && missing.empty() && wrong_shape.empty(); }
  // One message listing every problem by name; OK when ok().
  Status ToStatus() const;
};
CoverageReport CheckCoverage(const ModelSpec& spec, const TensorTable& tensors);

// Whether the official chat() hands generate() the prompt as input ids (the repetition penalty
// then covers the whole prompt) rather than as embeddings (it then covers only the placeholder
// BOS that generate() seeds). Ids: text-only XComposer2-VL and 4KHD prompts (build_inputs).
bool PenaltyCoversPrompt(ModelArch arch, bool has_images);

// Model facts a tiny fixture checkpoint cannot state (its test towers' head counts), read from
// <model>/../model_info.json when that file exists, as the JSON a stage assignment's
// specOverrides carries; "" otherwise.
std::string FixtureSpecOverrides(const std::filesystem::path& model_dir);

}  // namespace xcpipe::checkpoint
