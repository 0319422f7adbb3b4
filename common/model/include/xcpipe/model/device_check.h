// Checks of a compute device against the CPU, and its decode speed: what `xcpipe-worker
// compare-devices` and `xcpipe-worker bench-decode` run (bench/gpu_check.sh calls both on a GPU
// host). Device-agnostic: on a CPU-only build they run with device "cpu", which is how the
// tests prove the code a GPU host will run.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "xcpipe/base/status.h"
#include "xcpipe/model/compute.h"

namespace xcpipe::model {

struct DeviceComparisonOptions {
  std::string device = "cpu";               // the device under test
  ComputeDType dtype = ComputeDType::kF32;  // its dtype; the reference is always CPU float32
  KernelPath kernels = KernelPath::kGeneric;
  int64_t prompt_tokens = 24;
  int64_t new_tokens = 16;
  uint64_t seed = 1;  // pixels of the test image
};

// Loads the model at `dir` twice, whole: on the CPU in float32 with the CPU fast paths (the
// reference) and on options.device in options.dtype. Both encode one image (random pixels at
// the tower's size), prefill the same prompt (ids and the image rows) and decode greedily.
// Reports, as JSON: image_embeds_max_abs_diff, prompt_logits_max_abs_diff, tokens (both),
// tokens_identical, and topk_agreement (the share of prompt positions whose argmax on the
// device is among the reference's top 5). `passed`: float32 needs identical tokens and logits
// within 1e-3; 16-bit needs topk_agreement 1.
StatusOr<nlohmann::json> CompareWithCpu(const std::filesystem::path& dir, const DeviceComparisonOptions& options);

struct DecodeBenchOptions {
  std::string device = "cpu";
  ComputeDType dtype = ComputeDType::kBF16;
  KernelPath kernels = KernelPath::kGeneric;
  int64_t prompt_tokens = 32;
  int64_t new_tokens = 64;
  int runs = 3;
};

// Greedy decode of one sequence with the whole model on one device; each token's logits come
// back to the host as serving does. JSON: ms_per_token (median of runs), weight_bytes, and on a
// CUDA device copy_bandwidth_bytes_per_s (a device-to-device copy measured in the same run, by
// libtorch) and roofline_ms_per_token = weight bytes / that bandwidth, with ratio_to_roofline.
StatusOr<nlohmann::json> BenchDecode(const std::filesystem::path& dir, const DecodeBenchOptions& options);

}  // namespace xcpipe::model
