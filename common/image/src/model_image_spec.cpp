#include "xcpipe/image/model_image_spec.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <set>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "xcpipe/base/files.h"

namespace xcpipe::image {
namespace {

namespace fs = std::filesystem;

// Safetensors headers of real checkpoints are a few hundred KiB; anything near this is hostile.
constexpr uint64_t kMaxSafetensorsHeaderBytes = uint64_t{100} << 20;

constexpr const char* kClipPositions = "vit.vision_tower.vision_model.embeddings.position_embedding.weight";
constexpr const char* kClipPatch = "vit.vision_tower.vision_model.embeddings.patch_embedding.weight";
constexpr const char* kEvaPositions = "visual_encoder.pos_embed";
constexpr const char* kEvaPatch = "visual_encoder.patch_embed.proj.weight";
constexpr const char* kHdSeparator = "plora_glb_GN";
constexpr const char* kVideoMemory = "video_mem_proj.0.weight";
constexpr const char* kFirstWqkvLoraA = "model.layers.0.attention.wqkv.Plora_A.weight";
// XComposer2-4KHD builds wqkv's PLoRA with the class defaults (r = 8); 2.5 and VL use 256.
constexpr int64_t kFullPloraRank = 256;

using ShapeMap = std::map<std::string, std::vector<int64_t>>;

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

Status ReadShardShapes(const fs::path& file, ShapeMap* shapes) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return NotFoundError(file.string() + ": cannot open the safetensors shard");
  std::error_code ec;
  const uintmax_t file_bytes = fs::file_size(file, ec);
  unsigned char length_bytes[8] = {};
  if (ec || !in.read(reinterpret_cast<char*>(length_bytes), 8)) {
    return InvalidArgumentError(file.string() + ": shorter than the 8-byte safetensors header length");
  }
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | length_bytes[i];
  if (header_bytes > kMaxSafetensorsHeaderBytes || header_bytes > file_bytes - 8) {
    return InvalidArgumentError(file.string() + ": safetensors header length " + std::to_string(header_bytes) +
                                " exceeds the file (" + std::to_string(file_bytes) + " bytes) or the " +
                                std::to_string(kMaxSafetensorsHeaderBytes) + "-byte cap");
  }
  std::string header(static_cast<size_t>(header_bytes), '\0');
  if (!in.read(header.data(), static_cast<std::streamsize>(header_bytes))) {
    return InvalidArgumentError(file.string() + ": short read of the safetensors header");
  }
  XCPIPE_ASSIGN_OR_RETURN(nlohmann::json json, ParseJson(header, file.string()));
  if (!json.is_object()) return InvalidArgumentError(file.string() + ": safetensors header is not a JSON object");
  for (const auto& [name, entry] : json.items()) {
    if (name == "__metadata__") continue;
    if (!entry.is_object() || !entry.contains("shape") || !entry["shape"].is_array()) {
      return InvalidArgumentError(file.string() + ": tensor '" + name + "' has no shape array");
    }
    std::vector<int64_t> shape;
    for (const auto& d : entry["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) {
        return InvalidArgumentError(file.string() + ": tensor '" + name + "' has a shape entry that is not a "
                                    "non-negative integer");
      }
      shape.push_back(d.get<int64_t>());
    }
    (*shapes)[name] = std::move(shape);
  }
  return OkStatus();
}

// Patch side p from a patch-embedding weight [C, 3, p, p].
StatusOr<int64_t> PatchSide(const ShapeMap& shapes, const std::string& name) {
  auto it = shapes.find(name);
  if (it == shapes.end()) return InvalidArgumentError("tensor '" + name + "' is missing; it gives the patch size");
  const auto& s = it->second;
  if (s.size() != 4 || s[2] != s[3] || s[2] <= 0) {
    return InvalidArgumentError("tensor '" + name + "' has shape " + ShapeText(s) + "; expected [C, 3, p, p]");
  }
  return s[2];
}

// Image side from a position table of rows = (side / patch)^2 + 1 (the +1 is CLS).
StatusOr<int64_t> SideFromPositions(int64_t rows, int64_t patch, const std::string& name) {
  const int64_t grid = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(rows - 1))));
  if (rows < 2 || grid * grid != rows - 1) {
    return InvalidArgumentError("tensor '" + name + "' has " + std::to_string(rows) +
                                " positions; expected n*n + 1 (an n x n patch grid plus CLS)");
  }
  return grid * patch;
}

}  // namespace

