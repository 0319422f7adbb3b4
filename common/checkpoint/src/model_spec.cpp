#include "xcpipe/checkpoint/model_spec.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <unordered_map>
#include <utility>

#include <nlohmann/json.hpp>

#include "xcpipe/base/files.h"

namespace xcpipe::checkpoint {

namespace {

using Json = nlohmann::json;

// Token ids of the 2.x and 1.0 tokenizers that end a turn (see fixtures/README.md).
constexpr int64_t kIxc2ImEndId = 92542;  // [UNUSED_TOKEN_145]
constexpr int64_t kIxc1EohId = 103027;   // <TOKENS_UNUSED_0>, end of human
constexpr int64_t kIxc1EoaId = 103028;   // <TOKENS_UNUSED_1>, end of assistant

// The released CLIP ViT-L/14 tower the 2.x code hard-codes.
constexpr int64_t kClipWidth = 1024;
constexpr int64_t kClipLayers = 24;
constexpr int64_t kClipHeads = 16;
constexpr int64_t kClipMlp = 4096;
constexpr int64_t kClipPatch = 14;
constexpr double kClipEps = 1e-5;
// Released EVA ViT-g / Q-Former widths and their head counts (1.0).
constexpr int64_t kEvaWidth = 1408;
constexpr int64_t kEvaHeads = 16;
constexpr int64_t kQformerWidth = 768;
constexpr int64_t kQformerHeads = 12;
// The 2.5 video memory projector's input width (Linear(1536, H)).
constexpr int64_t kVideoMemIn = 1536;

constexpr const char* kVit = "vit.vision_tower.vision_model.";

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ",";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

bool StartsWith(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

// Largest i + 1 over names "<prefix><i>.<rest>", 0 when none.
int64_t CountIndexed(const TensorTable& table, std::string_view prefix) {
  int64_t count = 0;
  for (const auto& t : table.tensors) {
    std::string_view name = t.name;
    if (!StartsWith(name, prefix)) continue;
    name.remove_prefix(prefix.size());
    int64_t index = 0;
    auto [end, ec] = std::from_chars(name.data(), name.data() + name.size(), index);
    if (ec != std::errc() || end == name.data() || end == name.data() + name.size() || *end != '.') continue;
    count = std::max(count, index + 1);
  }
  return count;
}

// First dimension `dim` of tensor `name`, if the table has it with that many dimensions.
std::optional<int64_t> DimOf(const TensorTable& table, std::string_view name, size_t dim) {
  const TensorInfo* t = table.Find(name);
  if (!t || t->shape.size() <= dim) return std::nullopt;
  return t->shape[dim];
}

// Reads config keys with type checks; records defaults used in `notes`.
class ConfigReader {
 public:
  ConfigReader(const Json& config, std::string what, std::vector<std::string>* notes)
      : config_(config), what_(std::move(what)), notes_(notes) {}

  const Json* Find(std::string_view key) const {
    if (!config_.is_object()) return nullptr;
    auto it = config_.find(std::string(key));
    if (it == config_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  StatusOr<int64_t> RequiredInt(std::string_view key) const {
    const Json* v = Find(key);
    if (!v) return InvalidArgumentError(what_ + ": missing \"" + std::string(key) + "\"");
    return AsInt(key, *v);
  }
  StatusOr<std::optional<int64_t>> OptionalInt(std::string_view key) const {
    const Json* v = Find(key);
    if (!v) return std::optional<int64_t>();
    XCPIPE_ASSIGN_OR_RETURN(int64_t value, AsInt(key, *v));
    return std::optional<int64_t>(value);
  }
  StatusOr<int64_t> Int(std::string_view key, int64_t fallback) const {
    XCPIPE_ASSIGN_OR_RETURN(std::optional<int64_t> value, OptionalInt(key));
    if (!value) {
      Note(std::string(key) + " not in " + what_ + "; using " + std::to_string(fallback));
      return fallback;
    }
    return *value;
  }
  StatusOr<double> Double(std::string_view key, double fallback) const {
    const Json* v = Find(key);
    if (!v) {
      Note(std::string(key) + " not in " + what_ + "; using " + Format(fallback));
      return fallback;
    }
    if (!v->is_number()) return TypeError(key, "a number", *v);
    return v->get<double>();
  }
  StatusOr<std::optional<bool>> OptionalBool(std::string_view key) const {
    const Json* v = Find(key);
    if (!v) return std::optional<bool>();
    if (!v->is_boolean()) return TypeError(key, "true or false", *v);
    return std::optional<bool>(v->get<bool>());
  }
  // A nested object ("eva_vit_g", "qformer"), or nullptr.
  StatusOr<const Json*> Object(std::string_view key) const {
    const Json* v = Find(key);
    if (v && !v->is_object()) return TypeError(key, "an object", *v);
    return v;
  }
  void Note(std::string line) const {
    if (notes_) notes_->push_back(std::move(line));
  }
  const std::string& what() const { return what_; }

  static std::string Format(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", v);
    return buf;
  }

 private:
  StatusOr<int64_t> AsInt(std::string_view key, const Json& v) const {
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float()) {
      double d = v.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15) return static_cast<int64_t>(d);
    }
    return TypeError(key, "an integer", v);
  }
  Status TypeError(std::string_view key, std::string_view expected, const Json& v) const {
    std::string found = v.dump();
    if (found.size() > 60) found = found.substr(0, 60) + "...";
    return InvalidArgumentError(what_ + ": \"" + std::string(key) + "\" must be " + std::string(expected) + ", found " +
                                found);
  }

  const Json& config_;
  std::string what_;
  std::vector<std::string>* notes_;
};

// A dimension known from config, from the tensors, or both (then they must agree).
StatusOr<int64_t> Resolve(std::string_view quantity, std::optional<int64_t> from_config, std::string_view config_what,
                          std::optional<int64_t> from_tensors, std::string_view tensor_what,
                          std::optional<int64_t> fallback) {
  if (from_config && from_tensors && *from_config != *from_tensors) {
    return InvalidArgumentError(std::string(quantity) + ": " + std::string(config_what) + " says " +
                                std::to_string(*from_config) + ", but " + std::string(tensor_what) + " gives " +
                                std::to_string(*from_tensors));
  }
  if (from_config) return *from_config;
  if (from_tensors) return *from_tensors;
  if (fallback) return *fallback;
  return InvalidArgumentError(std::string(quantity) + ": not in " + std::string(config_what) + " and no " +
                              std::string(tensor_what) + " tensor to read it from");
}

Status CheckPositive(std::string_view what, std::string_view key, int64_t v) {
  if (v <= 0) {
    return InvalidArgumentError(std::string(what) + ": \"" + std::string(key) + "\" must be positive, found " +
                                std::to_string(v));
  }
  return OkStatus();
}

class BlockBuilder {
 public:
  explicit BlockBuilder(Block* block) : block_(block) {}
  void Add(std::string name, std::vector<int64_t> shape, bool optional = false) {
    block_->tensors.push_back({std::move(name), std::move(shape), optional});
  }

 private:
  Block* block_;
};

Block MakeBlock(BlockKind kind, std::string name, int64_t layer = -1) {
  Block b;
  b.kind = kind;
  b.name = std::move(name);
  b.layer = layer;
  return b;
}

// LLM values shared by every version.
Status ReadLlm(const ConfigReader& cfg, double default_eps, LlmConfig* llm) {
  XCPIPE_ASSIGN_OR_RETURN(llm->hidden, cfg.RequiredInt("hidden_size"));
  XCPIPE_ASSIGN_OR_RETURN(llm->layers, cfg.RequiredInt("num_hidden_layers"));
  XCPIPE_ASSIGN_OR_RETURN(llm->heads, cfg.RequiredInt("num_attention_heads"));
  XCPIPE_ASSIGN_OR_RETURN(llm->intermediate, cfg.RequiredInt("intermediate_size"));
  XCPIPE_ASSIGN_OR_RETURN(llm->vocab, cfg.RequiredInt("vocab_size"));
  XCPIPE_ASSIGN_OR_RETURN(std::optional<int64_t> kv, cfg.OptionalInt("num_key_value_heads"));
  llm->kv_heads = kv.value_or(llm->heads);
  for (auto [key, value] : {std::pair<const char*, int64_t>{"hidden_size", llm->hidden},
                            {"num_hidden_layers", llm->layers},
                            {"num_attention_heads", llm->heads},
                            {"num_key_value_heads", llm->kv_heads},
                            {"intermediate_size", llm->intermediate},
                            {"vocab_size", llm->vocab}}) {
    XCPIPE_RETURN_IF_ERROR(CheckPositive(cfg.what(), key, value));
  }
  if (llm->hidden % llm->heads != 0) {
    return InvalidArgumentError(cfg.what() + ": hidden_size " + std::to_string(llm->hidden) +
                                " is not a multiple of num_attention_heads " + std::to_string(llm->heads));
  }
  if (llm->heads % llm->kv_heads != 0) {
    return InvalidArgumentError(cfg.what() + ": num_attention_heads " + std::to_string(llm->heads) +
                                " is not a multiple of num_key_value_heads " + std::to_string(llm->kv_heads));
  }
  llm->head_dim = llm->hidden / llm->heads;
  XCPIPE_ASSIGN_OR_RETURN(llm->rope_theta, cfg.Double("rope_theta", 10000.0));
  XCPIPE_ASSIGN_OR_RETURN(llm->max_position_embeddings, cfg.Int("max_position_embeddings", 2048));
  XCPIPE_ASSIGN_OR_RETURN(llm->rms_eps, cfg.Double("rms_norm_eps", default_eps));
  if (const Json* scaling = cfg.Find("rope_scaling")) {
    if (!scaling->is_object()) return InvalidArgumentError(cfg.what() + ": \"rope_scaling\" must be null or an object");
    auto type = scaling->find("type");
    auto factor = scaling->find("factor");
    if (type == scaling->end() || !type->is_string() || factor == scaling->end() || !factor->is_number()) {
      return InvalidArgumentError(cfg.what() + ": \"rope_scaling\" needs \"type\" (dynamic or linear) and \"factor\"");
    }
    const auto& name = type->get_ref<const std::string&>();
    if (name == "dynamic") {
      llm->rope_scaling = RopeScaling::kDynamic;
    } else if (name == "linear") {
      llm->rope_scaling = RopeScaling::kLinear;
    } else {
      return InvalidArgumentError(cfg.what() + ": rope_scaling type \"" + name + "\" is not dynamic or linear");
    }
    llm->rope_scaling_factor = factor->get<double>();
  }
  XCPIPE_ASSIGN_OR_RETURN(llm->bos_id, cfg.Int("bos_token_id", 1));
  XCPIPE_ASSIGN_OR_RETURN(llm->eos_id, cfg.Int("eos_token_id", 2));
  XCPIPE_ASSIGN_OR_RETURN(std::optional<int64_t> pad, cfg.OptionalInt("pad_token_id"));
  // The 1.0 config says pad_token_id -1 (no pad token); padding then uses EOS like 2.x does.
  llm->pad_id = (pad && *pad >= 0) ? *pad : llm->eos_id;
  return OkStatus();
}

// ---------------------------------------------------------------------------------------------
// 2.x: XComposer2-VL, 4KHD, 2.5.

Status BuildVision2x(ModelArch arch, const ConfigReader& cfg, const Json* clip_config, const TensorTable& table,
                     ModelSpec* spec) {
  VisionConfig& v = spec->vision;
  v.kind = VisionKind::kClip;
  v.hd = arch != ModelArch::kIxc2Vl;
  v.default_hd_num = arch == ModelArch::kIxc2_4khd ? 25 : (arch == ModelArch::kIxc2_5 ? 24 : 0);

  const std::string vit = kVit;
  std::optional<int64_t> cfg_width, cfg_layers, cfg_heads, cfg_mlp, cfg_patch, cfg_image;
  std::optional<double> cfg_eps;
  std::string source = "the released CLIP ViT-L/14 values (no clip_vision_config.json)";
  if (clip_config) {
    if (!clip_config->is_object()) return InvalidArgumentError("clip_vision_config.json: not a JSON object");
    ConfigReader clip(*clip_config, "clip_vision_config.json", nullptr);
    XCPIPE_ASSIGN_OR_RETURN(cfg_width, clip.OptionalInt("hidden_size"));
    XCPIPE_ASSIGN_OR_RETURN(cfg_layers, clip.OptionalInt("num_hidden_layers"));
    XCPIPE_ASSIGN_OR_RETURN(cfg_heads, clip.OptionalInt("num_attention_heads"));
    XCPIPE_ASSIGN_OR_RETURN(cfg_mlp, clip.OptionalInt("intermediate_size"));
    XCPIPE_ASSIGN_OR_RETURN(cfg_patch, clip.OptionalInt("patch_size"));
    XCPIPE_ASSIGN_OR_RETURN(cfg_image, clip.OptionalInt("image_size"));
    if (const Json* eps = clip.Find("layer_norm_eps"); eps && eps->is_number()) cfg_eps = eps->get<double>();
    source = "clip_vision_config.json";
  }
  v.width = cfg_width.value_or(kClipWidth);
  v.layers = cfg_layers.value_or(kClipLayers);
  v.heads = cfg_heads.value_or(kClipHeads);
  v.mlp = cfg_mlp.value_or(kClipMlp);
  v.patch = cfg_patch.value_or(kClipPatch);
  v.eps = cfg_eps.value_or(kClipEps);
  for (auto [key, value] : {std::pair<const char*, int64_t>{"hidden_size", v.width},
                            {"num_hidden_layers", v.layers},
                            {"num_attention_heads", v.heads},
                            {"intermediate_size", v.mlp},
                            {"patch_size", v.patch}}) {
    XCPIPE_RETURN_IF_ERROR(CheckPositive("vision tower (" + source + ")", key, value));
  }
  if (v.width % v.heads != 0) {
    return InvalidArgumentError("vision tower (" + source + "): width " + std::to_string(v.width) +
                                " is not a multiple of " + std::to_string(v.heads) + " heads");
  }
  // Cross-check against the tensors: a tower that does not match cannot be run with these heads.
  auto mismatch = [&](const std::string& quantity, int64_t expected, int64_t found, const std::string& tensor) {
    return InvalidArgumentError("vision tower: " + source + " gives " + quantity + " " + std::to_string(expected) +
                                ", but " + tensor + " has " + std::to_string(found) +
                                (clip_config ? std::string() : "; add the tower's clip_vision_config.json"));
  };
  if (auto w = DimOf(table, vit + "embeddings.class_embedding", 0); w && *w != v.width) {
    return mismatch("width", v.width, *w, vit + "embeddings.class_embedding");
  }
  if (int64_t n = CountIndexed(table, vit + "encoder.layers."); n > 0 && n != v.layers) {
    return mismatch("layer count", v.layers, n, "the checkpoint (encoder.layers.*)");
  }
  if (auto m = DimOf(table, vit + "encoder.layers.0.mlp.fc1.weight", 0); m && *m != v.mlp) {
    return mismatch("MLP width", v.mlp, *m, vit + "encoder.layers.0.mlp.fc1.weight");
  }

  // Tile size: VL resizes the position table to its own 490 px; HD towers run at CLIP's size.
  switch (arch) {
    case ModelArch::kIxc2Vl: {
      XCPIPE_ASSIGN_OR_RETURN(v.image_size, cfg.Int("img_size", 490));
      break;
    }
    case ModelArch::kIxc2_4khd:
      v.image_size = cfg_image.value_or(336);
      break;
    default:
      v.image_size = cfg_image.value_or(560);
      break;
  }
  if (v.image_size <= 0 || v.image_size % v.patch != 0) {
    return InvalidArgumentError("vision tower: image size " + std::to_string(v.image_size) +
                                " is not a positive multiple of the patch size " + std::to_string(v.patch));
  }
  const int64_t grid = v.image_size / v.patch;
  if (v.hd && grid % 2 != 0) {
    return InvalidArgumentError("vision tower: " + std::to_string(grid) + "x" + std::to_string(grid) +
                                " patches cannot be merged 2x2 (HD models need an even grid)");
  }
  v.positions = grid * grid + 1;
  v.proj_in = v.hd ? 4 * v.width : v.width;
  if (!clip_config) {
    spec->notes.push_back(
        "no clip_vision_config.json: using the released CLIP ViT-L/14 tower (width 1024, 24 "
        "layers, 16 heads, MLP 4096), checked against the tensor shapes");
  }
  return OkStatus();
}

void AddVisionTensors2x(const ModelSpec& spec, Block* block) {
  BlockBuilder b(block);
  const auto& v = spec.vision;
  const int64_t c = v.width;
  const int64_t h = spec.llm.hidden;
  const std::string vit = kVit;
  if (v.hd) {
    b.Add("plora_glb_GN", {1, 1, 4 * c});
    b.Add("plora_sub_GN", {1, 1, 1, 4 * c});
  }
  b.Add(vit + "embeddings.class_embedding", {c});
  b.Add(vit + "embeddings.patch_embedding.weight", {c, 3, v.patch, v.patch});
  b.Add(vit + "embeddings.position_embedding.weight", {v.positions, c});
  // Older transformers saved CLIP's position_ids buffer; it is rebuilt, never needed.
  b.Add(vit + "embeddings.position_ids", {1, v.positions}, /*optional=*/true);
  b.Add(vit + "pre_layrnorm.weight", {c});
  b.Add(vit + "pre_layrnorm.bias", {c});
  for (int64_t j = 0; j < v.layers; ++j) {
    const std::string p = vit + "encoder.layers." + std::to_string(j) + ".";
    for (const char* proj : {"k_proj", "v_proj", "q_proj", "out_proj"}) {
      b.Add(p + "self_attn." + proj + ".weight", {c, c});
      b.Add(p + "self_attn." + proj + ".bias", {c});
    }
    b.Add(p + "layer_norm1.weight", {c});
    b.Add(p + "layer_norm1.bias", {c});
    b.Add(p + "mlp.fc1.weight", {v.mlp, c});
    b.Add(p + "mlp.fc1.bias", {v.mlp});
    b.Add(p + "mlp.fc2.weight", {c, v.mlp});
    b.Add(p + "mlp.fc2.bias", {c});
    b.Add(p + "layer_norm2.weight", {c});
    b.Add(p + "layer_norm2.bias", {c});
  }
  // Built by HF but unused by XComposer (features are taken before it); absent from 4KHD's release.
  b.Add(vit + "post_layernorm.weight", {c}, /*optional=*/true);
  b.Add(vit + "post_layernorm.bias", {c}, /*optional=*/true);
  b.Add("vision_proj.0.weight", {h, v.proj_in});
  b.Add("vision_proj.0.bias", {h});
  b.Add("vision_proj.2.weight", {h, h});
  b.Add("vision_proj.2.bias", {h});
  if (spec.arch == ModelArch::kIxc2_5) {
    // OmniLive base code only; believed absent from internlm-xcomposer2d5-7b; unused for images.
    b.Add("video_mem_proj.0.weight", {h, kVideoMemIn}, true);
    b.Add("video_mem_proj.0.bias", {h}, true);
    b.Add("video_mem_proj.2.weight", {h, h}, true);
    b.Add("video_mem_proj.2.bias", {h}, true);
  }
}

// Rank of a (P)LoRA module from the rows of its A matrix in the first layer that has one.
std::optional<int64_t> LoraRankFromTensors(const TensorTable& table, const std::string& layer_prefix, int64_t layers,
                                           const std::string& module_and_a) {
  for (int64_t i = 0; i < std::max<int64_t>(layers, 1); ++i) {
    if (auto r = DimOf(table, layer_prefix + std::to_string(i) + "." + module_and_a, 0)) return r;
  }
  return std::nullopt;
}

struct Plora2x {
  const char* key;   // LlmConfig::lora key
  const char* path;  // module path inside a layer
};
constexpr Plora2x kPloraModules[] = {
    {"wqkv", "attention.wqkv"}, {"wo", "attention.wo"},    {"w1", "feed_forward.w1"},
    {"w3", "feed_forward.w3"},  {"w2", "feed_forward.w2"},
};

StatusOr<ModelSpec> Build2x(ModelArch arch, const Json& config, const Json* clip_config, const TensorTable& table) {
  ModelSpec spec;
  spec.arch = arch;
  ConfigReader cfg(config, "config.json", &spec.notes);
  LlmConfig& llm = spec.llm;
  XCPIPE_RETURN_IF_ERROR(ReadLlm(cfg, /*default_eps=*/1e-6, &llm));
  XCPIPE_ASSIGN_OR_RETURN(std::optional<bool> bias, cfg.OptionalBool("bias"));
  llm.attention_bias = bias.value_or(table.Find("model.layers.0.attention.wqkv.bias") != nullptr);
  llm.stop_ids = {llm.eos_id, kIxc2ImEndId};

  for (const auto& m : kPloraModules) {
    const bool is_4khd_wqkv = arch == ModelArch::kIxc2_4khd && std::string_view(m.key) == "wqkv";
    // 4KHD builds wqkv's PLoRA with the class defaults (r=8, alpha=16); every other PLoRA is
    // r=alpha=256.
    const int64_t default_rank = is_4khd_wqkv ? 8 : 256;
    auto rank = LoraRankFromTensors(table, "model.layers.", llm.layers, std::string(m.path) + ".Plora_A.weight");
    LoraSpec lora;
    lora.rank = rank.value_or(default_rank);
    if (lora.rank <= 0) return InvalidArgumentError(std::string(m.path) + ".Plora_A.weight has no rows");
    const double alpha = is_4khd_wqkv ? 16.0 : static_cast<double>(lora.rank);
    lora.scale = alpha / static_cast<double>(lora.rank);
    if (is_4khd_wqkv && lora.rank != 8) {
      spec.notes.push_back("4KHD wqkv PLoRA rank " + std::to_string(lora.rank) +
                           " (released: 8); alpha taken as the class default 16");
    }
    llm.lora[m.key] = lora;
  }

  XCPIPE_RETURN_IF_ERROR(BuildVision2x(arch, cfg, clip_config, table, &spec));

  const int64_t h = llm.hidden, f = llm.intermediate, d = llm.head_dim;
  const int64_t qkv_out = (llm.heads + 2 * llm.kv_heads) * d;
  const int64_t attn_out = llm.heads * d;

  spec.blocks.push_back(MakeBlock(BlockKind::kVision, "vision"));
  AddVisionTensors2x(spec, &spec.blocks.back());
  spec.blocks.push_back(MakeBlock(BlockKind::kEmbed, "embed"));
  BlockBuilder(&spec.blocks.back()).Add("model.tok_embeddings.weight", {llm.vocab, h});
  for (int64_t i = 0; i < llm.layers; ++i) {
    spec.blocks.push_back(MakeBlock(BlockKind::kLayer, "layer." + std::to_string(i), i));
    BlockBuilder b(&spec.blocks.back());
    const std::string p = "model.layers." + std::to_string(i) + ".";
    auto plora = [&](const std::string& path, const char* key, int64_t out, int64_t in, bool with_bias) {
      const int64_t r = llm.lora[key].rank;
      b.Add(p + path + ".weight", {out, in});
      if (with_bias) b.Add(p + path + ".bias", {out});
      b.Add(p + path + ".Plora_A.weight", {r, in});
      b.Add(p + path + ".Plora_B.weight", {out, r});
    };
    plora("attention.wqkv", "wqkv", qkv_out, h, llm.attention_bias);
    plora("attention.wo", "wo", h, attn_out, llm.attention_bias);
    plora("feed_forward.w1", "w1", f, h, false);
    plora("feed_forward.w3", "w3", f, h, false);
    plora("feed_forward.w2", "w2", h, f, false);
    b.Add(p + "attention_norm.weight", {h});
    b.Add(p + "ffn_norm.weight", {h});
    b.Add(p + "attention.rotary_emb.inv_freq", {d / 2}, /*optional=*/true);
  }
  spec.blocks.push_back(MakeBlock(BlockKind::kHead, "head"));
  BlockBuilder head(&spec.blocks.back());
  head.Add("model.norm.weight", {h});
  head.Add("output.weight", {llm.vocab, h});
  return spec;
}

// ---------------------------------------------------------------------------------------------
// 1.0: EVA ViT-g + Q-Former + InternLM-7B with LoRA.

constexpr const char* kIxc1Layers = "internlm_model.model.layers.";

struct Lora1 {
  const char* param;  // learn_param entry
  const char* key;    // LlmConfig::lora key
  const char* path;   // module path inside a layer
};
constexpr Lora1 kLora1Modules[] = {
    {"q", "q_proj", "self_attn.q_proj"}, {"k", "k_proj", "self_attn.k_proj"}, {"v", "v_proj", "self_attn.v_proj"},
    {"o", "o_proj", "self_attn.o_proj"}, {"ffn", "up_proj", "mlp.up_proj"},   {"ffn", "down_proj", "mlp.down_proj"},
};

// Tower heads: config, else the released value at the released width, else head_dim 16.
int64_t TowerHeads(std::optional<int64_t> from_config, int64_t width, int64_t released_width, int64_t released_heads,
                   std::string_view tower, std::vector<std::string>* notes) {
  if (from_config) return *from_config;
  if (width == released_width) return released_heads;
  int64_t heads = width % 16 == 0 ? width / 16 : 1;
  notes->push_back(std::string(tower) + " heads not in config.json and width " + std::to_string(width) +
                   " is not the released one; assuming " + std::to_string(heads) + " heads (head_dim " +
                   std::to_string(width / heads) + ")");
  return heads;
}

StatusOr<ModelSpec> Build1(const Json& config, const TensorTable& table) {
  ModelSpec spec;
  spec.arch = ModelArch::kIxc1;
  ConfigReader cfg(config, "config.json", &spec.notes);
  LlmConfig& llm = spec.llm;
  XCPIPE_RETURN_IF_ERROR(ReadLlm(cfg, /*default_eps=*/1e-5, &llm));
  XCPIPE_ASSIGN_OR_RETURN(std::optional<bool> bias, cfg.OptionalBool("kqvo_bias"));
  llm.attention_bias = bias.value_or(table.Find("internlm_model.model.layers.0.self_attn.q_proj.bias") != nullptr ||
                                     table.tensors.empty());
  llm.stop_ids = {llm.eos_id, kIxc1EohId, kIxc1EoaId};
  const int64_t h = llm.hidden, f = llm.intermediate, d = llm.head_dim;

  // LoRA: the config's internlm_lora decides where it must be; without it, take what is there.
  XCPIPE_ASSIGN_OR_RETURN(const Json* lora_config, cfg.Object("internlm_lora"));
  std::map<std::string, bool> lora_required;  // key -> required (false: optional)
  std::map<std::string, int64_t> lora_rank;   // key -> rank (-1: any)
  if (lora_config) {
    ConfigReader lc(*lora_config, "config.json internlm_lora", &spec.notes);
    XCPIPE_ASSIGN_OR_RETURN(int64_t r, lc.RequiredInt("lora_r"));
    XCPIPE_ASSIGN_OR_RETURN(double alpha, lc.Double("lora_alpha", static_cast<double>(r)));
    XCPIPE_RETURN_IF_ERROR(CheckPositive("config.json internlm_lora", "lora_r", r));
    const Json* learn = lc.Find("learn_param");
    if (!learn || !learn->is_array()) {
      return InvalidArgumentError("config.json: internlm_lora.learn_param must be a list (q, k, v, o, ffn)");
    }
    for (const auto& p : *learn) {
      if (!p.is_string()) return InvalidArgumentError("config.json: internlm_lora.learn_param holds a non-string");
      const auto& name = p.get_ref<const std::string&>();
      bool known = false;
      for (const auto& m : kLora1Modules) {
        if (name == m.param) {
          known = true;
          lora_required[m.key] = true;
          lora_rank[m.key] = r;
          llm.lora[m.key] = LoraSpec{r, alpha / static_cast<double>(r)};
        }
      }
      if (!known) {
        return InvalidArgumentError("config.json: internlm_lora.learn_param holds '" + name +
                                    "'; expected q, k, v, o or ffn");
      }
    }
  } else {
    for (const auto& m : kLora1Modules) {
      auto r = LoraRankFromTensors(table, kIxc1Layers, llm.layers, std::string(m.path) + ".lora_A.weight");
      lora_required[m.key] = false;
      lora_rank[m.key] = r.value_or(-1);
      // The official merge script folds released LoRA in with scale 1.
      if (r) llm.lora[m.key] = LoraSpec{*r, 1.0};
    }
    if (!llm.lora.empty()) {
      spec.notes.push_back(
          "config.json has no internlm_lora: LoRA ranks read from the tensors, scale 1 "
          "(as the official merge script uses)");
    }
  }

  // Vision: EVA ViT-g.
  XCPIPE_ASSIGN_OR_RETURN(const Json* eva_json, cfg.Object("eva_vit_g"));
  XCPIPE_ASSIGN_OR_RETURN(const Json* qf_json, cfg.Object("qformer"));
  Json empty = Json::object();
  ConfigReader eva(eva_json ? *eva_json : empty, "config.json eva_vit_g", nullptr);
  ConfigReader qf(qf_json ? *qf_json : empty, "config.json qformer", nullptr);
  VisionConfig& v = spec.vision;
  v.kind = VisionKind::kEvaQformer;
  v.eps = 1e-6;
  v.ln_vision_eps = 1e-5;
  v.qformer_eps = 1e-12;
  {
    XCPIPE_ASSIGN_OR_RETURN(auto width, eva.OptionalInt("embed_dim"));
    XCPIPE_ASSIGN_OR_RETURN(
        v.width, Resolve("EVA width", width, "config.json eva_vit_g.embed_dim",
                         DimOf(table, "visual_encoder.cls_token", 2), "visual_encoder.cls_token", kEvaWidth));
    XCPIPE_ASSIGN_OR_RETURN(auto depth, eva.OptionalInt("depth"));
    int64_t counted = CountIndexed(table, "visual_encoder.blocks.");
    XCPIPE_ASSIGN_OR_RETURN(
        v.layers, Resolve("EVA depth", depth, "config.json eva_vit_g.depth",
                          counted ? std::optional<int64_t>(counted) : std::nullopt, "visual_encoder.blocks.*", 39));
    XCPIPE_ASSIGN_OR_RETURN(auto mlp, eva.OptionalInt("mlp_hidden"));
    XCPIPE_ASSIGN_OR_RETURN(v.mlp, Resolve("EVA MLP width", mlp, "config.json eva_vit_g.mlp_hidden",
                                           DimOf(table, "visual_encoder.blocks.0.mlp.fc1.weight", 0),
                                           "visual_encoder.blocks.0.mlp.fc1.weight", 6144));
    XCPIPE_ASSIGN_OR_RETURN(auto patch, eva.OptionalInt("patch_size"));
    XCPIPE_ASSIGN_OR_RETURN(v.patch, Resolve("EVA patch size", patch, "config.json eva_vit_g.patch_size",
                                             DimOf(table, "visual_encoder.patch_embed.proj.weight", 2),
                                             "visual_encoder.patch_embed.proj.weight", 14));
    XCPIPE_ASSIGN_OR_RETURN(auto image, eva.OptionalInt("img_size"));
    v.image_size = image.value_or(224);
    XCPIPE_ASSIGN_OR_RETURN(auto heads, eva.OptionalInt("num_heads"));
    v.heads = TowerHeads(heads, v.width, kEvaWidth, kEvaHeads, "EVA ViT", &spec.notes);
    if (const Json* eps = eva.Find("layer_norm_eps"); eps && eps->is_number()) v.eps = eps->get<double>();
    XCPIPE_RETURN_IF_ERROR(CheckPositive("EVA ViT", "patch_size", v.patch));
    XCPIPE_RETURN_IF_ERROR(CheckPositive("EVA ViT", "num_heads", v.heads));
    const int64_t grid = v.image_size / v.patch;
    v.positions = grid * grid + 1;
  }
  // Q-Former.
  {
    XCPIPE_ASSIGN_OR_RETURN(auto width, qf.OptionalInt("hidden_size"));
    XCPIPE_ASSIGN_OR_RETURN(v.qformer_width, Resolve("Q-Former width", width, "config.json qformer.hidden_size",
                                                     DimOf(table, "query_tokens", 2), "query_tokens", kQformerWidth));
    XCPIPE_ASSIGN_OR_RETURN(auto layers, qf.OptionalInt("num_hidden_layers"));
    int64_t counted = CountIndexed(table, "Qformer.bert.encoder.layer.");
    XCPIPE_ASSIGN_OR_RETURN(v.qformer_layers, Resolve("Q-Former depth", layers, "config.json qformer.num_hidden_layers",
                                                      counted ? std::optional<int64_t>(counted) : std::nullopt,
                                                      "Qformer.bert.encoder.layer.*", 12));
    XCPIPE_ASSIGN_OR_RETURN(auto inter, qf.OptionalInt("intermediate_size"));
    XCPIPE_ASSIGN_OR_RETURN(v.qformer_intermediate,
                            Resolve("Q-Former FFN width", inter, "config.json qformer.intermediate_size",
                                    DimOf(table, "Qformer.bert.encoder.layer.0.intermediate_query.dense.weight", 0),
                                    "Qformer.bert.encoder.layer.0.intermediate_query.dense.weight", 3072));
    XCPIPE_ASSIGN_OR_RETURN(auto heads, qf.OptionalInt("num_attention_heads"));
    v.qformer_heads = TowerHeads(heads, v.qformer_width, kQformerWidth, kQformerHeads, "Q-Former", &spec.notes);
    XCPIPE_ASSIGN_OR_RETURN(auto freq, qf.OptionalInt("cross_attention_freq"));
    v.qformer_cross_attention_every = freq.value_or(2);
    XCPIPE_RETURN_IF_ERROR(CheckPositive("Q-Former", "cross_attention_freq", v.qformer_cross_attention_every));
    XCPIPE_RETURN_IF_ERROR(CheckPositive("Q-Former", "num_attention_heads", v.qformer_heads));
    if (const Json* eps = qf.Find("layer_norm_eps"); eps && eps->is_number()) v.qformer_eps = eps->get<double>();
    XCPIPE_ASSIGN_OR_RETURN(auto nq, cfg.OptionalInt("num_query_token"));
    if (nq) {
      v.query_tokens = *nq;
    } else if (auto rows = DimOf(table, "query_tokens", 1)) {
      v.query_tokens = *rows;
      spec.notes.push_back("num_query_token not in config.json; read " + std::to_string(*rows) + " from query_tokens");
    } else {
      v.query_tokens = 32;
      spec.notes.push_back("num_query_token not in config.json and no query_tokens tensor; using 32");
    }
  }
  v.proj_in = v.qformer_width;

  // Blocks.
  const int64_t dv = v.width, hq = v.qformer_width, m = v.mlp, iq = v.qformer_intermediate;
  spec.blocks.push_back(MakeBlock(BlockKind::kVision, "vision"));
  {
    BlockBuilder b(&spec.blocks.back());
    b.Add("query_tokens", {1, v.query_tokens, hq});
    b.Add("flag_image_start", {1, 1, h});
    b.Add("flag_image_end", {1, 1, h});
    b.Add("visual_encoder.cls_token", {1, 1, dv});
    b.Add("visual_encoder.pos_embed", {1, v.positions, dv});
    b.Add("visual_encoder.patch_embed.proj.weight", {dv, 3, v.patch, v.patch});
    b.Add("visual_encoder.patch_embed.proj.bias", {dv});
    for (int64_t i = 0; i < v.layers; ++i) {
      const std::string p = "visual_encoder.blocks." + std::to_string(i) + ".";
      b.Add(p + "norm1.weight", {dv});
      b.Add(p + "norm1.bias", {dv});
      b.Add(p + "attn.q_bias", {dv});
      b.Add(p + "attn.v_bias", {dv});
      b.Add(p + "attn.qkv.weight", {3 * dv, dv});
      b.Add(p + "attn.proj.weight", {dv, dv});
      b.Add(p + "attn.proj.bias", {dv});
      b.Add(p + "norm2.weight", {dv});
      b.Add(p + "norm2.bias", {dv});
      b.Add(p + "mlp.fc1.weight", {m, dv});
      b.Add(p + "mlp.fc1.bias", {m});
      b.Add(p + "mlp.fc2.weight", {dv, m});
      b.Add(p + "mlp.fc2.bias", {dv});
    }
    b.Add("ln_vision.weight", {dv});
    b.Add("ln_vision.bias", {dv});
    // BERT's position_ids buffer: saved by the official code, unused (word/position embeddings
    // are deleted).
    b.Add("Qformer.bert.embeddings.position_ids", {1, -1}, /*optional=*/true);
    b.Add("Qformer.bert.embeddings.LayerNorm.weight", {hq});
    b.Add("Qformer.bert.embeddings.LayerNorm.bias", {hq});
    auto linear = [&](const std::string& name, int64_t out, int64_t in) {
      b.Add(name + ".weight", {out, in});
      b.Add(name + ".bias", {out});
    };
    auto layer_norm = [&](const std::string& name, int64_t width) {
      b.Add(name + ".weight", {width});
      b.Add(name + ".bias", {width});
    };
    for (int64_t j = 0; j < v.qformer_layers; ++j) {
      const std::string p = "Qformer.bert.encoder.layer." + std::to_string(j) + ".";
      linear(p + "attention.self.query", hq, hq);
      linear(p + "attention.self.key", hq, hq);
      linear(p + "attention.self.value", hq, hq);
      linear(p + "attention.output.dense", hq, hq);
      layer_norm(p + "attention.output.LayerNorm", hq);
      if (j % v.qformer_cross_attention_every == 0) {
        linear(p + "crossattention.self.query", hq, hq);
        linear(p + "crossattention.self.key", hq, dv);
        linear(p + "crossattention.self.value", hq, dv);
        linear(p + "crossattention.output.dense", hq, hq);
        layer_norm(p + "crossattention.output.LayerNorm", hq);
      }
      linear(p + "intermediate_query.dense", iq, hq);
      linear(p + "output_query.dense", hq, iq);
      layer_norm(p + "output_query.LayerNorm", hq);
    }
    linear("internlm_proj", h, hq);
  }
  spec.blocks.push_back(MakeBlock(BlockKind::kEmbed, "embed"));
  BlockBuilder(&spec.blocks.back()).Add("internlm_model.model.embed_tokens.weight", {llm.vocab, h});
  for (int64_t i = 0; i < llm.layers; ++i) {
    spec.blocks.push_back(MakeBlock(BlockKind::kLayer, "layer." + std::to_string(i), i));
    BlockBuilder b(&spec.blocks.back());
    const std::string p = kIxc1Layers + std::to_string(i) + ".";
    auto proj = [&](const char* key, const std::string& path, int64_t out, int64_t in, bool with_bias) {
      b.Add(p + path + ".weight", {out, in});
      if (with_bias) b.Add(p + path + ".bias", {out});
      if (key && lora_required.count(key)) {
        const int64_t r = lora_rank[key];
        const bool optional = !lora_required[key];
        b.Add(p + path + ".lora_A.weight", {r, in}, optional);
        b.Add(p + path + ".lora_B.weight", {out, r}, optional);
      }
    };
    proj("q_proj", "self_attn.q_proj", h, h, llm.attention_bias);
    proj("k_proj", "self_attn.k_proj", h, h, llm.attention_bias);
    proj("v_proj", "self_attn.v_proj", h, h, llm.attention_bias);
    proj("o_proj", "self_attn.o_proj", h, h, llm.attention_bias);
    b.Add(p + "self_attn.rotary_emb.inv_freq", {d / 2}, /*optional=*/true);
    proj(nullptr, "mlp.gate_proj", f, h, false);
    proj("down_proj", "mlp.down_proj", h, f, false);
    proj("up_proj", "mlp.up_proj", f, h, false);
    b.Add(p + "input_layernorm.weight", {h});
    b.Add(p + "post_attention_layernorm.weight", {h});
  }
  spec.blocks.push_back(MakeBlock(BlockKind::kHead, "head"));
  BlockBuilder head(&spec.blocks.back());
  head.Add("internlm_model.model.norm.weight", {h});
  head.Add("internlm_model.lm_head.weight", {llm.vocab, h});
  return spec;
}

bool ShapeMatches(const std::vector<int64_t>& expected, const std::vector<int64_t>& found) {
  if (expected.size() != found.size()) return false;
  for (size_t i = 0; i < expected.size(); ++i) {
    if (expected[i] != -1 && expected[i] != found[i]) return false;
  }
  return true;
}

// A 1.0 config.json names no EVA / Q-Former head counts. Fixture-style model folders
// (<model>/checkpoint beside <model>/model_info.json) record them; take them from there when
// the config has none, so small test towers get their real head counts.
void MergeTowerHeadsFromModelInfo(const std::filesystem::path& dir, Json* config, std::vector<std::string>* notes) {
  std::error_code ec;
  const auto info_path = dir / ".." / "model_info.json";
  if (!config->is_object() || !std::filesystem::exists(info_path, ec)) return;
  auto info = ReadJsonFile(info_path);
  if (!info.ok() || !info->is_object()) return;
  auto merge = [&](const char* info_section, const char* info_key, const char* config_section, const char* config_key) {
    auto section = info->find(info_section);
    if (section == info->end() || !section->is_object()) return;
    auto value = section->find(info_key);
    if (value == section->end() || !value->is_number_integer()) return;
    Json& target = (*config)[config_section];
    if (target.is_null()) target = Json::object();
    if (!target.is_object() || target.contains(config_key)) return;
    target[config_key] = *value;
    notes->push_back(std::string(config_section) + "." + config_key + " = " + value->dump() + " from " +
                     info_path.lexically_normal().string());
  };
  if (config->contains("internlm_lora") || config->contains("num_query_token")) {  // 1.0 only
    merge("vision", "num_heads", "eva_vit_g", "num_heads");
    merge("qformer", "num_attention_heads", "qformer", "num_attention_heads");
  }
}

}  // namespace

std::string_view ArchName(ModelArch arch) {
  switch (arch) {
    case ModelArch::kIxc1:
      return "ixc1";
    case ModelArch::kIxc2Vl:
      return "ixc2-vl";
    case ModelArch::kIxc2_4khd:
      return "ixc2-4khd";
    case ModelArch::kIxc2_5:
      return "ixc2.5";
  }
  return "unknown";
}

std::optional<ModelArch> ParseArch(std::string_view name) {
  // Also the fixture folder names (ixc2_vl, ixc2_4khd, ixc2d5).
  if (name == "ixc1" || name == "1.0") return ModelArch::kIxc1;
  if (name == "ixc2-vl" || name == "ixc2_vl" || name == "2.0-vl") return ModelArch::kIxc2Vl;
  if (name == "ixc2-4khd" || name == "ixc2_4khd" || name == "2.0-4khd") return ModelArch::kIxc2_4khd;
  if (name == "ixc2.5" || name == "ixc2d5" || name == "ixc2_5" || name == "2.5") return ModelArch::kIxc2_5;
  return std::nullopt;
}

StatusOr<ModelArch> DetectArch(const TensorTable& tensors, const nlohmann::json* clip_config) {
  bool has_ixc1 = false, has_ixc2 = false, has_glb = false, has_video = false;
  for (const auto& t : tensors.tensors) {
    if (StartsWith(t.name, "internlm_model.")) has_ixc1 = true;
    if (StartsWith(t.name, "model.") || StartsWith(t.name, "vit.") || t.name == "output.weight") has_ixc2 = true;
    if (t.name == "plora_glb_GN") has_glb = true;
    if (StartsWith(t.name, "video_mem_proj.")) has_video = true;
  }
  const std::string where = tensors.source.empty() ? std::string("tensor table") : tensors.source;
  if (has_ixc1) return ModelArch::kIxc1;
  if (!has_ixc2) {
    return InvalidArgumentError(where +
                                ": not an InternLM-XComposer checkpoint (no internlm_model.* tensors (1.0) "
                                "and no model.* / vit.* tensors (2.x))");
  }
  if (!has_glb) return ModelArch::kIxc2Vl;
  // HD family: the CLIP position table says which tile size the tower was built for.
  const std::string pos_name = std::string(kVit) + "embeddings.position_embedding.weight";
  if (const TensorInfo* pos = tensors.Find(pos_name); pos && !pos->shape.empty()) {
    const int64_t rows = pos->shape[0];
    int64_t patch = kClipPatch;
    if (auto p = DimOf(tensors, std::string(kVit) + "embeddings.patch_embedding.weight", 2); p && *p > 0) patch = *p;
    const auto grid =
        static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(std::max<int64_t>(rows - 1, 0)))));
    if (grid * grid + 1 == rows) {
      if (grid * patch == 336) return ModelArch::kIxc2_4khd;
      if (grid * patch == 560) return ModelArch::kIxc2_5;
    }
    return InvalidArgumentError(where + ": HD model (plora_glb_GN present) with a " + std::to_string(rows) +
                                "-row CLIP position table: expected 577 (336 px, 4KHD) or 1601 (560 px, 2.5)");
  }
  if (clip_config && clip_config->is_object()) {
    auto it = clip_config->find("image_size");
    if (it != clip_config->end() && it->is_number_integer()) {
      if (it->get<int64_t>() == 336) return ModelArch::kIxc2_4khd;
      if (it->get<int64_t>() == 560) return ModelArch::kIxc2_5;
    }
  }
  if (has_video) return ModelArch::kIxc2_5;
  return InvalidArgumentError(where + ": HD model (plora_glb_GN present) but nothing tells 4KHD from 2.5: no " +
                              pos_name + ", no clip_vision_config.json image_size, no video_mem_proj.*");
}

