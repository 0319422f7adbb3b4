// StageModel: the XComposer forward pass for one contiguous range of blocks (a pipeline
// stage), in libtorch. Holds only the weights of its blocks and the KV cache of the decoder
// layers it owns, on one compute device (StageOptions::device).
//
// Where tensors live:
//   CPU:  weights are the checkpoint's memory mapping (zero copy) unless cast to the compute
//         dtype, or copied into one huge-page arena (StageOptions::huge_pages).
//   CUDA: each weight is copied from the mapping to the device in the checkpoint's dtype and
//         cast there (no float32 detour on the host); its mapped pages are dropped as it goes
//         and the mapping is closed after the load, so no host copy is kept.
//   KV cache, RoPE tables and every activation of a step live on the device. Inputs given on
//   the host (token ids, pixels, hidden states received over TCP) are moved to the device at
//   the start of a step; outputs (hidden, logits, embeds) stay on the device: the caller
//   copies what must leave (logits for sampling, hidden states for a TCP hand-off).
//
// Kernels: one "generic" op sequence (device-agnostic libtorch calls) is what a CUDA device
// runs. A CPU stage adds its own fast paths (KernelPath::kCpuFast: a GEMV and an AVX-512
// kernel for decode rows, the huge-page arena, the BLAS/OpenMP thread policy);
// KernelPath::kGeneric turns them off, so the CPU can check exactly what a GPU will run.
//
// Stage contract (what travels between stages; docs/architecture.md, "Planes", data plane):
//   hidden [N, H]   packed rows of every sequence in the micro-batch, no padding
//   im_mask [N]     1 at image-embedding rows (XComposer2 Partial-LoRA applies there only)
//   segments        per sequence: id, rows in this step, first position (= tokens already cached)
// Positions are start_pos + row within the segment. Attention runs per sequence over its own
// cache, so prefill and decode rows of different sequences mix freely in one step.
//
// The first stage (embed block) takes token ids with -1 at image slots plus the image
// embeddings; the vision block turns pixel inputs into image embeddings; the last stage
// (head block) returns logits.
//
// Not thread-safe: one actor thread owns a StageModel. Errors are Status values; libtorch
// exceptions are caught at this boundary.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "xcpipe/base/status.h"
#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/model/compute.h"

namespace xcpipe::model {

// Contiguous blocks [begin, end) of ModelSpec::blocks.
struct BlockRange {
  size_t begin = 0;
  size_t end = 0;
  bool Contains(size_t block) const { return block >= begin && block < end; }
  bool empty() const { return end <= begin; }
};

struct StageOptions {
  // "cpu" or "cuda:K": every tensor of the stage lives there (see above).
  std::string device = "cpu";
  ComputeDType dtype = ComputeDType::kF32;
  // CPU fast paths or the generic op sequence; a CUDA device always runs kGeneric.
  KernelPath kernels = KernelPath::kCpuFast;
  // KV cache budget for this stage in bytes; sequences are refused beyond it (no OOM later).
  uint64_t kv_budget_bytes = uint64_t{1} << 30;
  // Touch every page of the mapped weights while loading, so "ready" means resident and the
  // first request does not pay for page faults. Reports (bytes done, bytes total) as it goes.
  bool prefault = true;  // CPU devices only (a CUDA load reads every page as it copies)
  // Copy the weights out of the file mapping (4 KiB pages) into one anonymous arena backed by
  // transparent huge pages (2 MiB), releasing each mapped tensor once copied (the peak stays at
  // one copy plus one tensor). A decode step streams every weight; on 4 KiB pages each one costs
  // a page-table walk, and after a stage sat idle while its neighbours computed those walks miss
  // the caches: measured on the small preset, decode 7% faster and a 4-stage pipeline's
  // per-token overhead halved (README, Pipeline speed). Skipped, weights used in place, where
  // the kernel has transparent huge pages off.
  bool huge_pages = true;  // CPU devices with KernelPath::kCpuFast only
  std::function<void(uint64_t, uint64_t)> on_progress;
  // Called between layers (decoder and vision) during long steps, on the calling thread: the
  // worker sends its heartbeats from here, so a long prefill is never mistaken for a hang.
  std::function<void()> between_layers;
  // Called after each decoder layer of a forward step with the time that layer took (every
  // decoder layer costs the same, so this compares the speed of workers holding different blocks).
  std::function<void(int64_t micros)> decoder_layer_timed;
};

// One image ready for the vision block. For non-HD models `pixels` is [3, S, S]; for HD
// models it is the padded HD image [3, gh*S, gw*S] and grid_h/grid_w give the tile grid.
struct ImageInput {
  at::Tensor pixels;  // float32
  int64_t grid_h = 1;
  int64_t grid_w = 1;
};

struct Segment {
  uint64_t sequence_id = 0;
  int64_t rows = 0;       // rows of this sequence in the step
  int64_t start_pos = 0;  // tokens already in this sequence's cache
};

struct StepInput {
  std::vector<Segment> segments;
  at::Tensor hidden;     // [N, H] when this stage does not hold the embed block; on the embed
                         // stage, given input embeddings replace the token lookup
  at::Tensor token_ids;  // [N] int64, -1 at image rows, when this stage holds the embed block
  std::vector<at::Tensor> image_embeds;  // [rows_i, H] per image, in slot order (embed stage)
  at::Tensor im_mask;    // [N] bool
  bool all_logits = false;      // last stage: logits for every row instead of the last per segment
  bool collect_hidden = false;  // keep every layer's output (fixture checks)
};

struct StepOutput {
  at::Tensor hidden;  // [N, H] output of the last layer held (before the final norm)
  at::Tensor logits;  // last stage: [segments, V] (or [N, V] with all_logits), float32
  at::Tensor embeds;  // embed stage: the input embeddings it built, [N, H]
  std::vector<at::Tensor> layer_outputs;  // collect_hidden: output of each held layer; the
                                          // final norm's output is appended on the last stage
};

class StageModel {
 public:
  // Loads the blocks in `range` from the checkpoint in `dir`, mapping only their tensors.
  static StatusOr<std::unique_ptr<StageModel>> Load(const std::filesystem::path& dir,
                                                    const checkpoint::ModelSpec& spec, BlockRange range,
                                                    const StageOptions& options);
  ~StageModel();
  StageModel(const StageModel&) = delete;
  StageModel& operator=(const StageModel&) = delete;

