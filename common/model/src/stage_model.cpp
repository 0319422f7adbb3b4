#include "xcpipe/model/stage_model.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "ops.h"
#include "xcpipe/checkpoint/safetensors.h"

namespace xcpipe::model {

using checkpoint::BlockKind;
using checkpoint::ModelArch;
using checkpoint::ModelSpec;

namespace {

at::ScalarType ToTorch(checkpoint::DType d) {
  switch (d) {
    case checkpoint::DType::kF32: return at::kFloat;
    case checkpoint::DType::kF16: return at::kHalf;
    case checkpoint::DType::kBF16: return at::kBFloat16;
    case checkpoint::DType::kF64: return at::kDouble;
    case checkpoint::DType::kI64: return at::kLong;
    case checkpoint::DType::kI32: return at::kInt;
    case checkpoint::DType::kI16: return at::kShort;
    case checkpoint::DType::kI8: return at::kChar;
    case checkpoint::DType::kU8: return at::kByte;
    case checkpoint::DType::kBool: return at::kBool;
  }
  return at::kFloat;
}

// Thread policy of a Forward step (libtorch 1.13 starts with one intra-op thread here).
// libtorch runs its own operators on an OpenMP team sized by at::set_num_threads; OpenBLAS runs the projections on its own pthread
// pool, which defaults to every core and ignores at::set_num_threads. Measured with
// bench/decode_bench on 2 cores: a worker started with --threads 1 still ran 2 BLAS threads (two
// workers ran 4 on 2 cores), and at 2 threads a decode step took 3x and a 320-token prefill 1.5x
// as long as at 1 thread: after each parallel region the OpenMP team spin-waits on the core
// that OpenBLAS's second thread needs. So OpenBLAS follows at::get_num_threads() (a worker's
// --threads bounds both pools), and during a step libtorch's own operators (element-wise,
// norms, softmax: small next to the projections) run on the calling thread while the BLAS
// calls, which are the work, get the threads (at 2 threads: a 320-token prefill ~850 -> ~340 ms,
// and the decode step no longer slower than at 1 thread). Looked up at run time: no-ops when
// the BLAS is not OpenBLAS or libtorch was built without OpenMP.
class StepThreads {
 public:
  StepThreads() {
    using SetFn = void (*)(int);
    using GetFn = int (*)();
    static const auto blas_set = reinterpret_cast<SetFn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
    static const auto blas_get = reinterpret_cast<GetFn>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
    static const auto omp_set = reinterpret_cast<SetFn>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"));
    const int threads = at::get_num_threads();
    if (blas_set != nullptr && blas_get != nullptr && blas_get() != threads) blas_set(threads);
    if (omp_set != nullptr && threads > 1) {
      omp_set_ = omp_set;
      omp_set_(1);
      restore_ = threads;
    }
  }
  ~StepThreads() {
    if (restore_ > 0) omp_set_(restore_);
  }
  StepThreads(const StepThreads&) = delete;
  StepThreads& operator=(const StepThreads&) = delete;