StatusOr<ModelSpec> BuildModelSpec(const nlohmann::json& config, const nlohmann::json* clip_config,
                                   const TensorTable& tensors, std::optional<ModelArch> arch_override) {
  if (!config.is_object()) return InvalidArgumentError("config.json: not a JSON object");
  ModelArch arch;
  if (arch_override) {
    arch = *arch_override;
  } else {
    XCPIPE_ASSIGN_OR_RETURN(arch, DetectArch(tensors, clip_config));
  }
  if (arch == ModelArch::kIxc1) return Build1(config, tensors);
  return Build2x(arch, config, clip_config, tensors);
}

std::optional<size_t> ModelSpec::BlockOf(std::string_view tensor_name) const {
  const std::string_view layer_prefix = arch == ModelArch::kIxc1 ? kIxc1Layers : "model.layers.";
  auto scan = [&](size_t b) -> bool {
    for (const auto& t : blocks[b].tensors) {
      if (t.name == tensor_name) return true;
    }
    return false;
  };
  if (StartsWith(tensor_name, layer_prefix)) {
    std::string_view rest = tensor_name.substr(layer_prefix.size());
    int64_t layer = -1;
    auto [end, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), layer);
    if (ec != std::errc() || end == rest.data() + rest.size() || *end != '.') return std::nullopt;
    for (size_t b = 0; b < blocks.size(); ++b) {
      if (blocks[b].kind == BlockKind::kLayer && blocks[b].layer == layer) {
        return scan(b) ? std::optional<size_t>(b) : std::nullopt;
      }
    }
    return std::nullopt;
  }
  for (size_t b = 0; b < blocks.size(); ++b) {
    if (blocks[b].kind != BlockKind::kLayer && scan(b)) return b;
  }
  return std::nullopt;
}

