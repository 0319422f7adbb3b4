// The cluster a plan is made for: hosts, their GPUs (or CPU workers), the links between them,
// and the serving limits every stage must have room for. Parsed from a TOML cluster file
// (configs/cluster-*.toml); see those files for a commented example of every field.
//
//   [serving]                 # optional; flags of `xcpipe plan` override each value
//   max_sequences = 8         # sequences decoding at once (KV cache is sized for all of them)
//   max_context = 4096        # tokens per sequence, prompt + answer (capped at the model's limit)
//   max_images = 1            # images per request
//   hd_tiles = 25             # HD models (4KHD, 2.5): most tiles per image; default: the model's own
//   dtype = "bf16"            # weights, activations and KV cache: "bf16", "fp16" or "fp32"
//   prefill_chunk = 512       # prompt tokens one pipeline step carries
//   [planner]                 # optional
//   headroom_fraction = 0.10  # share of each device's memory a plan leaves free
//   vision_stage = "first"    # "first" (with the embeddings), "separate" (a stage of its own:
//                             # the first vision worker; unused devices that hold it encode
//                             # images too) or "auto" (the planner plans both and picks:
//                             # planner.h, ChooseVisionPlacement). Absent: "first" for the
//                             # serving coordinator, "auto" for `xcpipe plan`
//   [network]                 # required with more than one host
//   inter_host_gbps = 25      # link between hosts, gigabits per second
//   inter_host_latency_us = 50
//   [[hosts]]
//   name = "node-a"           # unique
//   address = "10.0.0.1"      # optional here; the coordinator uses it
//   intra_host_gbps = 256     # link between this host's devices, gigabits per second
//   [[hosts.gpus]]
//   device = "cuda:0"         # "cuda:N", or "cpu" / "cpu:N" for a CPU worker; unique per host
//   memory_gib = 24           # device memory (GiB = 2^30 bytes)
//   tflops = 165              # dense peak at the serving dtype; only relative speed matters
//   mem_bw_gbps = 1008        # memory bandwidth, gigabytes per second (as GPU specs quote it)
//   reserved_gib = 0.5        # optional: runtime's own memory (CUDA context, libraries)
//   model = "RTX 4090"        # optional, shown in the table
//
// Units: link speeds (`*_host_gbps`) are in gigabits per second, as NICs and PCIe/NVLink are
// quoted; memory bandwidth (`mem_bw_gbps`) in gigabytes per second, as GPU data sheets quote it.
//
// Parsing never throws and never aborts, whatever the bytes (it is fuzzed). Every error is an
// InvalidArgument that names the source, the field path and its line, e.g.
// "cluster.toml: hosts[1].gpus[0].memory_gib (line 14): must be a number > 0, got \"24GB\"".
// Unknown keys are errors too (a typo must not silently fall back to a default), with the
// nearest known key suggested. Value types; thread-compatible.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "xcpipe/base/status.h"
#include "xcpipe/checkpoint/tensor_table.h"

namespace xcpipe::planner {

inline constexpr double kBytesPerGib = 1024.0 * 1024.0 * 1024.0;

// Runtime memory a device keeps for itself when the file does not say (`reserved_gib`):
// a CUDA context with cuBLAS workspaces and NCCL buffers, or a CPU worker process with its
// libraries mapped. The CPU figure is measured: an xcpipe-worker registered and idle (libtorch,
// OpenBLAS and the rest mapped and touched, nothing loaded) is 156 MiB resident on Debian 12
// (coordinator/tests/plan_vs_reality_test.cpp checks the whole prediction against a cluster).
inline constexpr double kDefaultCudaReservedGib = 0.75;
inline constexpr double kDefaultCpuReservedGib = 0.16;
inline constexpr double kDefaultHeadroomFraction = 0.10;
inline constexpr double kDefaultIntraHostLatencyUs = 10.0;
inline constexpr double kDefaultInterHostLatencyUs = 50.0;

enum class VisionPlacement : uint8_t {
  kFirstStage,     // vision with the embeddings on stage 0 (the official layout)
  kSeparateStage,  // vision alone on stage 0; embeddings open stage 1
  kAuto,           // the planner plans both and picks one (ChooseVisionPlacement); a Plan
                   // always holds the placement it chose, never kAuto
};
std::string_view VisionPlacementName(VisionPlacement placement);  // "first", "separate", "auto"
std::optional<VisionPlacement> ParseVisionPlacement(std::string_view name);

struct GpuSpec {
  std::string device;  // "cuda:0", "cpu", "cpu:1"
  std::string model;   // free text for people ("RTX 4090"); may be empty
  double memory_gib = 0;
  double tflops = 0;
  double mem_bw_gbps = 0;   // GB/s
  double reserved_gib = 0;  // filled with the default for the device kind when absent

  bool is_cuda() const { return device.rfind("cuda", 0) == 0; }
  uint64_t capacity_bytes() const { return static_cast<uint64_t>(memory_gib * kBytesPerGib); }
  uint64_t reserved_bytes() const { return static_cast<uint64_t>(reserved_gib * kBytesPerGib); }
  // CUDA ordinal of "cuda:N"; nullopt for CPU devices.
  std::optional<int> cuda_index() const;
};

struct HostSpec {
  std::string name;
  std::string address;
  double intra_host_gbps = 0;  // Gbit/s between this host's devices (0 when it has one device)
  double intra_host_latency_us = kDefaultIntraHostLatencyUs;
  std::vector<GpuSpec> gpus;
};

struct NetworkSpec {
  double inter_host_gbps = 0;  // Gbit/s between hosts (0 when there is one host)
  double inter_host_latency_us = kDefaultInterHostLatencyUs;
};

// What a plan must have room for at once. Bigger limits need more KV cache and activations.
struct ServingLimits {
  int64_t max_sequences = 8;
  int64_t max_context = 4096;
  int64_t max_images = 1;
  std::optional<int64_t> hd_tiles;  // nullopt: the model's chat() default (25 for 4KHD, 24 for 2.5)
  checkpoint::DType dtype = checkpoint::DType::kBF16;
  int64_t prefill_chunk = 512;
};

struct PlannerSettings {
  double headroom_fraction = kDefaultHeadroomFraction;
  // kFirstStage when the file does not say: what the serving coordinator has always planned
  // with (`xcpipe plan` uses kAuto instead unless the file or --vision-stage names one).
  VisionPlacement vision = VisionPlacement::kFirstStage;
  bool vision_set = false;  // the file names vision_stage
};

struct ClusterSpec {
  std::string source;  // file name, for messages
  ServingLimits serving;
  PlannerSettings planner;
  NetworkSpec network;
  std::vector<HostSpec> hosts;

  size_t device_count() const;
};

// A device of the cluster by position: hosts[host].gpus[gpu].
struct DeviceRef {
  size_t host = 0;
  size_t gpu = 0;
  friend bool operator==(const DeviceRef&, const DeviceRef&) = default;
};

// Parses TOML text. `source_name` names the text in errors. Never throws.
StatusOr<ClusterSpec> ParseClusterToml(std::string_view text, std::string_view source_name);
// Reads and parses a file (NotFound when absent).
StatusOr<ClusterSpec> ReadClusterFile(const std::filesystem::path& path);
// Checks the invariants ParseClusterToml enforces, for specs built in code (tests, benches).
Status ValidateCluster(const ClusterSpec& cluster);
// Checks limits given by flags the same way the file's [serving] table is checked.
Status ValidateServingLimits(const ServingLimits& limits);

}  // namespace xcpipe::planner
