#include "xcpipe/mkmodel/model_generator.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <system_error>
#include <utility>

#include "xcpipe/base/files.h"
#include "xcpipe/checkpoint/safetensors.h"
#include "xcpipe/tokenizer/chat_template.h"
#include "xcpipe/tokenizer/tokenizer.h"
#include "xcpipe/tokenizer/train.h"

namespace xcpipe::mkmodel {
namespace {

namespace fs = std::filesystem;
using checkpoint::DType;
using checkpoint::ModelArch;
using Json = nlohmann::json;

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian; so is this writer");

// Initial scales: small enough that activations stay O(1) through pre-norm blocks, large enough
// that logits differ visibly between tokens.
constexpr float kWeightStd = 0.02f;
constexpr float kBiasStd = 0.01f;

// Shard size caps: tiny models still get several shards (multi-shard loading is exercised);
// small ones get a handful of ~100 MB files.
constexpr uint64_t kTinyShardCapBytes = uint64_t{512} << 10;
constexpr uint64_t kSmallShardCapBytes = uint64_t{128} << 20;

constexpr int kTinyVocab = 2048;
constexpr int kSmallVocab = 8192;

// The HF config fields the fixtures' configs carry (transformers 4.33.2).
constexpr const char* kTransformersVersion = "4.33.2";
constexpr int64_t kIxc2RopeTheta = 1000000;
constexpr double kIxc1RopeBase = 10000.0;
constexpr int64_t kPatch = 14;
constexpr int64_t kBertPositions = 512;  // Qformer.bert.embeddings.position_ids [1, 512]
constexpr int64_t kVideoMemIn = 1536;    // 2.5 video_mem_proj.0: Linear(1536, H)
// PLoRA ranks as released: r = alpha = 256, except 4KHD wqkv (class defaults r=8, alpha=16).
constexpr int64_t kPloraRank = 256;
constexpr int64_t kPlora4khdWqkvRank = 8;

// Dimensions of one generated model.
struct Dims {
  // LLM.
  int64_t hidden = 0, layers = 0, heads = 0, kv_heads = 0, intermediate = 0;
  // 2.x CLIP tower. tile_px: the px one tower pass sees (sets the position table);
  // clip_image_size: clip_vision_config.json image_size (VL keeps CLIP-L/14-336's 336 there
  // and resizes the table to its own 490 px, as the release does).
  int64_t clip_width = 0, clip_layers = 0, clip_heads = 0, clip_mlp = 0, tile_px = 0, clip_image_size = 0;
  // 1.0 towers and LoRA.
  int64_t eva_width = 0, eva_depth = 0, eva_heads = 0, eva_mlp = 0, eva_image = 224;
  int64_t qf_width = 0, qf_layers = 0, qf_heads = 0, qf_ffn = 0, query_tokens = 0;
  int64_t lora_r = 0;
};

Dims PresetDims(ModelArch arch, Preset preset) {
  Dims d;
  if (preset == Preset::kTiny) {
    // The fixtures' tiny models (fixtures/README.md), one for one.
    switch (arch) {
      case ModelArch::kIxc2Vl:
        d.hidden = 64, d.layers = 3, d.heads = 4, d.kv_heads = 2, d.intermediate = 128;
        d.clip_width = 32, d.clip_layers = 2, d.clip_heads = 2, d.clip_mlp = 128;
        d.tile_px = 490, d.clip_image_size = 336;
        break;
      case ModelArch::kIxc2_4khd:
        d.hidden = 16, d.layers = 3, d.heads = 2, d.kv_heads = 1, d.intermediate = 48;
        d.clip_width = 16, d.clip_layers = 2, d.clip_heads = 2, d.clip_mlp = 64;
        d.tile_px = d.clip_image_size = 336;
        break;
      case ModelArch::kIxc2_5:
        d.hidden = 16, d.layers = 3, d.heads = 2, d.kv_heads = 2, d.intermediate = 32;
        d.clip_width = 16, d.clip_layers = 2, d.clip_heads = 2, d.clip_mlp = 64;
        d.tile_px = d.clip_image_size = 560;
        break;
      case ModelArch::kIxc1:
        d.hidden = 32, d.layers = 3, d.heads = 2, d.kv_heads = 2, d.intermediate = 96;
        d.eva_width = 32, d.eva_depth = 2, d.eva_heads = 2, d.eva_mlp = 139;  // mlp_ratio 4.3637
        d.qf_width = 32, d.qf_layers = 2, d.qf_heads = 2, d.qf_ffn = 64, d.query_tokens = 8;
        d.lora_r = 4;
        break;
    }
    return d;
  }
  // small: one LLM size for every version (the 7B's proportions: head_dim 128, GQA 2:1 for 2.x).
  d.hidden = 1024, d.layers = 8, d.heads = 8, d.intermediate = 2816;
  d.kv_heads = arch == ModelArch::kIxc1 ? 8 : 4;  // 1.0 has no GQA
  if (preset == Preset::kLarge) {
    // The released 7B's decoder layer (2.x: 32 heads over 8 KV heads, FFN 14336; 1.0: InternLM-7B's
    // 32 heads, FFN 11008), 8 of them; the towers stay small.
    d.hidden = 4096, d.layers = 8, d.heads = 32;
    d.kv_heads = arch == ModelArch::kIxc1 ? 32 : 8;
    d.intermediate = arch == ModelArch::kIxc1 ? 11008 : 14336;
  }
  d.clip_width = 256, d.clip_layers = 4, d.clip_heads = 4, d.clip_mlp = 1024;
  switch (arch) {
    case ModelArch::kIxc2Vl:
      d.tile_px = 490, d.clip_image_size = 336;
      break;
    case ModelArch::kIxc2_4khd:
      d.tile_px = d.clip_image_size = 336;
      break;
    case ModelArch::kIxc2_5:
      d.tile_px = d.clip_image_size = 560;
      break;
    case ModelArch::kIxc1:
      d.eva_width = 256, d.eva_depth = 4, d.eva_heads = 4, d.eva_mlp = 1024;
      d.qf_width = 256, d.qf_layers = 4, d.qf_heads = 4, d.qf_ffn = 1024, d.query_tokens = 32;
      d.lora_r = 16;
      break;
  }
  return d;
}

std::string TorchDTypeName(DType dtype) { return dtype == DType::kBF16 ? "bfloat16" : "float32"; }

// ---------------------------------------------------------------------------------------------
// config.json / clip_vision_config.json, with the field sets of the fixtures' (official) configs.

Json Ixc2Config(ModelArch arch, const Dims& d, int vocab, DType dtype) {
  const bool vl = arch == ModelArch::kIxc2Vl;
  Json c = Json::object();
  c["architectures"] = Json::array({vl ? "InternLMXComposer2ForCausalLM" : "InternLM2ForCausalLM"});
  c["attn_implementation"] = "eager";
  c["auto_map"] = {
      {"AutoConfig", "configuration_internlm_xcomposer2.InternLMXcomposer2Config"},
      {"AutoModel", "modeling_internlm_xcomposer2.InternLMXComposer2ForCausalLM"},
      {"AutoModelForCausalLM", "modeling_internlm_xcomposer2.InternLMXComposer2ForCausalLM"},
  };
  c["bias"] = false;
  c["bos_token_id"] = 1;
  c["eos_token_id"] = 2;
  c["hidden_act"] = "silu";
  c["hidden_size"] = d.hidden;
  if (vl) c["img_size"] = d.tile_px;
  c["initializer_range"] = 0.02;
  c["intermediate_size"] = d.intermediate;
  c["max_length"] = vl ? 4096 : 16384;
  c["max_position_embeddings"] = 32768;
  c["model_type"] = "internlm2";
  c["num_attention_heads"] = d.heads;
  c["num_hidden_layers"] = d.layers;
  c["num_key_value_heads"] = d.kv_heads;
  c["pad_token_id"] = 2;
  c["rms_norm_eps"] = 1e-05;
  c["rope_scaling"] = nullptr;
  c["rope_theta"] = kIxc2RopeTheta;
  c["tie_word_embeddings"] = false;
  c["torch_dtype"] = TorchDTypeName(dtype);
  c["transformers_version"] = kTransformersVersion;
  c["use_cache"] = false;
  c["vocab_size"] = vocab;
  return c;
}

Json ClipConfig(const Dims& d, DType dtype) {
  Json c = Json::object();
  c["architectures"] = Json::array({"CLIPVisionModel"});
  c["attention_dropout"] = 0.0;
  c["hidden_act"] = "quick_gelu";
  c["hidden_size"] = d.clip_width;
  c["image_size"] = d.clip_image_size;
  c["initializer_factor"] = 1.0;
  c["initializer_range"] = 0.02;
  c["intermediate_size"] = d.clip_mlp;
  c["layer_norm_eps"] = 1e-05;
  c["model_type"] = "clip_vision_model";
  c["num_attention_heads"] = d.clip_heads;
  c["num_channels"] = 3;
  c["num_hidden_layers"] = d.clip_layers;
  c["patch_size"] = kPatch;
  c["projection_dim"] = d.clip_width;
  c["torch_dtype"] = TorchDTypeName(dtype);
  c["transformers_version"] = kTransformersVersion;
  return c;
}

Json Ixc1Config(const Dims& d, int vocab, DType dtype) {
  Json c = Json::object();
  c["architectures"] = Json::array({"InternLMXComposerForCausalLM"});
  c["auto_map"] = {
      {"AutoConfig", "configuration_InternLM_XComposer.InternLMXComposerConfig"},
      {"AutoModel", "modeling_InternLM_XComposer.InternLMXComposerForCausalLM"},
      {"AutoModelForCausalLM", "modeling_InternLM_XComposer.InternLMXComposerForCausalLM"},
  };
  c["bias"] = true;
  c["bos_token_id"] = 1;
  c["device"] = "cpu";
  c["eos_token_id"] = 2;
  c["hidden_act"] = "silu";
  c["hidden_size"] = d.hidden;
  c["initializer_range"] = 0.02;
  c["intermediate_size"] = d.intermediate;
  c["intern_converted_llm"] = true;
  c["internlm_lora"] = {
      {"learn_param", Json::array({"q", "k", "v", "o", "ffn"})},
      {"lora_alpha", d.lora_r},
      {"lora_dropout", 0.05},
      {"lora_r", d.lora_r},
  };
  c["kqvo_bias"] = true;
  c["max_length"] = 768;
  c["max_position_embeddings"] = 2048;
  c["model_type"] = "InternLMXComposer";
  c["num_attention_heads"] = d.heads;
  c["num_hidden_layers"] = d.layers;
  c["num_quant"] = 32;
  c["num_query_token"] = d.query_tokens;
  c["pad_token_id"] = -1;
  c["rms_norm_eps"] = 1e-06;
  c["tie_word_embeddings"] = false;
  c["torch_dtype"] = TorchDTypeName(dtype);
  c["transformers_version"] = kTransformersVersion;
  c["use_cache"] = true;
  c["vocab_size"] = vocab;
  // Not in the official 1.0 config class: the EVA / Q-Former sizes, above all their head counts,
  // which no tensor shape shows. model_spec reads these objects (the same keys as the real-size
  // layout's config, fixtures/real_layouts/ixc1_7b.layout.json).
  c["eva_vit_g"] = {
      {"img_size", d.eva_image},  {"patch_size", kPatch},    {"embed_dim", d.eva_width}, {"depth", d.eva_depth},
      {"num_heads", d.eva_heads}, {"mlp_hidden", d.eva_mlp}, {"layer_norm_eps", 1e-06},
  };
  c["qformer"] = {
      {"hidden_size", d.qf_width},     {"num_hidden_layers", d.qf_layers}, {"num_attention_heads", d.qf_heads},
      {"intermediate_size", d.qf_ffn}, {"cross_attention_freq", 2},        {"encoder_width", d.eva_width},
      {"layer_norm_eps", 1e-12},
  };
  return c;
}

// ---------------------------------------------------------------------------------------------
// Tensor lists in official state_dict() order.

class TensorList {
 public:
  explicit TensorList(DType dtype) : dtype_(dtype) {}