int64_t ModelSpec::ImageTokens(int64_t grid_h, int64_t grid_w) const {
  if (vision.kind == VisionKind::kEvaQformer) return vision.query_tokens + 2;
  if (vision.patch <= 0) return 0;
  const int64_t n = vision.image_size / vision.patch;
  if (!vision.hd) return n * n;
  const int64_t m = n / 2;
  return (grid_h * grid_w + 1) * m * m + 1 + (grid_h + 1) * m;
}

StatusOr<CheckpointDescription> DescribeCheckpoint(const std::filesystem::path& dir,
                                                   std::optional<ModelArch> arch_override) {
  const std::string context = "checkpoint " + dir.string();
  const auto config_path = dir / "config.json";
  std::error_code ec;
  if (!std::filesystem::exists(config_path, ec)) {
    return NotFoundError(context + ": no config.json (every model folder carries its config.json)");
  }
  auto config = ReadJsonFile(config_path);
  if (!config.ok()) return config.status().WithContext(context);
  std::optional<Json> clip;
  const auto clip_path = dir / "clip_vision_config.json";
  if (std::filesystem::exists(clip_path, ec)) {
    auto parsed = ReadJsonFile(clip_path);
    if (!parsed.ok()) return parsed.status().WithContext(context);
    clip = std::move(parsed).value();
  }
  auto table = ReadCheckpointTensorTable(dir);
  if (!table.ok()) return table.status().WithContext(context);
  std::vector<std::string> extra_notes;
  MergeTowerHeadsFromModelInfo(dir, &*config, &extra_notes);
  auto spec = BuildModelSpec(*config, clip ? &*clip : nullptr, *table, arch_override);
  if (!spec.ok()) return spec.status().WithContext(context);
  spec->notes.insert(spec->notes.end(), extra_notes.begin(), extra_notes.end());
  return CheckpointDescription{std::move(spec).value(), std::move(table).value()};
}