  const checkpoint::ModelSpec& spec() const;
  BlockRange range() const;
  bool holds_vision() const;
  bool holds_embed() const;
  bool holds_head() const;
  uint64_t weight_bytes() const;   // bytes of weights held (after any dtype cast)
  uint64_t mapped_bytes() const;   // bytes of the checkpoint mapped by this stage (0 once a
                                   // CUDA load has closed the mapping)
  const std::string& device() const;  // as given in StageOptions ("cpu", "cuda:K")
  ComputeDType dtype() const;
  // True when a step uses the CPU-only fast paths (a CPU device with KernelPath::kCpuFast).
  bool cpu_fast_paths() const;

  // Every tensor the stage holds between steps, named: weights as the checkpoint names them,
  // the tensors built from them at load ("built/..."), the KV cache ("kv/<seq>/k|v") and the
  // RoPE table ("rope/inv_freq", float32 by design, as the official code computes it). For
  // checks that everything lives on the stage's device in its dtype.
  void ForEachHeldTensor(const std::function<void(const std::string&, const at::Tensor&)>& fn) const;

  // Vision block: image embeddings [rows, H] for one image.
  StatusOr<at::Tensor> EncodeImage(const ImageInput& image);
  // Intermediate vision outputs of the last EncodeImage (fixture checks): tower hidden states
  // per layer ([images, tokens, C] each) and the features before the projector.
  struct VisionTrace {
    std::vector<at::Tensor> tower_hidden;  // index 0 = embeddings (after pre-norm for CLIP)
    at::Tensor features;                   // CLIP: [tokens, C or 4C]; 1.0: Q-Former output
    at::Tensor qformer_input;              // 1.0: ln_vision output
    std::vector<at::Tensor> qformer_hidden;
  };
  void set_trace_vision(bool on);
  const VisionTrace& vision_trace() const;

  // Reserves KV room for a sequence of up to max_tokens; ResourceExhausted when the budget
  // is full. A sequence must be reserved before its first step on stages with layers.
  Status ReserveSequence(uint64_t sequence_id, int64_t max_tokens);
  void ReleaseSequence(uint64_t sequence_id);
  void ReleaseAllSequences();
  bool HoldsSequence(uint64_t sequence_id) const;
  // Copies the KV of positions [0, rows) of `from` (a shared prompt prefix already stepped on
  // this stage) into `to`, so that `to` starts at position `rows` without recomputing them.
  // Both must be reserved; `from` must have stepped at least `rows` positions and `to` must
  // have room for them; FailedPrecondition otherwise (nothing is copied).
  Status CopyPrefix(uint64_t from, uint64_t to, int64_t rows);
  // A new plan may give the stage another budget; reservations already made are kept.
  void SetKvBudget(uint64_t bytes);
  uint64_t kv_bytes_per_token() const;
  uint64_t kv_bytes_reserved() const;
  // KV bytes holding cached tokens: each sequence's highest position stepped so far (monitoring).
  uint64_t kv_bytes_used() const;

  StatusOr<StepOutput> Forward(const StepInput& input);

  // Beam search: afterwards sequence ids[i] continues sequence ids[parent_of_each[i]] (an index
  // into ids) as that one stood before the call: its cache holds the parent's cached positions.
  // A permutation only swaps rooms (no copy). A parent continued by several sequences keeps its
  // room for one of them; the others get the rooms of sequences nobody continues, and the parent's
  // stepped positions are copied there before any room changes hands, so no source is overwritten
  // before it is read. Every id must be held, all with the same capacity (rooms move between them,
  // so each keeps its reserved size); InvalidArgument for sizes that differ, a repeated id or a
  // parent out of range, FailedPrecondition for an id not held or unequal capacities: nothing
  // changes then. Internal if a copy fails (the group's caches are then undefined).
  Status ReorderSequences(const std::vector<uint64_t>& ids, const std::vector<int64_t>& parent_of_each);

 private:
  StageModel();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Block range helpers over a spec.
BlockRange WholeModel(const checkpoint::ModelSpec& spec);

}  // namespace xcpipe::model