  void Normal(std::string name, std::vector<int64_t> shape, float stddev = kWeightStd) {
    Push(std::move(name), dtype_, std::move(shape), InitKind::kNormal, stddev);
  }
  void Bias(std::string name, int64_t width) { Normal(std::move(name), {width}, kBiasStd); }
  void Ones(std::string name, int64_t width) { Push(std::move(name), dtype_, {width}, InitKind::kOnes, 0.0f); }
  void Linear(const std::string& name, int64_t out, int64_t in, bool bias) {
    Normal(name + ".weight", {out, in});
    if (bias) Bias(name + ".bias", out);
  }
  void LayerNorm(const std::string& name, int64_t width) {
    Ones(name + ".weight", width);
    Bias(name + ".bias", width);
  }
  void Arange(std::string name, std::vector<int64_t> shape) {
    Push(std::move(name), DType::kI64, std::move(shape), InitKind::kArange, 0.0f);
  }
  // Buffers stay fp32 in a bf16 model: a rounded inv_freq would be a different rotation.
  void InvFreq(std::string name, int64_t head_dim, double base) {
    Push(std::move(name), DType::kF32, {head_dim / 2}, InitKind::kInvFreq, 0.0f);
    tensors_.back().rope_base = base;
  }

  std::vector<PlannedTensor> Take() { return std::move(tensors_); }

