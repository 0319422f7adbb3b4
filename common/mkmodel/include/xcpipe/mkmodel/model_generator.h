// The model generator behind `xcpipe mkmodel`: writes a random-weight InternLM-XComposer model
// (1.0, 2.0-VL, 2.0-4KHD, 2.5) in the OFFICIAL layout of that version, so every part of the
// runtime (spec, planner, loader, forward pass, tokenizer, chat templates) can be exercised and
// benchmarked without downloading a 7B checkpoint.
//
// What a generated folder holds (the same files an official folder converted by `xcpipe convert`
// holds):
//   model-0000K-of-0000N.safetensors  the official state_dict() names and shapes, in state_dict
//                                     order, packed into shards of at most ModelPlan::shard_cap_bytes
//   model.safetensors.index.json      weight_map + metadata.total_size
//   config.json                       the official config class's fields (as in the fixtures);
//                                     1.0 also carries "eva_vit_g" and "qformer" objects (the tower
//                                     head counts, which no tensor shape shows; model_spec reads them)
//   clip_vision_config.json           2.x only: the CLIP tower (HF CLIPVisionConfig fields)
//   tokenizer.model                   trained on the spot by tokenizer::TrainTokenizer for the
//                                     version (vocab_size in config.json equals its size)
//
// Layout choices (see fixtures/README.md, "Architecture facts"):
//   2.x PLoRA ranks are the released ones whatever the width: 256 (alpha 256, scale 1) for every
//   module, except 4KHD wqkv: 8 (the class defaults r=8, alpha=16; model_spec derives scale 2.0
//   from the rank). HD versions carry plora_glb_GN / plora_sub_GN; CLIP keeps post_layernorm
//   (in state_dict(), unused); 2.5 carries video_mem_proj (OmniLive base layout, unused).
//   1.0: EVA ViT + Q-Former (cross-attention on even layers) + InternLM with LoRA on q,k,v,o and
//   ffn (up, down), plus the persistent buffers state_dict() holds: every layer's
//   rotary_emb.inv_freq (fp32, exact values) and the Q-Former's position_ids (int64 arange).
//
// Values: deterministic in (seed, tensor name) and independent of shard layout and write order.
// Each tensor has its own counter-based stream (splitmix64 of seed ^ FNV-1a(name), advanced by a
// counter); a "normal" value is the Irwin-Hall sum of four uniforms rescaled to unit variance,
// times the tensor's stddev. Only integer and IEEE +,-,*,/ are involved, so these bytes are the
// same on every platform and libm (inv_freq alone goes through std::pow). Matrices and embeddings: stddev 0.02; biases
// 0.01; norm weights 1.0; PLoRA/LoRA B matrices are random too (not zero as at training start), so the (P)LoRA paths
// change the output. bf16 is rounded to nearest even from the fp32 value.
//
// Thread-safety: PlanModel and FillTensor are pure and thread-safe. GenerateModel trains a
// tokenizer (TrainTokenizer is not reentrant: one GenerateModel at a time per process) and owns
// nothing after it returns. Failure: Status values, never exceptions. InvalidArgument for bad
// options; FailedPrecondition for an output folder that is not empty (without overwrite) or is
// not a folder; Internal when the written model fails its own check (a generator bug). A failed
// run leaves no config.json behind (it is written last), so a half-written folder is never
// taken for a model.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "xcpipe/base/status.h"
#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/checkpoint/tensor_table.h"