StatusOr<ShapeMap> ReadCheckpointTensorShapes(const fs::path& checkpoint_dir) {
  ShapeMap shapes;
  const fs::path index = checkpoint_dir / "model.safetensors.index.json";
  const fs::path single = checkpoint_dir / "model.safetensors";
  if (fs::exists(index)) {
    XCPIPE_ASSIGN_OR_RETURN(nlohmann::json json, ReadJsonFile(index));
    if (!json.is_object() || !json.contains("weight_map") || !json["weight_map"].is_object()) {
      return InvalidArgumentError(index.string() + ": no \"weight_map\" object");
    }
    std::set<std::string> shards;
    for (const auto& [name, shard] : json["weight_map"].items()) {
      if (!shard.is_string()) return InvalidArgumentError(index.string() + ": shard of '" + name + "' is not a string");
      const std::string file = shard.get<std::string>();
      if (file.empty() || file.find('/') != std::string::npos || file == "..") {
        return InvalidArgumentError(index.string() + ": shard name '" + file + "' is not a plain file name");
      }
      shards.insert(file);
    }
    for (const auto& shard : shards) XCPIPE_RETURN_IF_ERROR(ReadShardShapes(checkpoint_dir / shard, &shapes));
  } else if (fs::exists(single)) {
    XCPIPE_RETURN_IF_ERROR(ReadShardShapes(single, &shapes));
  } else {
    return NotFoundError(checkpoint_dir.string() + ": neither model.safetensors.index.json nor model.safetensors");
  }
  return shapes;
}