 private:
  void Push(std::string name, DType dtype, std::vector<int64_t> shape, InitKind init, float stddev) {
    PlannedTensor t;
    t.name = std::move(name);
    t.dtype = dtype;
    t.shape = std::move(shape);
    t.init = init;
    t.stddev = stddev;
    tensors_.push_back(std::move(t));
  }

  DType dtype_;
  std::vector<PlannedTensor> tensors_;
};

// 2.x: InternLMXComposer2ForCausalLM.state_dict() order (fixtures/real_layouts).
std::vector<PlannedTensor> Ixc2Tensors(ModelArch arch, const Dims& d, int64_t vocab, DType dtype) {
  TensorList t(dtype);
  const bool hd = arch != ModelArch::kIxc2Vl;
  const int64_t h = d.hidden, f = d.intermediate, c = d.clip_width;
  const int64_t head_dim = h / d.heads;
  if (hd) {
    t.Normal("plora_glb_GN", {1, 1, 4 * c});
    t.Normal("plora_sub_GN", {1, 1, 1, 4 * c});
  }
  t.Normal("model.tok_embeddings.weight", {vocab, h});
  auto plora = [&](const std::string& path, int64_t out, int64_t in, int64_t rank) {
    t.Normal(path + ".weight", {out, in});
    t.Normal(path + ".Plora_A.weight", {rank, in});
    t.Normal(path + ".Plora_B.weight", {out, rank});
  };
  for (int64_t i = 0; i < d.layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const int64_t wqkv_rank = arch == ModelArch::kIxc2_4khd ? kPlora4khdWqkvRank : kPloraRank;
    plora(p + "attention.wqkv", (d.heads + 2 * d.kv_heads) * head_dim, h, wqkv_rank);
    plora(p + "attention.wo", h, d.heads * head_dim, kPloraRank);
    plora(p + "feed_forward.w1", f, h, kPloraRank);
    plora(p + "feed_forward.w3", f, h, kPloraRank);
    plora(p + "feed_forward.w2", h, f, kPloraRank);
    t.Ones(p + "attention_norm.weight", h);
    t.Ones(p + "ffn_norm.weight", h);
  }
  t.Ones("model.norm.weight", h);
  t.Normal("output.weight", {vocab, h});

  const std::string vit = "vit.vision_tower.vision_model.";
  const int64_t grid = d.tile_px / kPatch;
  t.Normal(vit + "embeddings.class_embedding", {c});
  t.Normal(vit + "embeddings.patch_embedding.weight", {c, 3, kPatch, kPatch});
  t.Normal(vit + "embeddings.position_embedding.weight", {grid * grid + 1, c});
  t.LayerNorm(vit + "pre_layrnorm", c);
  for (int64_t j = 0; j < d.clip_layers; ++j) {
    const std::string p = vit + "encoder.layers." + std::to_string(j) + ".";
    for (const char* proj : {"k_proj", "v_proj", "q_proj", "out_proj"}) t.Linear(p + "self_attn." + proj, c, c, true);
    t.LayerNorm(p + "layer_norm1", c);
    t.Linear(p + "mlp.fc1", d.clip_mlp, c, true);
    t.Linear(p + "mlp.fc2", c, d.clip_mlp, true);
    t.LayerNorm(p + "layer_norm2", c);
  }
  t.LayerNorm(vit + "post_layernorm", c);
  t.Linear("vision_proj.0", h, hd ? 4 * c : c, true);
  t.Linear("vision_proj.2", h, h, true);
  if (arch == ModelArch::kIxc2_5) {
    t.Linear("video_mem_proj.0", h, kVideoMemIn, true);
    t.Linear("video_mem_proj.2", h, h, true);
  }
  return t.Take();
}

// 1.0: InternLMXComposerForCausalLM.state_dict() order (fixtures/real_layouts/ixc1_7b), LoRA
// modules (LoRALinear: weight, bias, lora_A, lora_B) on q, k, v, o and ffn (up, down).
std::vector<PlannedTensor> Ixc1Tensors(const Dims& d, int64_t vocab, DType dtype) {
  TensorList t(dtype);
  const int64_t h = d.hidden, f = d.intermediate, dv = d.eva_width, hq = d.qf_width;
  const int64_t head_dim = h / d.heads;
  const int64_t grid = d.eva_image / kPatch;
  t.Normal("query_tokens", {1, d.query_tokens, hq});
  t.Normal("flag_image_start", {1, 1, h});
  t.Normal("flag_image_end", {1, 1, h});
  t.Normal("visual_encoder.cls_token", {1, 1, dv});
  t.Normal("visual_encoder.pos_embed", {1, grid * grid + 1, dv});
  t.Normal("visual_encoder.patch_embed.proj.weight", {dv, 3, kPatch, kPatch});
  t.Bias("visual_encoder.patch_embed.proj.bias", dv);
  for (int64_t i = 0; i < d.eva_depth; ++i) {
    const std::string p = "visual_encoder.blocks." + std::to_string(i) + ".";
    t.LayerNorm(p + "norm1", dv);
    t.Bias(p + "attn.q_bias", dv);
    t.Bias(p + "attn.v_bias", dv);
    t.Normal(p + "attn.qkv.weight", {3 * dv, dv});
    t.Linear(p + "attn.proj", dv, dv, true);
    t.LayerNorm(p + "norm2", dv);
    t.Linear(p + "mlp.fc1", d.eva_mlp, dv, true);
    t.Linear(p + "mlp.fc2", dv, d.eva_mlp, true);
  }
  t.LayerNorm("ln_vision", dv);
  t.Arange("Qformer.bert.embeddings.position_ids", {1, kBertPositions});
  t.LayerNorm("Qformer.bert.embeddings.LayerNorm", hq);
  for (int64_t j = 0; j < d.qf_layers; ++j) {
    const std::string p = "Qformer.bert.encoder.layer." + std::to_string(j) + ".";
    t.Linear(p + "attention.self.query", hq, hq, true);
    t.Linear(p + "attention.self.key", hq, hq, true);
    t.Linear(p + "attention.self.value", hq, hq, true);
    t.Linear(p + "attention.output.dense", hq, hq, true);
    t.LayerNorm(p + "attention.output.LayerNorm", hq);
    if (j % 2 == 0) {  // cross_attention_freq 2
      t.Linear(p + "crossattention.self.query", hq, hq, true);
      t.Linear(p + "crossattention.self.key", hq, dv, true);
      t.Linear(p + "crossattention.self.value", hq, dv, true);
      t.Linear(p + "crossattention.output.dense", hq, hq, true);
      t.LayerNorm(p + "crossattention.output.LayerNorm", hq);
    }
    t.Linear(p + "intermediate_query.dense", d.qf_ffn, hq, true);
    t.Linear(p + "output_query.dense", hq, d.qf_ffn, true);
    t.LayerNorm(p + "output_query.LayerNorm", hq);
  }
  t.Normal("internlm_model.model.embed_tokens.weight", {vocab, h});
  auto proj = [&](const std::string& path, int64_t out, int64_t in, bool bias, bool lora) {
    t.Linear(path, out, in, bias);
    if (lora) {
      t.Normal(path + ".lora_A.weight", {d.lora_r, in});
      t.Normal(path + ".lora_B.weight", {out, d.lora_r});
    }
  };
  for (int64_t i = 0; i < d.layers; ++i) {
    const std::string p = "internlm_model.model.layers." + std::to_string(i) + ".";
    for (const char* name : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
      proj(p + "self_attn." + name, h, h, /*bias=*/true, /*lora=*/true);
    }
    t.InvFreq(p + "self_attn.rotary_emb.inv_freq", head_dim, kIxc1RopeBase);
    proj(p + "mlp.gate_proj", f, h, false, false);
    proj(p + "mlp.down_proj", h, f, false, true);
    proj(p + "mlp.up_proj", f, h, false, true);
    t.Ones(p + "input_layernorm.weight", h);
    t.Ones(p + "post_attention_layernorm.weight", h);
  }
  t.Ones("internlm_model.model.norm.weight", h);
  t.Normal("internlm_model.lm_head.weight", {vocab, h});
  t.Linear("internlm_proj", h, hq, true);
  return t.Take();
}

// Packs tensors into shards in order: a new shard starts when the next tensor would push the
// current one over the cap (a tensor larger than the cap gets a shard of its own).
int AssignShards(std::vector<PlannedTensor>* tensors, uint64_t cap_bytes) {
  int shard = 0;
  uint64_t in_shard = 0;
  bool empty = true;
  for (auto& t : *tensors) {
    if (!empty && in_shard + t.bytes() > cap_bytes) {
      ++shard;
      in_shard = 0;
    }
    t.shard = shard;
    in_shard += t.bytes();
    empty = false;
  }
  return empty ? 0 : shard + 1;
}

// ---------------------------------------------------------------------------------------------
// Values.

uint64_t Fnv1a64(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char ch : s) {
    h ^= ch;
    h *= 0x100000001b3ULL;
  }
  return h;
}

// The splitmix64 finaliser: output number `counter` of the splitmix64 sequence started at `key`.
uint64_t SplitMix64(uint64_t key, uint64_t counter) {
  uint64_t z = key + (counter + 1) * 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Uniform in [0, 1) from the top 53 bits.
double Unit(uint64_t bits) { return static_cast<double>(bits >> 11) * 0x1.0p-53; }

uint16_t Bf16FromFloat(float value) {
  uint32_t bits = std::bit_cast<uint32_t>(value);
  if ((bits & 0x7fffffffU) > 0x7f800000U) return static_cast<uint16_t>((bits >> 16) | 0x40);  // NaN stays NaN
  bits += 0x7fffU + ((bits >> 16) & 1U);  // round to nearest, ties to even
  return static_cast<uint16_t>(bits >> 16);
}

float FloatValue(const PlannedTensor& t, uint64_t key, int64_t i) {
  switch (t.init) {
    case InitKind::kNormal: {
      // Irwin-Hall: the sum of four U(0,1) has mean 2 and variance 1/3.
      const uint64_t c = 4 * static_cast<uint64_t>(i);
      const double sum = Unit(SplitMix64(key, c)) + Unit(SplitMix64(key, c + 1)) + Unit(SplitMix64(key, c + 2)) +
                         Unit(SplitMix64(key, c + 3));
      return static_cast<float>((sum - 2.0) * 1.7320508075688772 * static_cast<double>(t.stddev));
    }
    case InitKind::kOnes:
      return 1.0f;
    case InitKind::kInvFreq: {
      // 1 / base^(2i/d), d = 2 * numel (as the official code, then rounded to fp32).
      const double d = 2.0 * static_cast<double>(t.numel());
      return static_cast<float>(1.0 / std::pow(t.rope_base, (2.0 * static_cast<double>(i)) / d));
    }
    case InitKind::kArange:
      return static_cast<float>(i);
  }
  return 0.0f;
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? "," : "") + std::to_string(shape[i]);
  return out + "]";
}

// ---------------------------------------------------------------------------------------------
// The output folder.

bool IsModelFileName(const std::string& name) {
  if (name == "config.json" || name == "clip_vision_config.json" || name == "tokenizer.model" ||
      name == checkpoint::kSafetensorsIndexFileName || name == checkpoint::kSingleSafetensorsFileName) {
    return true;
  }
  // model-0000K-of-0000N.safetensors
  const std::string_view prefix = "model-", suffix = ".safetensors";
  return name.size() > prefix.size() + suffix.size() && name.compare(0, prefix.size(), prefix) == 0 &&
         name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0 &&
         name.find("-of-") != std::string::npos;
}

Status PrepareOutputDir(const fs::path& dir, bool overwrite) {
  std::error_code ec;
  const auto status = fs::status(dir, ec);
  if (fs::exists(status)) {
    if (!fs::is_directory(status)) {
      return FailedPreconditionError("output " + dir.string() + " exists and is not a folder");
    }
    std::vector<std::string> entries;
    for (const auto& entry : fs::directory_iterator(dir, ec)) entries.push_back(entry.path().filename().string());
    if (ec) return FailedPreconditionError("cannot list output folder " + dir.string() + ": " + ec.message());
    std::sort(entries.begin(), entries.end());
    if (!entries.empty() && !overwrite) {
      std::string some;
      for (size_t i = 0; i < std::min<size_t>(entries.size(), 3); ++i) some += (i ? ", " : "") + entries[i];
      if (entries.size() > 3) some += ", ...";
      return FailedPreconditionError("output folder " + dir.string() + " is not empty (" +
                                     std::to_string(entries.size()) + " entries: " + some +
                                     "); choose an empty or new folder, or overwrite (xcpipe mkmodel --force) to "
                                     "replace the model files in it");
    }
    for (const auto& name : entries) {
      const fs::path file = dir / name;
      if (!IsModelFileName(name) || !fs::is_regular_file(fs::symlink_status(file, ec))) continue;
      if (!fs::remove(file, ec) && ec) {
        return FailedPreconditionError("cannot remove " + file.string() + " before overwriting: " + ec.message());
      }
    }
    return OkStatus();
  }
  if (!fs::create_directories(dir, ec) && ec) {
    return FailedPreconditionError("cannot create output folder " + dir.string() + ": " + ec.message());
  }
  return OkStatus();
}

uint64_t FileSize(const fs::path& file) {
  std::error_code ec;
  const auto size = fs::file_size(file, ec);
  return ec ? 0 : static_cast<uint64_t>(size);
}

std::string JsonText(const Json& j) { return j.dump(2) + "\n"; }

// The plan checked against the model spec the runtime builds (names, shapes, arch, vocab).
Status CheckAgainstSpec(const checkpoint::ModelSpec& spec, const checkpoint::TensorTable& table, ModelArch arch,
                        int vocab) {
  if (spec.arch != arch) {
    return InternalError("the model spec reads the written tensors as " + std::string(checkpoint::ArchName(spec.arch)) +
                         ", not " + std::string(checkpoint::ArchName(arch)));
  }
  if (spec.llm.vocab != vocab) {
    return InternalError("the model spec reads vocab_size " + std::to_string(spec.llm.vocab) + ", the tokenizer has " +
                         std::to_string(vocab) + " pieces");
  }
  const auto report = checkpoint::CheckCoverage(spec, table);
  if (!report.ok()) return InternalError(report.ToStatus().message());
  return OkStatus();
}

}  // namespace