namespace xcpipe::mkmodel {

// Model sizes.
//   tiny   the fixtures' tiny dimensions (seconds to make, a few MB), with a 2048-piece trained
//          vocabulary instead of the real 92544 / 103168 rows.
//   small  a few hundred MB, for benchmarks: LLM hidden 1024, 8 layers, 8 heads of 128 (2.x: 4 KV
//          heads), FFN 2816, 8192 pieces; CLIP width 256, 4 layers, 4 heads at the version's real
//          tile size (490 VL, 336 4KHD, 560 2.5); 1.0: EVA width 256, 4 blocks, 4 heads at 224 px,
//          Q-Former width 256, 4 layers, 4 heads, 32 query tokens.
// kLarge: the 7B's layer size (hidden 4096, FFN 14336 for 2.x) with 8 layers, ~4 GB in bf16: a
// decode that is memory-bound on a data-centre GPU (bench/gpu_check.sh).
enum class Preset : uint8_t { kTiny, kSmall, kLarge };
std::string_view PresetName(Preset preset);  // "tiny", "small", "large"
std::optional<Preset> ParsePreset(std::string_view name);

// The tokenizer size a preset trains (TrainTokenizer gives exactly this many pieces).
int PresetVocabSize(Preset preset);

struct GeneratorOptions {
  checkpoint::ModelArch arch = checkpoint::ModelArch::kIxc2Vl;
  Preset preset = Preset::kTiny;
  uint64_t seed = 0;
  checkpoint::DType dtype = checkpoint::DType::kF32;  // kF32 or kBF16 (floating tensors)
  // GenerateModel only: replace the model files of a non-empty output folder (see GenerateModel).
  bool overwrite = false;
};

// How one tensor's values are made.
enum class InitKind : uint8_t {
  kNormal,   // zero-mean, `stddev` (see the header comment)
  kOnes,     // norm weights
  kArange,   // int64 0, 1, 2, ... (BERT position_ids)
  kInvFreq,  // rotary inv_freq[i] = rope_base^(-2i/d), d = 2 * numel, fp32
};

struct PlannedTensor {
  std::string name;
  checkpoint::DType dtype = checkpoint::DType::kF32;
  std::vector<int64_t> shape;
  InitKind init = InitKind::kNormal;
  float stddev = 0.0f;     // kNormal
  double rope_base = 0.0;  // kInvFreq
  int shard = 0;           // 0-based shard index

  int64_t numel() const;
  uint64_t bytes() const;
  bool is_buffer() const { return init == InitKind::kArange || init == InitKind::kInvFreq; }
};

// Everything GenerateModel will write, computed without I/O. Value type.
struct ModelPlan {
  GeneratorOptions options;
  int vocab_size = 0;
  nlohmann::json config;                      // config.json
  std::optional<nlohmann::json> clip_config;  // clip_vision_config.json (2.x)
  std::vector<PlannedTensor> tensors;         // state_dict order; shard indices non-decreasing
  int num_shards = 0;
  uint64_t shard_cap_bytes = 0;

  std::string ShardFileName(int shard) const;     // "model-00001-of-00004.safetensors"
  uint64_t total_bytes() const;                   // sum of tensor bytes (index metadata.total_size)
  uint64_t parameters() const;                    // elements of every tensor except buffers
  checkpoint::TensorTable ToTensorTable() const;  // names, dtypes, shapes, shard files
};

// The plan for `options` (options.overwrite is ignored). InvalidArgument for a dtype other than
// f32 / bf16. The plan is checked against model_spec (BuildModelSpec + CheckCoverage) before it
// is returned; a mismatch is Internal.
StatusOr<ModelPlan> PlanModel(const GeneratorOptions& options);

// Writes the values of `tensor` (seeded by `seed`) into `out`, which must be exactly
// tensor.bytes() long (InvalidArgument otherwise).
Status FillTensor(const PlannedTensor& tensor, uint64_t seed, std::span<char> out);

// One file written, reported as soon as it is in place.
struct WrittenFile {
  std::string file;    // name inside the output folder
  size_t tensors = 0;  // shards: tensors in it
  uint64_t bytes = 0;  // size of the file
  int shard = -1;      // 0-based shard index, or -1 for the other files
  int num_shards = 0;
};
using ProgressFn = std::function<void(const WrittenFile&)>;

struct GeneratedModel {
  ModelPlan plan;
  std::filesystem::path dir;
  int tokenizer_vocab = 0;
  uint64_t file_bytes = 0;     // every file written, headers and configs included
  checkpoint::ModelSpec spec;  // as DescribeCheckpoint reads it back
};

// Writes the model into `dir` (created with its parents when missing): tokenizer.model first,
// then the shards one at a time (one tensor in memory at a time, a reused buffer), the index,
// clip_vision_config.json, and config.json last. Then checks what was written:
// DescribeCheckpoint(dir) succeeds, CheckCoverage is ok, the spec's arch is the requested one and
// its vocabulary equals the tokenizer's; any failure is Internal naming the problem.
//
// A `dir` that exists and is not empty is refused (FailedPrecondition) unless options.overwrite;
// with it, the files a model folder is made of (model*.safetensors, the index, config.json,
// clip_vision_config.json, tokenizer.model) are removed first and anything else is left alone.
StatusOr<GeneratedModel> GenerateModel(const GeneratorOptions& options, const std::filesystem::path& dir,
                                       const ProgressFn& progress = {});

}  // namespace xcpipe::mkmodel