StatusOr<ModelImageSpec> DetectModelImageSpec(const fs::path& checkpoint_dir) {
  XCPIPE_ASSIGN_OR_RETURN(ShapeMap shapes, ReadCheckpointTensorShapes(checkpoint_dir));
  ModelImageSpec spec;

  if (auto eva = shapes.find(kEvaPositions); eva != shapes.end()) {
    // 1.0: EVA ViT pos_embed [1, P, C]; no interpolation, so P fixes the input side.
    if (eva->second.size() != 3) {
      return InvalidArgumentError(std::string(kEvaPositions) + " has shape " + ShapeText(eva->second) +
                                  "; expected [1, P, C]");
    }
    XCPIPE_ASSIGN_OR_RETURN(int64_t patch, PatchSide(shapes, kEvaPatch));
    XCPIPE_ASSIGN_OR_RETURN(spec.input_size, SideFromPositions(eva->second[1], patch, kEvaPositions));
    spec.version = "ixc1";
    spec.evidence = std::string(kEvaPositions) + " " + ShapeText(eva->second) + ", patch " + std::to_string(patch);
    return spec;
  }

  auto clip = shapes.find(kClipPositions);
  if (clip == shapes.end()) {
    return InvalidArgumentError(checkpoint_dir.string() + ": no vision tower found: expected '" + kEvaPositions +
                                "' (XComposer 1.0) or '" + kClipPositions + "' (XComposer 2.x)");
  }
  if (clip->second.size() != 2) {
    return InvalidArgumentError(std::string(kClipPositions) + " has shape " + ShapeText(clip->second) +
                                "; expected [positions, C]");
  }
  XCPIPE_ASSIGN_OR_RETURN(int64_t patch, PatchSide(shapes, kClipPatch));
  XCPIPE_ASSIGN_OR_RETURN(int64_t table_side, SideFromPositions(clip->second[0], patch, kClipPositions));
  const std::string table_evidence = std::string(kClipPositions) + " " + ShapeText(clip->second) + " -> " +
                                     std::to_string(table_side) + " px at patch " + std::to_string(patch);

  if (shapes.count(kHdSeparator) == 0) {
    // 2.0-VL: the input side is config.json "img_size"; the stored table was resized to it.
    spec.version = "ixc2-vl";
    spec.input_size = table_side;
    spec.evidence = table_evidence;
    const fs::path config_path = checkpoint_dir / "config.json";
    if (fs::exists(config_path)) {
      XCPIPE_ASSIGN_OR_RETURN(nlohmann::json config, ReadJsonFile(config_path));
      if (config.is_object() && config.contains("img_size")) {
        if (!config["img_size"].is_number_integer() || config["img_size"].get<int64_t>() <= 0) {
          return InvalidArgumentError(config_path.string() + ": \"img_size\" is not a positive integer");
        }
        const auto img_size = config["img_size"].get<int64_t>();
        if (img_size != table_side) {
          return InvalidArgumentError(config_path.string() + ": \"img_size\" " + std::to_string(img_size) +
                                      " disagrees with the CLIP position table (" + table_evidence + ")");
        }
        spec.evidence = "config.json img_size " + std::to_string(img_size) + ", " + table_evidence;
      }
    }
    return spec;
  }

  // HD (4KHD or 2.5): the tile side is the CLIP tower's native size.
  spec.hd = true;
  spec.input_size = table_side;
  const bool has_video_memory = shapes.count(kVideoMemory) != 0;
  int64_t wqkv_rank = -1;
  if (auto it = shapes.find(kFirstWqkvLoraA); it != shapes.end() && !it->second.empty()) wqkv_rank = it->second[0];
  if (has_video_memory && wqkv_rank != -1 && wqkv_rank != kFullPloraRank) {
    return InvalidArgumentError(checkpoint_dir.string() + ": cannot tell 4KHD from 2.5: video_mem_proj.* (2.5) is "
                                "present but wqkv's PLoRA rank is " + std::to_string(wqkv_rank) +
                                " (4KHD uses 8, 2.5 uses 256)");
  }
  if (has_video_memory || wqkv_rank == kFullPloraRank) {
    spec.version = "ixc2.5";
    spec.hd_variant = HdVariant::kXComposer2_5;
    spec.default_hd_num = 24;
    spec.evidence = std::string(kHdSeparator) + " present; " +
                    (has_video_memory ? "video_mem_proj.* present" : "wqkv PLoRA rank 256") + "; " + table_evidence;
  } else if (wqkv_rank > 0) {
    spec.version = "ixc2-4khd";
    spec.hd_variant = HdVariant::kXComposer2_4khd;
    spec.default_hd_num = 25;
    spec.evidence = std::string(kHdSeparator) + " present; wqkv PLoRA rank " + std::to_string(wqkv_rank) + "; " +
                    table_evidence;
  } else {
    return InvalidArgumentError(checkpoint_dir.string() + ": HD model (" + kHdSeparator +
                                " present) but neither video_mem_proj.* nor '" + kFirstWqkvLoraA +
                                "' tells 4KHD from 2.5");
  }
  return spec;
}

StatusOr<PreprocessedImage> PreprocessForModel(const RgbImage& image, const ModelImageSpec& spec, int64_t hd_num) {
  PreprocessedImage out;
  if (!spec.hd) {
    XCPIPE_ASSIGN_OR_RETURN(out.pixel_values, PreprocessFixedSize(image, spec.input_size));
    return out;
  }
  HdOptions options;
  options.variant = spec.hd_variant;
  options.tile_size = spec.input_size;
  options.hd_num = hd_num > 0 ? hd_num : spec.default_hd_num;
  XCPIPE_ASSIGN_OR_RETURN(HdPixelValues hd, PreprocessHd(image, options));
  out.pixel_values = std::move(hd.pixel_values);
  out.grid_h = hd.grid_h;
  out.grid_w = hd.grid_w;
  return out;
}

}  // namespace xcpipe::image