std::string_view PresetName(Preset preset) {
  return preset == Preset::kLarge ? "large" : preset == Preset::kSmall ? "small" : "tiny";
}

std::optional<Preset> ParsePreset(std::string_view name) {
  if (name == "tiny") return Preset::kTiny;
  if (name == "small") return Preset::kSmall;
  if (name == "large") return Preset::kLarge;
  return std::nullopt;
}

int PresetVocabSize(Preset preset) { return preset == Preset::kTiny ? kTinyVocab : kSmallVocab; }

int64_t PlannedTensor::numel() const {
  int64_t n = 1;
  for (int64_t dim : shape) n *= dim;
  return n;
}

uint64_t PlannedTensor::bytes() const { return static_cast<uint64_t>(numel()) * checkpoint::DTypeBytes(dtype); }

std::string ModelPlan::ShardFileName(int shard) const {
  char name[64];
  std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", shard + 1, num_shards);
  return name;
}

uint64_t ModelPlan::total_bytes() const {
  uint64_t total = 0;
  for (const auto& t : tensors) total += t.bytes();
  return total;
}

uint64_t ModelPlan::parameters() const {
  uint64_t total = 0;
  for (const auto& t : tensors) {
    if (!t.is_buffer()) total += static_cast<uint64_t>(t.numel());
  }
  return total;
}