StatusOr<CheckpointDescription> DescribeLayout(const std::filesystem::path& layout_file,
                                               std::optional<ModelArch> arch_override) {
  const std::string context = "layout " + layout_file.string();
  auto layout = ReadLayoutFile(layout_file);
  if (!layout.ok()) return layout.status();
  if (layout->config_json.empty()) {
    return InvalidArgumentError(context + ": no \"config_used\" or \"config\" object to build the spec from");
  }
  auto config = ParseJson(layout->config_json, "config");
  if (!config.ok()) return config.status().WithContext(context);
  std::optional<Json> clip;
  if (!layout->clip_config_json.empty()) {
    auto parsed = ParseJson(layout->clip_config_json, "clip_vision_config");
    if (!parsed.ok()) return parsed.status().WithContext(context);
    clip = std::move(parsed).value();
  }
  auto spec = BuildModelSpec(*config, clip ? &*clip : nullptr, layout->table, arch_override);
  if (!spec.ok()) return spec.status().WithContext(context);
  return CheckpointDescription{std::move(spec).value(), std::move(layout->table)};
}

CoverageReport CheckCoverage(const ModelSpec& spec, const TensorTable& tensors) {
  struct Claim {
    size_t block;
    const ExpectedTensor* expected;
  };
  std::unordered_map<std::string_view, Claim> claims;
  for (size_t b = 0; b < spec.blocks.size(); ++b) {
    for (const auto& t : spec.blocks[b].tensors) claims.emplace(t.name, Claim{b, &t});
  }
  CoverageReport report;
  std::unordered_map<std::string_view, int> seen;
  for (const auto& t : tensors.tensors) {
    int count = ++seen[t.name];
    if (count == 2) report.duplicated.push_back(t.name);
    if (count > 1) continue;
    auto it = claims.find(t.name);
    if (it == claims.end()) {
      report.unknown.push_back(t.name);
      continue;
    }
    report.assignment[t.name] = it->second.block;
    if (!ShapeMatches(it->second.expected->shape, t.shape)) {
      report.wrong_shape.push_back(t.name + ": expected " + ShapeText(it->second.expected->shape) + ", found " +
                                   ShapeText(t.shape));
    }
  }
  for (const auto& block : spec.blocks) {
    for (const auto& t : block.tensors) {
      if (!t.optional && !seen.count(t.name)) report.missing.push_back(t.name);
    }
  }
  return report;
}

