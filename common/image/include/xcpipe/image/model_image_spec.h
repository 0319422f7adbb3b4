// Which preprocessing a checkpoint's images need, found from the checkpoint's own files:
// config.json and the safetensors headers (names and shapes only; no weight is read).
//
// The input side is never a constant: it comes from the model.
//   1.0       visual_encoder.pos_embed [1, P, C]: side = sqrt(P - 1) * patch (224 when P = 257).
//   2.0-VL    config.json "img_size" (490), cross-checked against the CLIP position table.
//             clip_vision_config.json "image_size" is the CLIP-L/14-336 base size, NOT the input.
//   4KHD/2.5  tile side S from the CLIP position table: rows = (S / patch)^2 + 1 (577 -> 336,
//             1601 -> 560). HD is recognised by the separator parameter plora_glb_GN.
//             4KHD vs 2.5: 2.5 carries video_mem_proj.* (OmniLive base) or builds every PLoRA
//             with r = 256; 4KHD builds wqkv's PLoRA with the class default r = 8.
// The patch size comes from the patch-embedding weight [C, 3, p, p].
//
// Thread-safe (reads files, keeps no state). Failures: NotFound for a missing config or shard,
// InvalidArgument for a checkpoint that fits no known version or whose files disagree (the
// message names the tensors and values that were seen).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "xcpipe/base/status.h"
#include "xcpipe/image/preprocess.h"

namespace xcpipe::image {

struct ModelImageSpec {
  std::string version;         // "ixc1", "ixc2-vl", "ixc2-4khd", "ixc2.5"
  bool hd = false;             // HD tiling (4KHD, 2.5) rather than one fixed-size resize
  int64_t input_size = 0;      // fixed-size side (1.0, VL) or HD tile side S
  HdVariant hd_variant = HdVariant::kXComposer2_4khd;  // meaningful when hd
  int64_t default_hd_num = 0;  // official chat() default: 25 (4KHD), 24 (2.5); 0 when not hd
  std::string evidence;        // what decided, for logs and error messages
};

StatusOr<ModelImageSpec> DetectModelImageSpec(const std::filesystem::path& checkpoint_dir);

// One image preprocessed the way `spec` says: what the coordinator sends to the vision stage.
struct PreprocessedImage {
  FloatImage pixel_values;  // fixed-size: [3, S, S]; HD: [3, grid_h * S, grid_w * S]
  int64_t grid_h = 1;       // HD tile grid (1 x 1 for fixed-size versions)
  int64_t grid_w = 1;
};
// hd_num <= 0 means the version's chat() default; it is ignored for fixed-size versions.
StatusOr<PreprocessedImage> PreprocessForModel(const RgbImage& image, const ModelImageSpec& spec, int64_t hd_num = 0);

// Tensor name -> shape for every tensor in the checkpoint (model.safetensors.index.json plus
// the shard headers, or a single model.safetensors). Reads only the headers (capped at
// 100 MiB each) and checks that each header is a JSON object of tensors with shapes.
StatusOr<std::map<std::string, std::vector<int64_t>>> ReadCheckpointTensorShapes(
    const std::filesystem::path& checkpoint_dir);

}  // namespace xcpipe::image