checkpoint::TensorTable ModelPlan::ToTensorTable() const {
  checkpoint::TensorTable table;
  table.source = "mkmodel plan (" + std::string(checkpoint::ArchName(options.arch)) + ", " +
                 std::string(PresetName(options.preset)) + ")";
  for (const auto& t : tensors) table.tensors.push_back({t.name, t.dtype, t.shape, ShardFileName(t.shard)});
  return table;
}

StatusOr<ModelPlan> PlanModel(const GeneratorOptions& options) {
  if (options.dtype != DType::kF32 && options.dtype != DType::kBF16) {
    return InvalidArgumentError("mkmodel writes f32 or bf16 weights, not " +
                                std::string(checkpoint::DTypeName(options.dtype)));
  }
  ModelPlan plan;
  plan.options = options;
  plan.vocab_size = PresetVocabSize(options.preset);
  const Dims d = PresetDims(options.arch, options.preset);
  if (options.arch == ModelArch::kIxc1) {
    plan.config = Ixc1Config(d, plan.vocab_size, options.dtype);
    plan.tensors = Ixc1Tensors(d, plan.vocab_size, options.dtype);
  } else {
    plan.config = Ixc2Config(options.arch, d, plan.vocab_size, options.dtype);
    plan.clip_config = ClipConfig(d, options.dtype);
    plan.tensors = Ixc2Tensors(options.arch, d, plan.vocab_size, options.dtype);
  }
  plan.shard_cap_bytes = options.preset == Preset::kTiny ? kTinyShardCapBytes : kSmallShardCapBytes;
  plan.num_shards = AssignShards(&plan.tensors, plan.shard_cap_bytes);

  // The runtime must read the plan back as the requested model: check now, before any write.
  const auto table = plan.ToTensorTable();
  auto spec = checkpoint::BuildModelSpec(plan.config, plan.clip_config ? &*plan.clip_config : nullptr, table);
  if (!spec.ok()) return InternalError("mkmodel plan does not describe a model: " + spec.status().message());
  if (auto s = CheckAgainstSpec(*spec, table, options.arch, plan.vocab_size); !s.ok()) {
    return s.WithContext("mkmodel plan");
  }
  return plan;
}

