#include "xcpipe/model/device_check.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "xcpipe/base/files.h"
#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/model/sampling.h"
#include "xcpipe/model/stage_model.h"

namespace xcpipe::model {
namespace {

namespace fs = std::filesystem;

// The spec of the model at `dir`, with the head counts a tiny test model states beside its
// checkpoint (model_info.json; generated models carry their real ones in config files).
StatusOr<checkpoint::ModelSpec> SpecOf(const fs::path& dir) {
  XCPIPE_ASSIGN_OR_RETURN(auto described, checkpoint::DescribeCheckpoint(dir));
  checkpoint::ModelSpec spec = described.spec;
  auto info = ReadJsonFile(dir.parent_path() / "model_info.json");
  if (info.ok()) {
    const auto& j = *info;
    if (j.contains("vision") && j["vision"].contains("num_heads"))
      spec.vision.heads = j["vision"]["num_heads"].get<int64_t>();
    if (j.contains("vision") && j["vision"].contains("clip_heads"))
      spec.vision.heads = j["vision"]["clip_heads"].get<int64_t>();
    if (j.contains("qformer") && j["qformer"].contains("num_attention_heads")) {
      spec.vision.qformer_heads = j["qformer"]["num_attention_heads"].get<int64_t>();
    }
  }
  return spec;
}

struct Run {
  at::Tensor image_embeds;   // [rows, H] on the host, float32
  at::Tensor prompt_logits;  // [T, V] on the host, float32
  std::vector<int64_t> tokens;
};

// One image, one prompt of `prompt_tokens` ids with the image's rows after the first id, then a
// greedy decode: everything a stage does, on `model`'s device.
StatusOr<Run> Generate(StageModel& model, const at::Tensor& pixels, int64_t prompt_tokens, int64_t new_tokens) {
  const auto& spec = model.spec();
  Run run;
  XCPIPE_ASSIGN_OR_RETURN(at::Tensor embeds, model.EncodeImage({pixels, 1, 1}));
  run.image_embeds = embeds.to(at::kCPU).to(at::kFloat);
  const int64_t rows = embeds.size(0);
  const int64_t vocab = spec.llm.vocab;
  std::vector<int64_t> ids = {spec.llm.bos_id};
  for (int64_t r = 0; r < rows; ++r) ids.push_back(-1);
  for (int64_t t = 1; t < prompt_tokens; ++t) ids.push_back(3 + (t * 7919) % std::max<int64_t>(1, vocab - 3));
  const int64_t T = static_cast<int64_t>(ids.size());
  XCPIPE_RETURN_IF_ERROR(model.ReserveSequence(1, T + new_tokens));
  StepInput in;
  in.segments = {{1, T, 0}};
  in.token_ids = at::tensor(ids, at::kLong);
  std::vector<uint8_t> mask(static_cast<size_t>(T), 0);
  for (int64_t r = 1; r <= rows; ++r) mask[static_cast<size_t>(r)] = spec.arch == checkpoint::ModelArch::kIxc1 ? 0 : 1;
  in.im_mask = at::tensor(std::vector<int64_t>(mask.begin(), mask.end()), at::kLong).to(at::kBool);
  in.image_embeds = {embeds};
  in.all_logits = true;
  XCPIPE_ASSIGN_OR_RETURN(StepOutput out, model.Forward(in));
  run.prompt_logits = out.logits.to(at::kCPU);
  Sampler greedy(SamplingParams{});
  std::vector<int64_t> context = {spec.llm.bos_id};
  at::Tensor last = run.prompt_logits[T - 1];
  int64_t pos = T;
  for (int64_t n = 0; n < new_tokens; ++n) {
    const int64_t token = greedy.Next(last, context);
    run.tokens.push_back(token);
    context.push_back(token);
    StepInput step;
    step.segments = {{1, 1, pos++}};
    step.token_ids = at::tensor(std::vector<int64_t>{token}, at::kLong);
    step.im_mask = at::zeros({1}, at::kBool);
    XCPIPE_ASSIGN_OR_RETURN(StepOutput o, model.Forward(step));
    last = o.logits[0];
  }
  model.ReleaseSequence(1);
  return run;
}

at::Tensor TestPixels(const checkpoint::ModelSpec& spec, uint64_t seed) {
  at::manual_seed(seed);
  const int64_t S = spec.vision.image_size;
  return at::randn({3, S, S}, at::kFloat);
}

}  // namespace

StatusOr<nlohmann::json> CompareWithCpu(const fs::path& dir, const DeviceComparisonOptions& options) {
  XCPIPE_ASSIGN_OR_RETURN(checkpoint::ModelSpec spec, SpecOf(dir));
  try {
    StageOptions ref_options;  // CPU, float32, the CPU fast paths
    XCPIPE_ASSIGN_OR_RETURN(auto reference, StageModel::Load(dir, spec, WholeModel(spec), ref_options));
    StageOptions test_options;
    test_options.device = options.device;
    test_options.dtype = options.dtype;
    test_options.kernels = options.kernels;
    XCPIPE_ASSIGN_OR_RETURN(auto tested, StageModel::Load(dir, spec, WholeModel(spec), test_options));
    const at::Tensor pixels = TestPixels(spec, options.seed);
    XCPIPE_ASSIGN_OR_RETURN(Run want, Generate(*reference, pixels, options.prompt_tokens, options.new_tokens));
    XCPIPE_ASSIGN_OR_RETURN(Run got, Generate(*tested, pixels, options.prompt_tokens, options.new_tokens));
    const double embed_diff = (want.image_embeds - got.image_embeds).abs().max().item<double>();
    const double logit_diff = (want.prompt_logits - got.prompt_logits).abs().max().item<double>();
    at::Tensor top5 = std::get<1>(want.prompt_logits.topk(5, -1));
    at::Tensor arg = got.prompt_logits.argmax(-1);
    const double agreement = (top5 == arg.unsqueeze(1)).any(1).to(at::kDouble).mean().item<double>();
    const bool identical = want.tokens == got.tokens;
    const bool f32 = options.dtype == ComputeDType::kF32;
    const bool passed = f32 ? identical && logit_diff <= 1e-3 : agreement == 1.0;
    return nlohmann::json{{"arch", std::string(checkpoint::ArchName(spec.arch))},
                          {"device", options.device},
                          {"dtype", ComputeDTypeName(options.dtype)},
                          {"kernels", options.kernels == KernelPath::kGeneric ? "generic" : "cpu-fast"},
                          {"image_embeds_max_abs_diff", embed_diff},
                          {"prompt_logits_max_abs_diff", logit_diff},
                          {"topk_agreement", agreement},
                          {"tokens_reference", want.tokens},
                          {"tokens_device", got.tokens},
                          {"tokens_identical", identical},
                          {"passed", passed}};
  } catch (const c10::Error& e) {
    return InternalError(std::string("comparing devices: ") + e.what_without_backtrace());
  }
}

StatusOr<nlohmann::json> BenchDecode(const fs::path& dir, const DecodeBenchOptions& options) {
  XCPIPE_ASSIGN_OR_RETURN(checkpoint::ModelSpec spec, SpecOf(dir));
  try {
    StageOptions so;
    so.device = options.device;
    so.dtype = options.dtype;
    so.kernels = options.kernels;
    const auto load_started = std::chrono::steady_clock::now();
    XCPIPE_ASSIGN_OR_RETURN(auto model, StageModel::Load(dir, spec, WholeModel(spec), so));
    const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_started).count();
    const int64_t vocab = spec.llm.vocab;
    std::vector<double> per_token_ms;
    for (int run = 0; run < std::max(1, options.runs) + 1; ++run) {  // the first run warms up
      std::vector<int64_t> ids;
      for (int64_t t = 0; t < options.prompt_tokens; ++t)
        ids.push_back(3 + (t * 131) % std::max<int64_t>(1, vocab - 3));
      const int64_t T = static_cast<int64_t>(ids.size());
      XCPIPE_RETURN_IF_ERROR(model->ReserveSequence(1, T + options.new_tokens));
      StepInput in;
      in.segments = {{1, T, 0}};
      in.token_ids = at::tensor(ids, at::kLong);
      in.im_mask = at::zeros({T}, at::kBool);
      XCPIPE_ASSIGN_OR_RETURN(StepOutput out, model->Forward(in));
      int64_t token = out.logits.to(at::kCPU)[0].argmax().item<int64_t>();
      const auto started = std::chrono::steady_clock::now();
      for (int64_t n = 0; n < options.new_tokens; ++n) {
        StepInput step;
        step.segments = {{1, 1, T + n}};
        step.token_ids = at::tensor(std::vector<int64_t>{token}, at::kLong);
        step.im_mask = at::zeros({1}, at::kBool);
        XCPIPE_ASSIGN_OR_RETURN(StepOutput o, model->Forward(step));
        token = o.logits.to(at::kCPU)[0].argmax().item<int64_t>();  // the host waits, as serving does
      }
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
      model->ReleaseSequence(1);
      if (run > 0) per_token_ms.push_back(ms / static_cast<double>(options.new_tokens));
    }
    std::sort(per_token_ms.begin(), per_token_ms.end());
    const double median = per_token_ms[per_token_ms.size() / 2];
    nlohmann::json j{{"arch", std::string(checkpoint::ArchName(spec.arch))},
                     {"device", options.device},
                     {"dtype", ComputeDTypeName(options.dtype)},
                     {"hidden", spec.llm.hidden},
                     {"layers", spec.llm.layers},
                     {"weight_bytes", model->weight_bytes()},
                     {"load_s", load_s},
                     {"new_tokens", options.new_tokens},
                     {"ms_per_token_runs", per_token_ms},
                     {"ms_per_token", median}};
    if (options.device != "cpu") {
      // The roofline: a device-to-device copy of 1 GiB through libtorch, read and written.
      const auto on = at::TensorOptions().dtype(at::kByte).device(at::Device(options.device));
      at::Tensor a = at::empty({int64_t{1} << 30}, on), b = at::empty({int64_t{1} << 30}, on);
      b.copy_(a);
      (void)b[0].item<uint8_t>();
      const auto started = std::chrono::steady_clock::now();
      constexpr int kCopies = 10;
      for (int i = 0; i < kCopies; ++i) b.copy_(a);
      (void)b[0].item<uint8_t>();
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      const double bandwidth = 2.0 * kCopies * static_cast<double>(int64_t{1} << 30) / s;
      const double roofline_ms = static_cast<double>(model->weight_bytes()) / bandwidth * 1e3;
      j["copy_bandwidth_bytes_per_s"] = bandwidth;
      j["roofline_ms_per_token"] = roofline_ms;
      j["ratio_to_roofline"] = median / roofline_ms;
    }
    return j;
  } catch (const c10::Error& e) {
    return InternalError(std::string("decode benchmark: ") + e.what_without_backtrace());
  }
}

}  // namespace xcpipe::model