 private:
  void (*omp_set_)(int) = nullptr;
  int restore_ = 0;
};

bool IsFloating(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble; }

// Weights of one decoder layer. PLoRA (2.x) keeps A/B apart (applied at image rows only);
// LoRA (1.0) is merged into W at load (it applies to every token).
struct Projection {
  at::Tensor w, b, lora_a, lora_b;
  double lora_scale = 0.0;
};

struct DecoderLayer {
  int64_t index = 0;
  at::Tensor attn_norm, ffn_norm;
  Projection wqkv;             // 2.x packed q/k/v
  Projection q, k, v;          // 1.0
  Projection wo, w1, w2, w3;   // 2.x: wo, w1 (gate), w2 (down), w3 (up); 1.0: o, gate, down, up
};

struct ClipLayer {
  at::Tensor ln1_w, ln1_b, ln2_w, ln2_b, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, fc1_w, fc1_b, fc2_w, fc2_b;
};

struct EvaBlock {
  at::Tensor norm1_w, norm1_b, norm2_w, norm2_b, qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b;
};

struct BertAttention {
  at::Tensor q_w, q_b, k_w, k_b, v_w, v_b, dense_w, dense_b, ln_w, ln_b;
};

struct QformerLayer {
  BertAttention self_attn;
  bool has_cross = false;
  BertAttention cross_attn;
  at::Tensor inter_w, inter_b, out_w, out_b, out_ln_w, out_ln_b;
};

struct SequenceCache {
  at::Tensor k;  // [layers_held, kv_heads, capacity, head_dim]
  at::Tensor v;
  int64_t capacity = 0;
  uint64_t bytes = 0;
  int64_t filled = 0;  // tokens written so far (monitoring)
};

}  // namespace

// Whether the kernel gives anonymous memory transparent huge pages when asked (madvise mode) or
// always: /sys/kernel/mm/transparent_hugepage/enabled names the mode in brackets.
bool HugePagesAvailable() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string mode((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return mode.find("[always]") != std::string::npos || mode.find("[madvise]") != std::string::npos;
}

struct StageModel::Impl {
  ModelSpec spec;
  BlockRange range;
  StageOptions options;
  at::ScalarType dtype = at::kFloat;
  at::Device device{at::kCPU};
  bool cpu_fast = true;  // a CPU device with KernelPath::kCpuFast: the CPU-only fast paths apply
  // Device (and dtype) options for tensors the stage creates.
  at::TensorOptions On(at::ScalarType t) const { return at::TensorOptions().dtype(t).device(device); }
  at::Tensor Lin(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {}) const {
    return ops::Linear(x, w, b, cpu_fast);
  }
  std::unique_ptr<checkpoint::MappedCheckpoint> mapped;
  // See StageOptions::huge_pages: copies every weight into one THP-backed arena (owned by the
  // tensors), dropping the mapped pages of each tensor once copied; reports load progress.
  void MoveWeightsToHugePages();
  std::map<std::string, at::Tensor> weights;
  uint64_t weight_bytes = 0;

  bool has_vision = false, has_embed = false, has_head = false;
  std::vector<DecoderLayer> layers;

  // Vision (2.x CLIP).
  at::Tensor clip_class, clip_patch, clip_pos, clip_pre_w, clip_pre_b;
  std::vector<ClipLayer> clip_layers;
  at::Tensor proj0_w, proj0_b, proj2_w, proj2_b, glb_gn, sub_gn;
  // Vision (1.0).
  at::Tensor eva_patch_w, eva_patch_b, eva_cls, eva_pos, ln_vision_w, ln_vision_b;
  std::vector<EvaBlock> eva_blocks;
  at::Tensor query_tokens, qf_ln_w, qf_ln_b, llm_proj_w, llm_proj_b, flag_start, flag_end;
  std::vector<QformerLayer> qformer_layers;
  bool trace_vision = false;
  VisionTrace trace;

  at::Tensor embed;
  at::Tensor final_norm, lm_head;

  std::map<uint64_t, SequenceCache> caches;
  uint64_t kv_reserved = 0;

  // Rotary tables, grown on demand: inv_freq [d/2] fp32.
  at::Tensor inv_freq;

  Status Load(const std::filesystem::path& dir);
  at::Tensor Get(const std::string& name) const;
  at::Tensor GetOptional(const std::string& name) const;
  Projection GetProjection(const std::string& prefix, const std::string& lora_key, bool merge_lora) const;
  at::Tensor ApplyProjection(const Projection& p, const at::Tensor& x, const at::Tensor& image_rows) const;

  at::Tensor RopeCosSin(const at::Tensor& positions, int64_t total_len, bool sin) const;
  at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const;
  at::Tensor LayerForward(size_t layer_slot, const DecoderLayer& layer, const at::Tensor& h,
                          const std::vector<Segment>& segments, const at::Tensor& image_rows,
                          const at::Tensor& cos, const at::Tensor& sin);

  StatusOr<at::Tensor> EncodeClip(const ImageInput& image);
  StatusOr<at::Tensor> EncodeEva(const ImageInput& image);
  at::Tensor ClipTower(const at::Tensor& pixels);
  at::Tensor BertAttend(const BertAttention& a, const at::Tensor& h, const at::Tensor& context, int64_t heads) const;
};

at::Tensor StageModel::Impl::Get(const std::string& name) const {
  auto it = weights.find(name);
  TORCH_CHECK(it != weights.end(), "tensor '", name, "' is not held by this stage");
  return it->second;
}

at::Tensor StageModel::Impl::GetOptional(const std::string& name) const {
  auto it = weights.find(name);
  return it == weights.end() ? at::Tensor() : it->second;
}



Projection StageModel::Impl::GetProjection(const std::string& prefix, const std::string& lora_key,
                                           bool merge_lora) const {
  Projection p;
  p.w = Get(prefix + ".weight");
  p.b = GetOptional(prefix + ".bias");
  auto lora = spec.llm.lora.find(lora_key);
  if (lora == spec.llm.lora.end()) return p;
  // 2.x names its adapters Plora_A/Plora_B; 1.0 lora_A/lora_B.
  at::Tensor a = GetOptional(prefix + ".Plora_A.weight");
  at::Tensor b = GetOptional(prefix + ".Plora_B.weight");
  if (!a.defined()) {
    a = GetOptional(prefix + ".lora_A.weight");
    b = GetOptional(prefix + ".lora_B.weight");
  }
  if (!a.defined() || !b.defined()) return p;
  if (merge_lora) {
    // W + s * B A, computed in fp32 (the official LoRA path runs in fp32).
    at::Tensor merged = p.w.to(at::kFloat) + lora->second.scale * at::matmul(b.to(at::kFloat), a.to(at::kFloat));
    p.w = merged.to(p.w.scalar_type()).contiguous();
  } else {
    p.lora_a = a;
    p.lora_b = b;
    p.lora_scale = lora->second.scale;
  }
  return p;
}

at::Tensor StageModel::Impl::ApplyProjection(const Projection& p, const at::Tensor& x,
                                             const at::Tensor& image_rows) const {
  at::Tensor y = Lin(x, p.w, p.b);
  if (p.lora_a.defined() && image_rows.defined() && image_rows.numel() > 0) {
    at::Tensor xi = x.index_select(0, image_rows);
    at::Tensor delta = Lin(Lin(xi, p.lora_a), p.lora_b);
    if (p.lora_scale != 1.0) delta = delta * p.lora_scale;
    y.index_add_(0, image_rows, delta);
  }
  return y;
}

void StageModel::Impl::MoveWeightsToHugePages() {
  constexpr size_t kHugePage = size_t{2} << 20, kAlign = 64;
  size_t total = 0;
  for (const auto& [name, t] : weights) total += (static_cast<size_t>(t.nbytes()) + kAlign - 1) / kAlign * kAlign;
  if (total == 0) return;
  const size_t size = (total + kHugePage - 1) / kHugePage * kHugePage;
  void* raw = std::aligned_alloc(kHugePage, size);
  if (raw == nullptr) return;  // keep computing on the mapping
  std::shared_ptr<uint8_t> arena(static_cast<uint8_t*>(raw), [](uint8_t* p) { std::free(p); });
  if (::madvise(raw, size, MADV_HUGEPAGE) != 0) return;  // the arena goes; the mapping stays in use
  const long page = ::sysconf(_SC_PAGESIZE);
  uint64_t done = 0, reported = 0;
  size_t used = 0;
  for (auto& [name, t] : weights) {
    at::Tensor src = t.contiguous();
    const size_t n = static_cast<size_t>(src.nbytes());
    uint8_t* dst = arena.get() + used;
    std::memcpy(dst, src.data_ptr(), n);
    used += (n + kAlign - 1) / kAlign * kAlign;
    t = at::from_blob(dst, src.sizes(), [arena](void*) {}, src.options());
    // The mapped pages of this tensor are not needed any more: drop them from this process
    // (whole pages inside the tensor only; a neighbour's page may still be read).
    auto view = mapped->Get(name);
    if (view.ok()) {
      const auto begin = reinterpret_cast<uintptr_t>(view->data);
      const uintptr_t first = (begin + page - 1) / page * page, last = (begin + n) / page * page;
      if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
    }
    done += n;
    if (options.on_progress && (done - reported >= (uint64_t{256} << 20))) {
      options.on_progress(done, total);
      reported = done;
    }
  }
  if (options.on_progress) options.on_progress(total, total);
}

Status StageModel::Impl::Load(const std::filesystem::path& dir) {
  std::set<std::string> wanted;
  for (size_t b = range.begin; b < range.end; ++b) {
    const auto& block = spec.blocks[b];
    for (const auto& t : block.tensors) wanted.insert(t.name);
    has_vision |= block.kind == BlockKind::kVision;
    has_embed |= block.kind == BlockKind::kEmbed;
    has_head |= block.kind == BlockKind::kHead;
  }
  auto opened = checkpoint::MappedCheckpoint::Open(dir, [&](const std::string& n) { return wanted.count(n) > 0; });
  if (!opened.ok()) return opened.status().WithContext("loading blocks [" + std::to_string(range.begin) + ", " +
                                                       std::to_string(range.end) + ")");
  mapped = std::move(opened).value();
  const bool copy_to_huge_pages = cpu_fast && options.huge_pages && HugePagesAvailable();
  if (device.is_cpu() && options.prefault && !copy_to_huge_pages) {
    // Read one byte per page: the kernel maps the weights in now, with progress reported.
    const uint64_t total = mapped->tensor_bytes();
    uint64_t done = 0, reported = 0;
    volatile uint8_t sink = 0;
    const size_t page = 4096;
    for (const std::string& name : mapped->Names()) {
      auto view = mapped->Get(name);
      if (!view.ok()) continue;
      const auto* bytes = static_cast<const uint8_t*>(view->data);
      const uint64_t n = view->info->bytes();
      for (uint64_t off = 0; off < n; off += page) sink = sink + bytes[off];
      done += n;
      if (options.on_progress && (done - reported >= (uint64_t{256} << 20) || done == total)) {
        options.on_progress(done, total);
        reported = done;
      }
    }
    if (options.on_progress && reported != total) options.on_progress(total, total);
  }
  const long page = ::sysconf(_SC_PAGESIZE);
  const uint64_t total_bytes = mapped->tensor_bytes();
  uint64_t copied = 0, reported = 0;
  for (const std::string& name : mapped->Names()) {
    auto view = mapped->Get(name);
    if (!view.ok()) return view.status();
    const auto& info = *view->info;
    at::Tensor t = at::from_blob(const_cast<void*>(view->data), info.shape,
                                 at::TensorOptions().dtype(ToTorch(info.dtype)));
    if (!device.is_cpu()) {
      // The checkpoint's bytes as they are to the device, then the cast there: the host never
      // holds a converted copy. The mapped pages go once copied (whole pages only: a
      // neighbour's page may still be read); the mapping itself closes after the load.
      t = t.to(device);
      if (IsFloating(t.scalar_type()) && t.scalar_type() != dtype) t = t.to(dtype);
      const auto begin = reinterpret_cast<uintptr_t>(view->data);
      const uintptr_t first = (begin + page - 1) / page * page, last = (begin + info.bytes()) / page * page;
      if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
      copied += info.bytes();
      if (options.on_progress && (copied - reported >= (uint64_t{256} << 20) || copied == total_bytes)) {
        options.on_progress(copied, total_bytes);
        reported = copied;
      }
    } else if (IsFloating(t.scalar_type()) && t.scalar_type() != dtype) {
      t = t.to(dtype);
    }
    weight_bytes += static_cast<uint64_t>(t.numel()) * t.element_size();
    weights.emplace(name, std::move(t));
  }
  if (copy_to_huge_pages) MoveWeightsToHugePages();

  const bool v1 = spec.arch == ModelArch::kIxc1;
  const std::string llm = v1 ? "internlm_model.model." : "model.";
  for (size_t b = range.begin; b < range.end; ++b) {
    const auto& block = spec.blocks[b];
    if (block.kind != BlockKind::kLayer) continue;
    DecoderLayer L;
    L.index = block.layer;
    const std::string p = llm + "layers." + std::to_string(block.layer) + ".";
    if (v1) {
      L.attn_norm = Get(p + "input_layernorm.weight");
      L.ffn_norm = Get(p + "post_attention_layernorm.weight");
      L.q = GetProjection(p + "self_attn.q_proj", "q_proj", true);
      L.k = GetProjection(p + "self_attn.k_proj", "k_proj", true);
      L.v = GetProjection(p + "self_attn.v_proj", "v_proj", true);
      L.wo = GetProjection(p + "self_attn.o_proj", "o_proj", true);
      L.w1 = GetProjection(p + "mlp.gate_proj", "gate_proj", true);
      L.w2 = GetProjection(p + "mlp.down_proj", "down_proj", true);
      L.w3 = GetProjection(p + "mlp.up_proj", "up_proj", true);
    } else {
      L.attn_norm = Get(p + "attention_norm.weight");
      L.ffn_norm = Get(p + "ffn_norm.weight");
      L.wqkv = GetProjection(p + "attention.wqkv", "wqkv", false);
      L.wo = GetProjection(p + "attention.wo", "wo", false);
      L.w1 = GetProjection(p + "feed_forward.w1", "w1", false);
      L.w2 = GetProjection(p + "feed_forward.w2", "w2", false);
      L.w3 = GetProjection(p + "feed_forward.w3", "w3", false);
    }
    layers.push_back(std::move(L));
  }
  if (has_embed) embed = Get(v1 ? "internlm_model.model.embed_tokens.weight" : "model.tok_embeddings.weight");
  if (has_head) {
    final_norm = Get(v1 ? "internlm_model.model.norm.weight" : "model.norm.weight");
    lm_head = Get(v1 ? "internlm_model.lm_head.weight" : "output.weight");
  }
  if (has_vision) {
    if (v1) {
      const std::string e = "visual_encoder.";
      eva_patch_w = Get(e + "patch_embed.proj.weight");
      eva_patch_b = Get(e + "patch_embed.proj.bias");
      eva_cls = Get(e + "cls_token");
      eva_pos = Get(e + "pos_embed");
      for (int64_t i = 0; i < spec.vision.layers; ++i) {
        const std::string p = e + "blocks." + std::to_string(i) + ".";
        EvaBlock B;
        B.norm1_w = Get(p + "norm1.weight"); B.norm1_b = Get(p + "norm1.bias");
        B.norm2_w = Get(p + "norm2.weight"); B.norm2_b = Get(p + "norm2.bias");
        B.qkv_w = Get(p + "attn.qkv.weight");
        at::Tensor qb = Get(p + "attn.q_bias"), vb = Get(p + "attn.v_bias");
        B.qkv_b = at::cat({qb, at::zeros_like(vb), vb});  // K has no bias
        B.proj_w = Get(p + "attn.proj.weight"); B.proj_b = Get(p + "attn.proj.bias");
        B.fc1_w = Get(p + "mlp.fc1.weight"); B.fc1_b = Get(p + "mlp.fc1.bias");
        B.fc2_w = Get(p + "mlp.fc2.weight"); B.fc2_b = Get(p + "mlp.fc2.bias");
        eva_blocks.push_back(std::move(B));
      }
      ln_vision_w = Get("ln_vision.weight");
      ln_vision_b = Get("ln_vision.bias");
      query_tokens = Get("query_tokens");
      qf_ln_w = Get("Qformer.bert.embeddings.LayerNorm.weight");
      qf_ln_b = Get("Qformer.bert.embeddings.LayerNorm.bias");
      auto bert = [&](const std::string& p) {
        BertAttention a;
        a.q_w = Get(p + "self.query.weight"); a.q_b = Get(p + "self.query.bias");
        a.k_w = Get(p + "self.key.weight"); a.k_b = Get(p + "self.key.bias");
        a.v_w = Get(p + "self.value.weight"); a.v_b = Get(p + "self.value.bias");
        a.dense_w = Get(p + "output.dense.weight"); a.dense_b = Get(p + "output.dense.bias");
        a.ln_w = Get(p + "output.LayerNorm.weight"); a.ln_b = Get(p + "output.LayerNorm.bias");
        return a;
      };
      for (int64_t j = 0; j < spec.vision.qformer_layers; ++j) {
        const std::string p = "Qformer.bert.encoder.layer." + std::to_string(j) + ".";
        QformerLayer Q;
        Q.self_attn = bert(p + "attention.");
        Q.has_cross = weights.count(p + "crossattention.self.query.weight") > 0;
        if (Q.has_cross) Q.cross_attn = bert(p + "crossattention.");
        Q.inter_w = Get(p + "intermediate_query.dense.weight"); Q.inter_b = Get(p + "intermediate_query.dense.bias");
        Q.out_w = Get(p + "output_query.dense.weight"); Q.out_b = Get(p + "output_query.dense.bias");
        Q.out_ln_w = Get(p + "output_query.LayerNorm.weight"); Q.out_ln_b = Get(p + "output_query.LayerNorm.bias");
        qformer_layers.push_back(std::move(Q));
      }
      llm_proj_w = Get("internlm_proj.weight");
      llm_proj_b = Get("internlm_proj.bias");
      flag_start = Get("flag_image_start");
      flag_end = Get("flag_image_end");
    } else {
      const std::string c = "vit.vision_tower.vision_model.";
      clip_class = Get(c + "embeddings.class_embedding");
      clip_patch = Get(c + "embeddings.patch_embedding.weight");
      clip_pos = Get(c + "embeddings.position_embedding.weight");
      clip_pre_w = Get(c + "pre_layrnorm.weight");
      clip_pre_b = Get(c + "pre_layrnorm.bias");
      for (int64_t i = 0; i < spec.vision.layers; ++i) {
        const std::string p = c + "encoder.layers." + std::to_string(i) + ".";
        ClipLayer L;
        L.ln1_w = Get(p + "layer_norm1.weight"); L.ln1_b = Get(p + "layer_norm1.bias");
        L.ln2_w = Get(p + "layer_norm2.weight"); L.ln2_b = Get(p + "layer_norm2.bias");
        L.q_w = Get(p + "self_attn.q_proj.weight"); L.q_b = Get(p + "self_attn.q_proj.bias");
        L.k_w = Get(p + "self_attn.k_proj.weight"); L.k_b = Get(p + "self_attn.k_proj.bias");
        L.v_w = Get(p + "self_attn.v_proj.weight"); L.v_b = Get(p + "self_attn.v_proj.bias");
        L.o_w = Get(p + "self_attn.out_proj.weight"); L.o_b = Get(p + "self_attn.out_proj.bias");
        L.fc1_w = Get(p + "mlp.fc1.weight"); L.fc1_b = Get(p + "mlp.fc1.bias");
        L.fc2_w = Get(p + "mlp.fc2.weight"); L.fc2_b = Get(p + "mlp.fc2.bias");
        clip_layers.push_back(std::move(L));
      }
      proj0_w = Get("vision_proj.0.weight"); proj0_b = Get("vision_proj.0.bias");
      proj2_w = Get("vision_proj.2.weight"); proj2_b = Get("vision_proj.2.bias");
      if (spec.vision.hd) {
        glb_gn = Get("plora_glb_GN").reshape({-1});
        sub_gn = Get("plora_sub_GN").reshape({-1});
      }
    }
  }
  // inv_freq[i] = theta^(-2i/d), in fp32 as the official code computes it.
  const int64_t d = spec.llm.head_dim;
  inv_freq = 1.0 / at::pow(spec.llm.rope_theta, at::arange(0, d, 2, On(at::kFloat)) / static_cast<double>(d));
  // On a CUDA device every weight is a device copy now: nothing reads the mapping any more.
  if (!device.is_cpu()) mapped.reset();
  return OkStatus();
}

// cos or sin of every row's position, [N, d], in fp32 then cast to the compute dtype.
at::Tensor StageModel::Impl::RopeCosSin(const at::Tensor& positions, int64_t total_len, bool want_sin) const {
  at::Tensor freq = inv_freq;
  const auto& llm = spec.llm;
  double scale_positions = 1.0;
  if (llm.rope_scaling == checkpoint::RopeScaling::kDynamic && total_len > llm.max_position_embeddings) {
    // Dynamic NTK: a larger base once the sequence outgrows the trained length.
    const double d = static_cast<double>(llm.head_dim);
    const double base = llm.rope_theta *
                        std::pow(llm.rope_scaling_factor * total_len / llm.max_position_embeddings -
                                     (llm.rope_scaling_factor - 1.0),
                                 d / (d - 2.0));
    freq = 1.0 / at::pow(base, at::arange(0, llm.head_dim, 2, On(at::kFloat)) / d);
  } else if (llm.rope_scaling == checkpoint::RopeScaling::kLinear) {
    scale_positions = 1.0 / llm.rope_scaling_factor;
  }
  at::Tensor t = positions.to(at::kFloat);
  if (scale_positions != 1.0) t = t * scale_positions;
  at::Tensor freqs = at::outer(t, freq);
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  return (want_sin ? emb.sin() : emb.cos()).to(dtype);
}

at::Tensor StageModel::Impl::ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const {
  // x: [N, heads, d]; cos/sin: [N, d].
  at::Tensor c = cos.unsqueeze(1), s = sin.unsqueeze(1);
  return x * c + ops::RotateHalf(x) * s;
}

at::Tensor StageModel::Impl::LayerForward(size_t slot, const DecoderLayer& L, const at::Tensor& h,
                                          const std::vector<Segment>& segments, const at::Tensor& image_rows,
                                          const at::Tensor& cos, const at::Tensor& sin) {
  const auto& llm = spec.llm;
  const int64_t N = h.size(0), nh = llm.heads, nkv = llm.kv_heads, d = llm.head_dim;
  at::Tensor x = ops::RmsNorm(h, L.attn_norm, llm.rms_eps);
  at::Tensor q, k, v;
  if (spec.arch == ModelArch::kIxc1) {
    q = ApplyProjection(L.q, x, {}).view({N, nh, d});
    k = ApplyProjection(L.k, x, {}).view({N, nkv, d});
    v = ApplyProjection(L.v, x, {}).view({N, nkv, d});
  } else {
    // wqkv rows are grouped by KV head: [nkv, g query heads + K + V, d].
    const int64_t g = nh / nkv;
    at::Tensor qkv = ApplyProjection(L.wqkv, x, image_rows).view({N, nkv, g + 2, d});
    q = qkv.narrow(2, 0, g).reshape({N, nh, d});
    k = qkv.select(2, g);
    v = qkv.select(2, g + 1);
  }
  q = ApplyRope(q, cos, sin);
  k = ApplyRope(k, cos, sin);

  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  at::Tensor attn_out = at::empty({N, nh * d}, h.options());
  int64_t offset = 0;
  for (const auto& s : segments) {
    auto& cache = caches.at(s.sequence_id);
    at::Tensor ck = cache.k.select(0, static_cast<int64_t>(slot));  // [nkv, cap, d]
    at::Tensor cv = cache.v.select(0, static_cast<int64_t>(slot));
    ck.narrow(1, s.start_pos, s.rows).copy_(k.narrow(0, offset, s.rows).transpose(0, 1));
    cv.narrow(1, s.start_pos, s.rows).copy_(v.narrow(0, offset, s.rows).transpose(0, 1));
    const int64_t total = s.start_pos + s.rows;
    at::Tensor keys = ck.narrow(1, 0, total), values = cv.narrow(1, 0, total);
    if (s.rows == 1 && nh != nkv) {
      // One decode row: the g query heads of a KV head attend together ([nkv, g, d] against
      // [nkv, total, d]; no causal mask for the last position), so the cache is read in place
      // instead of copied g times by repeat_interleave.
      at::Tensor qg = q.narrow(0, offset, 1).view({nkv, nh / nkv, d});
      at::Tensor o = ops::Attention(qg, keys, values, scale, -1);  // [nkv, g, d]
      attn_out.narrow(0, offset, 1).copy_(o.reshape({1, nh * d}));
      offset += 1;
      continue;
    }
    if (nh != nkv) {
      // Several rows: the g query heads of a KV head are stacked ([nkv, g * t, d]) and attend
      // to the cache in place, as one decode row does. Copying the cache g times instead
      // (repeat_interleave) costs a pass over the whole context per layer: a prompt piece's
      // step would grow with the context already prefilled.
      const int64_t g = nh / nkv, t = s.rows;
      at::Tensor qg = q.narrow(0, offset, t).view({t, nkv, g, d}).permute({1, 2, 0, 3}).reshape({nkv, g * t, d});
      at::Tensor o = ops::Attention(qg, keys, values, scale, s.start_pos, t);  // [nkv, g * t, d]
      attn_out.narrow(0, offset, t).copy_(o.view({nkv, g, t, d}).permute({2, 0, 1, 3}).reshape({t, nh * d}));
      offset += t;
      continue;
    }
    at::Tensor qs = q.narrow(0, offset, s.rows).transpose(0, 1);  // [nh, t, d]
    at::Tensor o = ops::Attention(qs, keys, values, scale, s.start_pos);  // [nh, t, d]
    attn_out.narrow(0, offset, s.rows).copy_(o.transpose(0, 1).reshape({s.rows, nh * d}));
    offset += s.rows;
  }
  at::Tensor hidden = h + ApplyProjection(L.wo, attn_out, image_rows);
  x = ops::RmsNorm(hidden, L.ffn_norm, llm.rms_eps);
  at::Tensor gate = ApplyProjection(L.w1, x, image_rows);
  at::Tensor up = ApplyProjection(L.w3, x, image_rows);
  return hidden + ApplyProjection(L.w2, at::silu(gate) * up, image_rows);
}

at::Tensor StageModel::Impl::ClipTower(const at::Tensor& pixels) {
  // pixels: [B, 3, S, S] in the compute dtype.
  const int64_t B = pixels.size(0), C = spec.vision.width, heads = spec.vision.heads;
  at::Tensor x = at::conv2d(pixels, clip_patch, {}, spec.vision.patch);  // [B, C, n, n]
  x = x.flatten(2).transpose(1, 2);                                      // [B, n², C]
  at::Tensor cls = clip_class.view({1, 1, C}).expand({B, 1, C});
  x = at::cat({cls, x}, 1);
  x = x + clip_pos.narrow(0, 0, x.size(1)).unsqueeze(0);
  x = ops::LayerNorm(x, clip_pre_w, clip_pre_b, spec.vision.eps);
  if (trace_vision) trace.tower_hidden.push_back(x);
  const int64_t T = x.size(1), hd = C / heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  for (const auto& L : clip_layers) {
    at::Tensor r = x;
    at::Tensor y = ops::LayerNorm(x, L.ln1_w, L.ln1_b, spec.vision.eps);
    at::Tensor q = Lin(y, L.q_w, L.q_b).view({B, T, heads, hd}).transpose(1, 2);
    at::Tensor k = Lin(y, L.k_w, L.k_b).view({B, T, heads, hd}).transpose(1, 2);
    at::Tensor v = Lin(y, L.v_w, L.v_b).view({B, T, heads, hd}).transpose(1, 2);
    at::Tensor o = ops::Attention(q, k, v, scale, -1).transpose(1, 2).reshape({B, T, C});
    x = r + Lin(o, L.o_w, L.o_b);
    r = x;
    y = ops::LayerNorm(x, L.ln2_w, L.ln2_b, spec.vision.eps);
    x = r + Lin(ops::QuickGelu(Lin(y, L.fc1_w, L.fc1_b)), L.fc2_w, L.fc2_b);
    if (trace_vision) trace.tower_hidden.push_back(x);
    if (options.between_layers) options.between_layers();
  }
  return x;
}

StatusOr<at::Tensor> StageModel::Impl::EncodeClip(const ImageInput& image) {
  const int64_t S = spec.vision.image_size;
  at::Tensor px = image.pixels;
  if (px.dim() != 3 || px.size(0) != 3) {
    return InvalidArgumentError("image pixels must be [3, H, W]");
  }
  if (!spec.vision.hd) {
    if (px.size(1) != S || px.size(2) != S) {
      return InvalidArgumentError("image pixels are " + std::to_string(px.size(1)) + "x" + std::to_string(px.size(2)) +
                                  ", expected " + std::to_string(S) + "x" + std::to_string(S));
    }
    at::Tensor feats = ClipTower(px.to(device).unsqueeze(0).to(dtype));
    at::Tensor f = feats.select(0, 0).narrow(0, 1, feats.size(1) - 1);  // drop CLS
    if (trace_vision) trace.features = f;
    return Lin(ops::GeluErf(Lin(f, proj0_w, proj0_b)), proj2_w, proj2_b);
  }
  const int64_t gh = image.grid_h, gw = image.grid_w;
  if (gh < 1 || gw < 1 || px.size(1) != gh * S || px.size(2) != gw * S) {
    return InvalidArgumentError("HD image is " + std::to_string(px.size(1)) + "x" + std::to_string(px.size(2)) +
                                ", expected the " + std::to_string(gh) + "x" + std::to_string(gw) + " grid of " +
                                std::to_string(S) + " px tiles");
  }
  // Global view: bicubic (A = -0.75, align_corners=False, no antialias) in fp32, as the official code.
  at::Tensor pf = px.to(device).to(at::kFloat).unsqueeze(0);
  at::Tensor global = at::upsample_bicubic2d(pf, {S, S}, /*align_corners=*/false);
  at::Tensor tiles = pf.view({3, gh, S, gw, S}).permute({1, 3, 0, 2, 4}).reshape({gh * gw, 3, S, S});
  at::Tensor inputs = at::cat({global, tiles}, 0).to(dtype);
  at::Tensor out = ClipTower(inputs);
  const int64_t n = S / spec.vision.patch, m = n / 2, C = spec.vision.width;
  at::Tensor f = out.narrow(1, 1, n * n).reshape({1 + gh * gw, m, 2, m, 2, C});
  f = f.permute({0, 1, 3, 2, 4, 5}).reshape({1 + gh * gw, m, m, 4 * C});  // 2x2 merge
  at::Tensor sub = sub_gn.view({1, 1, 4 * C});
  at::Tensor glb_rows = at::cat({f.select(0, 0), sub.expand({m, 1, 4 * C})}, 1).reshape({-1, 4 * C});
  at::Tensor grid = f.narrow(0, 1, gh * gw).view({gh, gw, m, m, 4 * C}).permute({0, 2, 1, 3, 4})
                        .reshape({gh * m, gw * m, 4 * C});
  at::Tensor sub_rows = at::cat({grid, sub.expand({gh * m, 1, 4 * C})}, 1).reshape({-1, 4 * C});
  at::Tensor tokens = at::cat({glb_rows, glb_gn.view({1, 4 * C}), sub_rows}, 0);
  if (trace_vision) trace.features = tokens;
  return Lin(ops::GeluErf(Lin(tokens, proj0_w, proj0_b)), proj2_w, proj2_b);
}

at::Tensor StageModel::Impl::BertAttend(const BertAttention& a, const at::Tensor& h, const at::Tensor& context,
                                        int64_t heads) const {
  const int64_t T = h.size(0), Tk = context.size(0), W = h.size(1), hd = W / heads;
  at::Tensor q = Lin(h, a.q_w, a.q_b).view({T, heads, hd}).transpose(0, 1);
  at::Tensor k = Lin(context, a.k_w, a.k_b).view({Tk, heads, hd}).transpose(0, 1);
  at::Tensor v = Lin(context, a.v_w, a.v_b).view({Tk, heads, hd}).transpose(0, 1);
  at::Tensor o = ops::Attention(q, k, v, 1.0 / std::sqrt(static_cast<double>(hd)), -1).transpose(0, 1).reshape({T, W});
  return ops::LayerNorm(Lin(o, a.dense_w, a.dense_b) + h, a.ln_w, a.ln_b, 1e-12);
}

StatusOr<at::Tensor> StageModel::Impl::EncodeEva(const ImageInput& image) {
  const int64_t S = spec.vision.image_size;
  at::Tensor px = image.pixels;
  if (px.dim() != 3 || px.size(0) != 3 || px.size(1) != S || px.size(2) != S) {
    return InvalidArgumentError("image pixels must be [3, " + std::to_string(S) + ", " + std::to_string(S) + "]");
  }
  const int64_t D = spec.vision.width, heads = spec.vision.heads, hd = D / heads;
  at::Tensor x = at::conv2d(px.to(device).unsqueeze(0).to(dtype), eva_patch_w, eva_patch_b, spec.vision.patch);
  x = x.flatten(2).transpose(1, 2);
  x = at::cat({eva_cls.view({1, 1, D}), x}, 1) + eva_pos.view({1, -1, D}).narrow(1, 0, x.size(1) + 1);
  if (trace_vision) trace.tower_hidden.push_back(x);
  const int64_t T = x.size(1);
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  for (const auto& B : eva_blocks) {
    at::Tensor y = ops::LayerNorm(x, B.norm1_w, B.norm1_b, spec.vision.eps);
    at::Tensor qkv = Lin(y, B.qkv_w, B.qkv_b).view({1, T, 3, heads, hd}).permute({2, 0, 3, 1, 4});
    at::Tensor o = ops::Attention(qkv[0], qkv[1], qkv[2], scale, -1).transpose(1, 2).reshape({1, T, D});
    x = x + Lin(o, B.proj_w, B.proj_b);
    y = ops::LayerNorm(x, B.norm2_w, B.norm2_b, spec.vision.eps);
    x = x + Lin(ops::GeluErf(Lin(y, B.fc1_w, B.fc1_b)), B.fc2_w, B.fc2_b);
    if (trace_vision) trace.tower_hidden.push_back(x);
    if (options.between_layers) options.between_layers();
  }
  at::Tensor feats = ops::LayerNorm(x.select(0, 0), ln_vision_w, ln_vision_b, 1e-5);  // [257, D]
  if (trace_vision) trace.qformer_input = feats;
  const int64_t W = spec.vision.qformer_width, qheads = spec.vision.qformer_heads;
  at::Tensor h = ops::LayerNorm(query_tokens.view({-1, W}), qf_ln_w, qf_ln_b, 1e-12);
  if (trace_vision) trace.qformer_hidden.push_back(h);
  for (const auto& Q : qformer_layers) {
    h = BertAttend(Q.self_attn, h, h, qheads);
    if (Q.has_cross) h = BertAttend(Q.cross_attn, h, feats, qheads);
    at::Tensor f = Lin(ops::GeluErf(Lin(h, Q.inter_w, Q.inter_b)), Q.out_w, Q.out_b);
    h = ops::LayerNorm(f + h, Q.out_ln_w, Q.out_ln_b, 1e-12);
    if (trace_vision) trace.qformer_hidden.push_back(h);
  }
  if (trace_vision) trace.features = h;
  at::Tensor proj = Lin(h, llm_proj_w, llm_proj_b);
  const int64_t H = spec.llm.hidden;
  return at::cat({flag_start.view({1, H}), proj, flag_end.view({1, H})}, 0);
}

StageModel::StageModel() : impl_(std::make_unique<Impl>()) {}
StageModel::~StageModel() = default;

StatusOr<std::unique_ptr<StageModel>> StageModel::Load(const std::filesystem::path& dir, const ModelSpec& spec,
                                                       BlockRange range, const StageOptions& options) {
  if (range.empty() || range.end > spec.blocks.size()) {
    return InvalidArgumentError("block range [" + std::to_string(range.begin) + ", " + std::to_string(range.end) +
                                ") is not within the model's " + std::to_string(spec.blocks.size()) + " blocks");
  }
  std::unique_ptr<StageModel> model(new StageModel());
  auto& impl = *model->impl_;
  impl.spec = spec;
  impl.range = range;
  impl.options = options;
  impl.dtype = options.dtype == ComputeDType::kBF16  ? at::kBFloat16
               : options.dtype == ComputeDType::kF16 ? at::kHalf
                                                      : at::kFloat;
  XCPIPE_RETURN_IF_ERROR(CheckComputeDevice(options.device, options.dtype));
  try {
    impl.device = at::Device(options.device);
    impl.cpu_fast = impl.device.is_cpu() && options.kernels == KernelPath::kCpuFast;
    if (impl.device.is_cuda() && impl.dtype == at::kFloat) {
      // float32 means float32: TF32 (on by default for cuDNN convolutions, the vision towers'
      // patch embedding) would put ~1e-3 errors into what must match the official outputs.
      at::globalContext().setAllowTF32CuDNN(false);
      at::globalContext().setAllowTF32CuBLAS(false);
    }
    XCPIPE_RETURN_IF_ERROR(impl.Load(dir));
  } catch (const c10::Error& e) {
    return InvalidArgumentError(std::string("loading stage weights: ") + e.what_without_backtrace());
  }
  return model;
}

const ModelSpec& StageModel::spec() const { return impl_->spec; }
BlockRange StageModel::range() const { return impl_->range; }
bool StageModel::holds_vision() const { return impl_->has_vision; }
bool StageModel::holds_embed() const { return impl_->has_embed; }
bool StageModel::holds_head() const { return impl_->has_head; }
uint64_t StageModel::weight_bytes() const { return impl_->weight_bytes; }
uint64_t StageModel::mapped_bytes() const { return impl_->mapped ? impl_->mapped->mapped_bytes() : 0; }
const std::string& StageModel::device() const { return impl_->options.device; }
ComputeDType StageModel::dtype() const { return impl_->options.dtype; }
bool StageModel::cpu_fast_paths() const { return impl_->cpu_fast; }
void StageModel::set_trace_vision(bool on) { impl_->trace_vision = on; }
const StageModel::VisionTrace& StageModel::vision_trace() const { return impl_->trace; }

StatusOr<at::Tensor> StageModel::EncodeImage(const ImageInput& image) {
  if (!impl_->has_vision) return FailedPreconditionError("this stage does not hold the vision block");
  impl_->trace = VisionTrace{};
  try {
    return impl_->spec.arch == ModelArch::kIxc1 ? impl_->EncodeEva(image) : impl_->EncodeClip(image);
  } catch (const c10::Error& e) {
    return InternalError(std::string("vision forward: ") + e.what_without_backtrace());
  }
}

uint64_t StageModel::kv_bytes_per_token() const {
  const auto& llm = impl_->spec.llm;
  return 2ull * impl_->layers.size() * llm.kv_heads * llm.head_dim * at::elementSize(impl_->dtype);
}
uint64_t StageModel::kv_bytes_reserved() const { return impl_->kv_reserved; }
uint64_t StageModel::kv_bytes_used() const {
  uint64_t tokens = 0;
  for (const auto& [id, c] : impl_->caches) tokens += static_cast<uint64_t>(c.filled);
  return tokens * kv_bytes_per_token();
}

Status StageModel::ReserveSequence(uint64_t sequence_id, int64_t max_tokens) {
  auto& impl = *impl_;
  if (max_tokens <= 0) return InvalidArgumentError("max_tokens must be positive");
  if (impl.caches.count(sequence_id)) return AlreadyExistsError("sequence " + std::to_string(sequence_id) +
                                                                     " already holds KV room on this stage");
  const uint64_t bytes = kv_bytes_per_token() * static_cast<uint64_t>(max_tokens);
  if (impl.kv_reserved + bytes > impl.options.kv_budget_bytes) {
    return ResourceExhaustedError("KV cache budget of " + std::to_string(impl.options.kv_budget_bytes) +
                                  " bytes is full (" + std::to_string(impl.kv_reserved) + " reserved, " +
                                  std::to_string(bytes) + " more needed)");
  }
  SequenceCache c;
  c.capacity = max_tokens;
  c.bytes = bytes;
  if (!impl.layers.empty()) {
    const auto& llm = impl.spec.llm;
    auto shape = std::vector<int64_t>{static_cast<int64_t>(impl.layers.size()), llm.kv_heads, max_tokens, llm.head_dim};
    c.k = at::empty(shape, impl.On(impl.dtype));
    c.v = at::empty(shape, impl.On(impl.dtype));
  }
  impl.kv_reserved += bytes;
  impl.caches.emplace(sequence_id, std::move(c));
  return OkStatus();
}

void StageModel::ReleaseAllSequences() {
  impl_->caches.clear();
  impl_->kv_reserved = 0;
}

bool StageModel::HoldsSequence(uint64_t sequence_id) const { return impl_->caches.count(sequence_id) > 0; }

Status StageModel::CopyPrefix(uint64_t from, uint64_t to, int64_t rows) {
  auto& impl = *impl_;
  auto src = impl.caches.find(from);
  auto dst = impl.caches.find(to);
  if (src == impl.caches.end() || dst == impl.caches.end()) {
    return FailedPreconditionError("prefix copy from sequence " + std::to_string(from) + " to " + std::to_string(to) +
                                   ": " + (src == impl.caches.end() ? "the prefix" : "the target") +
                                   " holds no KV room on this stage");
  }
  if (rows <= 0 || rows > src->second.filled || rows > dst->second.capacity) {
    return FailedPreconditionError("prefix copy of " + std::to_string(rows) + " positions: the prefix has stepped " +
                           std::to_string(src->second.filled) + " and the target has room for " +
                           std::to_string(dst->second.capacity));
  }
  if (!impl.layers.empty()) {
    // [layers, kv_heads, capacity, head_dim]: positions are dimension 2.
    dst->second.k.narrow(2, 0, rows).copy_(src->second.k.narrow(2, 0, rows));
    dst->second.v.narrow(2, 0, rows).copy_(src->second.v.narrow(2, 0, rows));
  }
  dst->second.filled = std::max(dst->second.filled, rows);
  return OkStatus();
}

void StageModel::SetKvBudget(uint64_t bytes) { impl_->options.kv_budget_bytes = bytes; }

void StageModel::ReleaseSequence(uint64_t sequence_id) {
  auto it = impl_->caches.find(sequence_id);
  if (it == impl_->caches.end()) return;
  impl_->kv_reserved -= it->second.bytes;
  impl_->caches.erase(it);
}

StatusOr<StepOutput> StageModel::Forward(const StepInput& in) {
  auto& impl = *impl_;
  const auto& llm = impl.spec.llm;
  int64_t N = 0;
  for (const auto& s : in.segments) {
    if (s.rows <= 0 || s.start_pos < 0) return InvalidArgumentError("segment with no rows or a negative position");
    auto it = impl.caches.find(s.sequence_id);
    if (!impl.layers.empty()) {
      if (it == impl.caches.end()) {
        return FailedPreconditionError("sequence " + std::to_string(s.sequence_id) + " has no KV room on this stage");
      }
      if (s.start_pos + s.rows > it->second.capacity) {
        return ResourceExhaustedError("sequence " + std::to_string(s.sequence_id) + " would grow to " +
                                      std::to_string(s.start_pos + s.rows) + " tokens, beyond its reserved " +
                                      std::to_string(it->second.capacity));
      }
    }
    if (it != impl.caches.end()) it->second.filled = std::max(it->second.filled, s.start_pos + s.rows);
    N += s.rows;
  }
  try {
    std::optional<StepThreads> step_threads;
    if (impl.cpu_fast) step_threads.emplace();
    StepOutput out;
    at::Tensor h;
    if (impl.has_embed && !in.hidden.defined()) {
      if (!in.token_ids.defined() || in.token_ids.numel() != N) {
        return InvalidArgumentError("embed stage needs token_ids with one entry per row (" + std::to_string(N) + ")");
      }
      at::Tensor ids = in.token_ids.to(impl.device).to(at::kLong);
      at::Tensor slots = (ids < 0).nonzero().view({-1});
      h = at::embedding(impl.embed, ids.clamp_min(0));
      int64_t image_rows = 0;
      for (const auto& e : in.image_embeds) image_rows += e.size(0);
      if (image_rows != slots.numel()) {
        return InvalidArgumentError("prompt has " + std::to_string(slots.numel()) + " image slots but the images give " +
                                    std::to_string(image_rows) + " embedding rows");
      }
      if (image_rows > 0) {
        std::vector<at::Tensor> parts;
        for (const auto& e : in.image_embeds) parts.push_back(e.to(impl.device).to(impl.dtype));
        h.index_copy_(0, slots, at::cat(parts, 0));
      }
      out.embeds = h;
    } else {
      if (!in.hidden.defined() || in.hidden.dim() != 2 || in.hidden.size(0) != N || in.hidden.size(1) != llm.hidden) {
        return InvalidArgumentError("hidden states must be [" + std::to_string(N) + ", " + std::to_string(llm.hidden) +
                                    "]");
      }
      h = in.hidden.to(impl.device).to(impl.dtype);
    }
    at::Tensor image_rows;
    if (in.im_mask.defined() && in.im_mask.numel() == N) {
      image_rows = in.im_mask.to(impl.device).to(at::kBool).nonzero().view({-1});
    }
    std::vector<int64_t> pos;
    pos.reserve(N);
    for (const auto& s : in.segments)
      for (int64_t r = 0; r < s.rows; ++r) pos.push_back(s.start_pos + r);
    // Rotary cos/sin of every row's position: the same for every layer, so computed once.
    at::Tensor cos, sin;
    if (!impl.layers.empty()) {
      at::Tensor positions = at::tensor(pos, at::kLong).to(impl.device);
      int64_t max_len = 0;
      for (const auto& s : in.segments) max_len = std::max(max_len, s.start_pos + s.rows);
      cos = impl.RopeCosSin(positions, max_len, false);
      sin = impl.RopeCosSin(positions, max_len, true);
    }
    for (size_t i = 0; i < impl.layers.size(); ++i) {
      const auto layer_started = std::chrono::steady_clock::now();
      h = impl.LayerForward(i, impl.layers[i], h, in.segments, image_rows, cos, sin);
      if (impl.options.decoder_layer_timed) {
        impl.options.decoder_layer_timed(std::chrono::duration_cast<std::chrono::microseconds>(
                                             std::chrono::steady_clock::now() - layer_started)
                                             .count());
      }
      if (impl.options.between_layers) impl.options.between_layers();
      if (in.collect_hidden) out.layer_outputs.push_back(h);
    }
    out.hidden = h;
    if (impl.has_head) {
      at::Tensor normed = ops::RmsNorm(h, impl.final_norm, llm.rms_eps);
      if (in.collect_hidden) out.layer_outputs.push_back(normed);
      at::Tensor rows = normed;
      if (!in.all_logits) {
        std::vector<int64_t> last;
        int64_t offset = 0;
        for (const auto& s : in.segments) {
          offset += s.rows;
          last.push_back(offset - 1);
        }
        rows = normed.index_select(0, at::tensor(last, at::kLong).to(impl.device));
      }
      out.logits = impl.Lin(rows, impl.lm_head).to(at::kFloat);
    }
    return out;
  } catch (const c10::Error& e) {
    return InternalError(std::string("forward: ") + e.what_without_backtrace());
  }
}

BlockRange WholeModel(const ModelSpec& spec) { return {0, spec.blocks.size()}; }

void StageModel::ForEachHeldTensor(const std::function<void(const std::string&, const at::Tensor&)>& fn) const {
  const Impl& m = *impl_;
  auto visit = [&](const std::string& name, const at::Tensor& t) {
    if (t.defined()) fn(name, t);
  };
  for (const auto& [name, t] : m.weights) visit(name, t);
  auto projection = [&](const std::string& name, const Projection& p) {
    visit(name + ".w", p.w);
    visit(name + ".b", p.b);
    visit(name + ".lora_a", p.lora_a);
    visit(name + ".lora_b", p.lora_b);
  };
  for (const auto& L : m.layers) {
    const std::string p = "built/layer" + std::to_string(L.index) + "/";
    visit(p + "attn_norm", L.attn_norm);
    visit(p + "ffn_norm", L.ffn_norm);
    for (const auto& [name, proj] : {std::pair<const char*, const Projection*>{"wqkv", &L.wqkv}, {"q", &L.q}, {"k", &L.k},
                                     {"v", &L.v}, {"wo", &L.wo}, {"w1", &L.w1}, {"w2", &L.w2}, {"w3", &L.w3}}) {
      projection(p + name, *proj);
    }
  }
  for (size_t i = 0; i < m.eva_blocks.size(); ++i) visit("built/eva" + std::to_string(i) + "/qkv_b", m.eva_blocks[i].qkv_b);
  visit("built/glb_gn", m.glb_gn);
  visit("built/sub_gn", m.sub_gn);
  visit("built/embed", m.embed);
  visit("built/lm_head", m.lm_head);
  for (const auto& [id, c] : m.caches) {
    visit("kv/" + std::to_string(id) + "/k", c.k);
    visit("kv/" + std::to_string(id) + "/v", c.v);
  }
  visit("rope/inv_freq", m.inv_freq);
}

StatusOr<ComputeDType> ParseComputeDType(const std::string& name) {
  if (name == "f32") return ComputeDType::kF32;
  if (name == "bf16") return ComputeDType::kBF16;
  if (name == "f16") return ComputeDType::kF16;
  return InvalidArgumentError("compute dtype '" + name + "' is unknown; expected f32, bf16 or f16");
}

const char* ComputeDTypeName(ComputeDType dtype) {
  switch (dtype) {
    case ComputeDType::kF32: return "f32";
    case ComputeDType::kBF16: return "bf16";
    case ComputeDType::kF16: return "f16";
  }
  return "f32";
}

bool LibtorchHasCuda() { return at::hasCUDA(); }

int LibtorchCudaDevices() { return LibtorchHasCuda() ? static_cast<int>(at::getNumGPUs()) : 0; }

Status CheckComputeDevice(const std::string& device, ComputeDType dtype) {
  std::optional<at::Device> parsed;
  try {
    parsed = at::Device(device);
  } catch (const c10::Error&) {
  }
  if (!parsed || !(parsed->is_cpu() || parsed->is_cuda()) || (parsed->is_cuda() && !parsed->has_index())) {
    return InvalidArgumentError("device '" + device + "' is not understood; expected cpu or cuda:K");
  }
  if (parsed->is_cpu()) {
    if (dtype == ComputeDType::kF16) {
      return InvalidArgumentError(
          "f16 on the CPU: this libtorch has no CPU kernel for half-precision matrix products, so the first step "
          "would fail; use bf16 (fast on CPUs with AVX512-BF16) or f32");
    }
    return OkStatus();
  }
  if (!LibtorchHasCuda()) {
    return UnimplementedError(NoCudaLibtorchMessage(device));
  }
  const int count = LibtorchCudaDevices();
  if (parsed->index() >= count) {
    return UnavailableError("device " + device + " asked for, but libtorch sees " + std::to_string(count) +
                            " CUDA device(s) on this host");
  }
  return OkStatus();
}

StatusOr<double> MeasureMatmulTflops(const std::string& device) {
  try {
    constexpr int64_t n = 4096;
    constexpr int kRuns = 10;
    const auto on = at::TensorOptions().dtype(at::kBFloat16).device(at::Device(device));
    at::Tensor a = at::randn({n, n}, on), b = at::randn({n, n}, on);
    at::Tensor c = at::matmul(a, b);
    (void)c.sum().item<float>();  // warm-up done (the copy to the host waits for the device)
    const auto started = std::chrono::steady_clock::now();
    for (int i = 0; i < kRuns; ++i) c = at::matmul(a, c.narrow(0, 0, n));
    (void)c.sum().item<float>();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    if (s <= 0) return InternalError("a matrix product timed at 0 s");
    return 2.0 * n * n * n * kRuns / s / 1e12;
  } catch (const c10::Error& e) {
    return InternalError(std::string("measuring matrix products on ") + device + ": " + e.what_without_backtrace());
  }
}

std::string NoCudaLibtorchMessage(const std::string& device) {
  return "device " + device +
         " asked for, but this binary's libtorch built without CUDA (CPU only, as Debian ships it) cannot "
         "compute on a GPU. Build xcpipe against a CUDA libtorch: cmake -S . -B build -G Ninja "
         "-DCMAKE_PREFIX_PATH=\"$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')\" "
         "(README: GPU hosts)";
}

ComputeDType DefaultComputeDType(const std::string& device, checkpoint::DType checkpoint_dtype) {
  if (device.rfind("cuda", 0) != 0) return ComputeDType::kF32;
  return checkpoint_dtype == checkpoint::DType::kF16 ? ComputeDType::kF16 : ComputeDType::kBF16;
}


Status StageModel::ReorderSequences(const std::vector<uint64_t>& ids, const std::vector<int64_t>& parent_of_each) {
  auto& impl = *impl_;
  const size_t n = ids.size();
  if (parent_of_each.size() != n) {
    return InvalidArgumentError("reorder of " + std::to_string(n) + " sequences given " +
                                std::to_string(parent_of_each.size()) + " parents");
  }
  std::vector<SequenceCache*> held(n);
  for (size_t i = 0; i < n; ++i) {
    auto it = impl.caches.find(ids[i]);
    if (it == impl.caches.end()) {
      return FailedPreconditionError("reorder: sequence " + std::to_string(ids[i]) + " holds no KV room on this stage");
    }
    held[i] = &it->second;
    for (size_t j = 0; j < i; ++j) {
      if (ids[j] == ids[i]) return InvalidArgumentError("reorder: sequence " + std::to_string(ids[i]) + " given twice");
    }
    if (parent_of_each[i] < 0 || parent_of_each[i] >= static_cast<int64_t>(n)) {
      return InvalidArgumentError("reorder: parent " + std::to_string(parent_of_each[i]) + " of sequence " +
                                  std::to_string(ids[i]) + " is not an index into the " + std::to_string(n) + " given");
    }
    if (held[i]->capacity != held[0]->capacity) {
      return FailedPreconditionError("reorder: sequences " + std::to_string(ids[0]) + " and " + std::to_string(ids[i]) +
                                     " have room for different lengths");
    }
  }
  // Which old room each sequence ends up with: its own when it continues itself, else its
  // parent's room when no one took it yet, else a room nobody continues (filled by a copy).
  std::vector<int64_t> room(n, -1);
  std::vector<bool> taken(n, false);
  for (size_t i = 0; i < n; ++i) {
    if (parent_of_each[i] == static_cast<int64_t>(i)) {
      room[i] = static_cast<int64_t>(i);
      taken[i] = true;
    }
  }
  for (size_t i = 0; i < n; ++i) {
    const auto p = static_cast<size_t>(parent_of_each[i]);
    if (room[i] < 0 && !taken[p]) {
      room[i] = static_cast<int64_t>(p);
      taken[p] = true;
    }
  }
  std::vector<int64_t> filled(n);
  for (size_t i = 0; i < n; ++i) filled[i] = held[static_cast<size_t>(parent_of_each[i])]->filled;
  size_t spare = 0;
  try {
    for (size_t i = 0; i < n; ++i) {
      if (room[i] >= 0) continue;
      while (taken[spare]) ++spare;  // as many spare rooms as sequences sharing a parent
      room[i] = static_cast<int64_t>(spare);
      taken[spare] = true;
      const SequenceCache& from = *held[static_cast<size_t>(parent_of_each[i])];
      SequenceCache& to = *held[spare];
      if (!impl.layers.empty() && filled[i] > 0) {
        // [layers, kv_heads, capacity, head_dim]: positions are dimension 2.
        to.k.narrow(2, 0, filled[i]).copy_(from.k.narrow(2, 0, filled[i]));
        to.v.narrow(2, 0, filled[i]).copy_(from.v.narrow(2, 0, filled[i]));
      }
    }
  } catch (const c10::Error& e) {
    return InternalError(std::string("reorder: copying KV rows: ") + e.what_without_backtrace());
  }
  std::vector<SequenceCache> old(n);
  for (size_t i = 0; i < n; ++i) old[i] = std::move(*held[i]);
  for (size_t i = 0; i < n; ++i) {
    *held[i] = std::move(old[static_cast<size_t>(room[i])]);
    held[i]->filled = filled[i];
  }
  return OkStatus();
}

}  // namespace xcpipe::model