Status FillTensor(const PlannedTensor& tensor, uint64_t seed, std::span<char> out) {
  if (out.size() != tensor.bytes()) {
    return InvalidArgumentError(tensor.name + ": " + std::to_string(out.size()) + " bytes given for " +
                                ShapeText(tensor.shape) + " " + std::string(checkpoint::DTypeName(tensor.dtype)) +
                                " (" + std::to_string(tensor.bytes()) + " bytes)");
  }
  const uint64_t key = SplitMix64(seed ^ Fnv1a64(tensor.name), 0);
  const int64_t n = tensor.numel();
  char* p = out.data();
  switch (tensor.dtype) {
    case DType::kF32:
      for (int64_t i = 0; i < n; ++i) {
        const float v = FloatValue(tensor, key, i);
        std::memcpy(p + 4 * i, &v, 4);
      }
      return OkStatus();
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t v = Bf16FromFloat(FloatValue(tensor, key, i));
        std::memcpy(p + 2 * i, &v, 2);
      }
      return OkStatus();
    case DType::kI64:
      if (tensor.init != InitKind::kArange) break;
      for (int64_t i = 0; i < n; ++i) std::memcpy(p + 8 * i, &i, 8);
      return OkStatus();
    default:
      break;
  }
  return InvalidArgumentError(tensor.name + ": cannot fill a " + std::string(checkpoint::DTypeName(tensor.dtype)) +
                              " tensor");
}