Status CoverageReport::ToStatus() const {
  if (ok()) return OkStatus();
  std::string message = "checkpoint does not match the model:";
  auto section = [&](const std::vector<std::string>& names, const char* what) {
    if (names.empty()) return;
    message += "\n  " + std::to_string(names.size()) + " " + what + ":";
    for (const auto& n : names) message += "\n    " + n;
  };
  section(unknown, "unknown tensors (claimed by no block)");
  section(duplicated, "duplicated tensors (present more than once)");
  section(missing, "missing tensors (required by a block)");
  section(wrong_shape, "tensors with the wrong shape");
  return InvalidArgumentError(std::move(message));
}

bool PenaltyCoversPrompt(ModelArch arch, bool has_images) {
  return !has_images && (arch == ModelArch::kIxc2Vl || arch == ModelArch::kIxc2_4khd);
}

std::string FixtureSpecOverrides(const std::filesystem::path& model_dir) {
  auto info = ReadJsonFile(model_dir / ".." / "model_info.json");
  if (!info.ok()) return "";
  nlohmann::json out = nlohmann::json::object();
  const auto& j = *info;
  if (j.contains("vision") && j["vision"].contains("num_heads")) out["vision_heads"] = j["vision"]["num_heads"];
  if (j.contains("vision") && j["vision"].contains("clip_heads")) out["vision_heads"] = j["vision"]["clip_heads"];
  if (j.contains("qformer") && j["qformer"].contains("num_attention_heads")) {
    out["qformer_heads"] = j["qformer"]["num_attention_heads"];
  }
  return out.empty() ? "" : out.dump();
}

}  // namespace xcpipe::checkpoint