StatusOr<GeneratedModel> GenerateModel(const GeneratorOptions& options, const fs::path& dir,
                                       const ProgressFn& progress) {
  XCPIPE_ASSIGN_OR_RETURN(ModelPlan plan, PlanModel(options));
  XCPIPE_RETURN_IF_ERROR(PrepareOutputDir(dir, options.overwrite));
  GeneratedModel result;
  result.dir = dir;
  auto report = [&](const WrittenFile& file) {
    result.file_bytes += file.bytes;
    if (progress) progress(file);
  };
  const std::string context = "mkmodel " + dir.string();

  // 1. The tokenizer, trained for the version; its size is the config's vocab_size.
  const auto version = tokenizer::ParseChatVersion(checkpoint::ArchName(options.arch));
  if (!version) return InternalError("no chat template for " + std::string(checkpoint::ArchName(options.arch)));
  tokenizer::TrainTokenizerOptions train;
  train.version = *version;
  train.vocab_size = plan.vocab_size;
  train.seed = static_cast<uint32_t>(options.seed ^ (options.seed >> 32));
  auto model_bytes = tokenizer::TrainTokenizer(train);
  if (!model_bytes.ok()) return model_bytes.status().WithContext(context + ": training the tokenizer");
  {
    auto tok = tokenizer::Tokenizer::LoadFromBytes(*model_bytes, "trained tokenizer");
    if (!tok.ok()) return InternalError(context + ": the trained tokenizer does not load: " + tok.status().message());
    if ((*tok)->vocab_size() != plan.vocab_size) {
      return InternalError(context + ": the trained tokenizer has " + std::to_string((*tok)->vocab_size()) +
                           " pieces, " + std::to_string(plan.vocab_size) + " were asked for");
    }
    if (auto ids = tokenizer::LookupChatSpecialIds(**tok, *version); !ids.ok()) {
      return InternalError(context + ": the trained tokenizer lacks a template piece: " + ids.status().message());
    }
  }
  result.tokenizer_vocab = plan.vocab_size;
  XCPIPE_RETURN_IF_ERROR(WriteFileAtomically(dir / "tokenizer.model", *model_bytes).WithContext(context));
  report({"tokenizer.model", 0, model_bytes->size(), -1, plan.num_shards});

  // 2. The shards, one tensor in memory at a time (one buffer, grown to the largest tensor).
  std::vector<char> buffer;
  std::map<std::string, std::string> weight_map;
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  size_t next = 0;
  for (int shard = 0; shard < plan.num_shards; ++shard) {
    const std::string name = plan.ShardFileName(shard);
    size_t end = next;
    std::vector<checkpoint::SafetensorsFileWriter::Entry> entries;
    while (end < plan.tensors.size() && plan.tensors[end].shard == shard) {
      const auto& t = plan.tensors[end++];
      entries.push_back({t.name, t.dtype, t.shape});
      weight_map[t.name] = name;
    }
    auto writer = checkpoint::SafetensorsFileWriter::Create(dir / name, std::move(entries), metadata);
    if (!writer.ok()) return writer.status().WithContext(context);
    for (size_t i = next; i < end; ++i) {
      const auto& t = plan.tensors[i];
      if (buffer.size() < t.bytes()) buffer.resize(t.bytes());
      const std::span<char> bytes(buffer.data(), t.bytes());
      XCPIPE_RETURN_IF_ERROR(FillTensor(t, options.seed, bytes));
      XCPIPE_RETURN_IF_ERROR((*writer)->Append(std::string_view(bytes.data(), bytes.size())).WithContext(context));
    }
    XCPIPE_RETURN_IF_ERROR((*writer)->Finish().WithContext(context));
    report({name, end - next, FileSize(dir / name), shard, plan.num_shards});
    next = end;
  }

  // 3. Index and configs; config.json last, so only a complete folder reads as a model.
  XCPIPE_RETURN_IF_ERROR(checkpoint::WriteSafetensorsIndex(dir, weight_map, plan.total_bytes()).WithContext(context));
  report({checkpoint::kSafetensorsIndexFileName, 0, FileSize(dir / checkpoint::kSafetensorsIndexFileName), -1,
          plan.num_shards});
  if (plan.clip_config) {
    const std::string text = JsonText(*plan.clip_config);
    XCPIPE_RETURN_IF_ERROR(WriteFileAtomically(dir / "clip_vision_config.json", text).WithContext(context));
    report({"clip_vision_config.json", 0, text.size(), -1, plan.num_shards});
  }
  const std::string config_text = JsonText(plan.config);
  XCPIPE_RETURN_IF_ERROR(WriteFileAtomically(dir / "config.json", config_text).WithContext(context));
  report({"config.json", 0, config_text.size(), -1, plan.num_shards});

  // 4. Read it back the way the runtime will.
  auto described = checkpoint::DescribeCheckpoint(dir);
  if (!described.ok()) {
    return InternalError(context + ": the written model cannot be described: " + described.status().message());
  }
  if (auto s = CheckAgainstSpec(described->spec, described->tensors, options.arch, result.tokenizer_vocab); !s.ok()) {
    return InternalError(context + ": the written model fails its check: " + s.message());
  }
  result.spec = std::move(described->spec);
  result.plan = std::move(plan);
  return result;
}

}  // namespace xcpipe::mkmodel
