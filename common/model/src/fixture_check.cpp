#include "xcpipe/model/fixture_check.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <sstream>

#include "xcpipe/base/files.h"
#include "xcpipe/base/npy.h"
#include "xcpipe/image/decode.h"
#include "xcpipe/image/preprocess.h"
#include "xcpipe/model/beam_generation.h"
#include "xcpipe/model/sampling.h"
#include "xcpipe/model/stage_model.h"

namespace xcpipe::model {

using checkpoint::ModelArch;
namespace fs = std::filesystem;

namespace {

at::Tensor ToTensor(const NpyArray& a) {
  if (a.dtype == "i8" || a.dtype == "i4" || a.dtype == "u1" || a.dtype == "b1") {
    std::vector<int64_t> v = a.ToInt64();
    return at::tensor(v, at::kLong).view(a.shape);
  }
  std::vector<float> v = a.ToFloat();
  return at::tensor(v, at::kFloat).view(a.shape);
}

struct Tolerance {
  double rtol = 1e-4;
  double atol = 1e-4;
};

struct CaseContext {
  fs::path dir;
  nlohmann::json manifest;
  std::string prefix;  // "<folder>/<case>"
  std::vector<FixtureCheckResult>* results;
  const FixtureCheckOptions* options;

  bool Has(const std::string& file) const { return fs::exists(dir / file); }
  StatusOr<at::Tensor> Load(const std::string& file) const {
    XCPIPE_ASSIGN_OR_RETURN(NpyArray a, ReadNpy(dir / file));
    return ToTensor(a);
  }
  Tolerance Tol(const std::string& file) const {
    Tolerance t;
    const auto& files = manifest.value("files", nlohmann::json::object());
    if (files.contains(file) && files[file].contains("tolerance") && files[file]["tolerance"].is_object()) {
      const auto& j = files[file]["tolerance"];
      t.rtol = j.value("rtol", 0.0);
      t.atol = j.value("atol", 0.0);
    }
    return t;
  }
  void Report(const std::string& check, bool passed, std::string message) const {
    FixtureCheckResult r{prefix + "/" + check, passed, std::move(message)};
    if (options->on_result) options->on_result(r);
    results->push_back(std::move(r));
  }
  // allclose(ours, expected) with the manifest tolerance of `file`.
  void Compare(const std::string& check, const at::Tensor& ours, const at::Tensor& expected,
               const std::string& file) const {
    if (ours.numel() != expected.numel()) {
      std::ostringstream m;
      m << "shape mismatch: ours " << ours.sizes() << ", expected " << expected.sizes();
      Report(check, false, m.str());
      return;
    }
    Tolerance t = Tol(file);
    at::Tensor a = ours.to(at::kCPU).to(at::kDouble).reshape(expected.sizes());
    at::Tensor b = expected.to(at::kDouble);
    at::Tensor diff = (a - b).abs();
    at::Tensor excess = diff - (t.atol + t.rtol * b.abs());
    const double max_abs = diff.max().item<double>();
    const double worst = excess.max().item<double>();
    std::ostringstream m;
    m << "max abs diff " << max_abs << " (rtol " << t.rtol << ", atol " << t.atol << ")";
    Report(check, worst <= 0.0, m.str());
  }
};

// One batch row of a case, with pads removed.
struct Row {
  at::Tensor ids;         // [T] with -1 at image slots (undefined when only embeddings exist)
  at::Tensor embeds;      // [T, H] official input embeddings (undefined if absent)
  at::Tensor im_mask;     // [T]
  std::vector<int64_t> keep;  // positions kept in the padded row
  int64_t images = 0;
};

// Greedy generation for every row at once: prefill in one packed step, then one row per
// sequence per step. Returns the new tokens of each row, cut after the first stop id.
StatusOr<std::vector<std::vector<int64_t>>> Generate(StageModel& model, const std::vector<Row>& rows,
                                                     const std::vector<std::vector<at::Tensor>>& image_embeds,
                                                     bool use_embeds, int64_t new_tokens, double penalty,
                                                     bool penalty_covers_prompt) {
  const auto& llm = model.spec().llm;
  StepInput step;
  std::vector<at::Tensor> ids, embeds, masks;
  std::vector<std::vector<int64_t>> context(rows.size()), generated(rows.size());
  for (size_t r = 0; r < rows.size(); ++r) {
    const int64_t T = use_embeds ? rows[r].embeds.size(0) : rows[r].ids.size(0);
    XCPIPE_RETURN_IF_ERROR(model.ReserveSequence(r, T + new_tokens));
    step.segments.push_back({r, T, 0});
    masks.push_back(rows[r].im_mask);
    if (use_embeds) {
      embeds.push_back(rows[r].embeds);
    } else {
      ids.push_back(rows[r].ids);
      for (const auto& e : image_embeds[r]) step.image_embeds.push_back(e);
    }
    if (penalty_covers_prompt && rows[r].ids.defined()) {
      auto acc = rows[r].ids.contiguous();
      context[r].assign(acc.data_ptr<int64_t>(), acc.data_ptr<int64_t>() + acc.numel());
    } else {
      context[r] = {llm.bos_id};  // generate() seeds input_ids with a placeholder BOS
    }
  }
  if (use_embeds) step.hidden = at::cat(embeds, 0); else step.token_ids = at::cat(ids, 0);
  step.im_mask = at::cat(masks, 0);
  SamplingParams params;
  params.repetition_penalty = penalty;
  Sampler sampler(params);
  std::vector<bool> done(rows.size(), false);
  for (int64_t t = 0; t < new_tokens; ++t) {
    auto out = model.Forward(step);
    if (!out.ok()) return out.status();
    StepInput next;
    std::vector<int64_t> next_ids;
    for (size_t r = 0, seg = 0; r < rows.size(); ++r) {
      if (done[r]) continue;
      int64_t token = sampler.Next(out->logits[static_cast<int64_t>(seg)], context[r]);
      ++seg;
      generated[r].push_back(token);
      context[r].push_back(token);
      if (std::find(llm.stop_ids.begin(), llm.stop_ids.end(), token) != llm.stop_ids.end()) {
        done[r] = true;
        continue;
      }
      const auto& prev = step.segments;
      auto it = std::find_if(prev.begin(), prev.end(), [&](const Segment& s) { return s.sequence_id == r; });
      next.segments.push_back({r, 1, it->start_pos + it->rows});
      next_ids.push_back(token);
    }
    if (next.segments.empty()) break;
    next.token_ids = at::tensor(next_ids, at::kLong);
    next.im_mask = at::zeros({static_cast<int64_t>(next_ids.size())}, at::kBool);
    step = std::move(next);
  }
  for (size_t r = 0; r < rows.size(); ++r) model.ReleaseSequence(r);
  return generated;
}

// The official default generation of XComposer 1.0's chat(): beam search, cut at a few tokens.
constexpr char kBeamFixture[] = "generated_ids_official_beam5_rep1.5.npy";

// The generate() arguments a beam fixture was made with, as its manifest's description of the
// file lists them (beam::BeamSettingsFromDescription).
StatusOr<BeamSearchParams> BeamSettings(const nlohmann::json& manifest, const std::string& file,
                                        const checkpoint::ModelSpec& spec, int64_t tokens_in_file) {
  const auto& files = manifest.value("files", nlohmann::json::object());
  if (!files.contains(file) || !files[file].contains("description") || !files[file]["description"].is_string()) {
    return InvalidArgumentError("the manifest does not describe " + file);
  }
  return beam::BeamSettingsFromDescription(files[file]["description"].get<std::string>(), file, spec, tokens_in_file);
}

// Beam search in process against the official tokens, one row at a time.
void CheckBeamFixture(const CaseContext& c, StageModel& model, const std::vector<Row>& rows,
                      const std::vector<std::vector<at::Tensor>>& row_images, bool use_embeds, bool has_images) {
  const std::string check = std::string(kBeamFixture).substr(0, std::string(kBeamFixture).size() - 4);
  auto want = c.Load(kBeamFixture);
  if (!want.ok()) return c.Report(check, false, want.status().ToString());
  const auto& spec = model.spec();
  auto settings = BeamSettings(c.manifest, kBeamFixture, spec, want->size(1));
  if (!settings.ok()) return c.Report(check, false, settings.status().ToString());
  std::ostringstream m;
  bool same = true;
  for (size_t b = 0; b < rows.size() && same; ++b) {
    BeamSearchParams p = *settings;
    BeamPrompt prompt;
    if (use_embeds) {
      prompt.embeds = rows[b].embeds;
    } else {
      prompt.token_ids = rows[b].ids;
      prompt.image_embeds = row_images[b];
    }
    prompt.im_mask = rows[b].im_mask;
    std::vector<int64_t> prompt_ids;
    if (rows[b].ids.defined()) {
      at::Tensor ids = rows[b].ids.contiguous();
      prompt_ids.assign(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.numel());
    }
    p.initial_ids = OfficialInitialIds(spec, prompt_ids, has_images);
    auto best = GenerateBeams(model, prompt, p);
    if (!best.ok()) return c.Report(check, false, best.status().ToString());
    const auto& ours = best->tokens;
    for (int64_t t = 0; t < want->size(1); ++t) {
      const int64_t expected = (*want)[static_cast<int64_t>(b)][t].item<int64_t>();
      if (t >= static_cast<int64_t>(ours.size())) {
        const bool ended = !ours.empty() && std::find(spec.llm.stop_ids.begin(), spec.llm.stop_ids.end(),
                                                      ours.back()) != spec.llm.stop_ids.end();
        if (ended) break;  // finished early: the official output pads
        same = false;
        m << "row " << b << ": ours ends after " << ours.size() << " tokens, expected " << want->size(1);
        break;
      }
      if (ours[static_cast<size_t>(t)] != expected) {
        same = false;
        m << "row " << b << " token " << t << ": ours " << ours[static_cast<size_t>(t)] << ", expected " << expected;
        break;
      }
    }
    if (same && b == 0) m << "identical; best score " << best->score;
  }
  m << " (" << settings->num_beams << " beams, repetition penalty " << settings->repetition_penalty << ", min_length "
    << settings->min_length << ", length penalty " << settings->length_penalty << ", " << settings->max_new_tokens
    << " new tokens)";
  c.Report(check, same, m.str());
}

void CheckCase(const fs::path& case_dir, const std::string& prefix, StageModel& model, StageModel* bf16_model,
               std::vector<FixtureCheckResult>& results, const FixtureCheckOptions& options) {
  CaseContext c;
  c.dir = case_dir;
  c.prefix = prefix;
  c.results = &results;
  c.options = &options;
  auto manifest = ReadJsonFile(case_dir / "manifest.json");
  if (!manifest.ok()) {
    c.Report("manifest", false, manifest.status().ToString());
    return;
  }
  c.manifest = std::move(manifest).value();
  const auto& values = c.manifest.value("values", nlohmann::json::object());
  const auto& spec = model.spec();

  // ---- Vision ----
  std::vector<at::Tensor> pixels;  // one [3, h, w] per image
  if (c.Has("pixel_values.npy")) {
    auto pv = c.Load("pixel_values.npy");
    if (!pv.ok()) return c.Report("pixel_values", false, pv.status().ToString());
    for (int64_t b = 0; b < pv->size(0); ++b) pixels.push_back((*pv)[b]);
  } else if (c.Has("hd_image.png")) {
    // Lean sets: pixel_values is exactly Normalize(ToTensor(hd_image.png)).
    auto rgb = image::ReadImageFile(c.dir / "hd_image.png");
    if (!rgb.ok()) return c.Report("pixel_values", false, rgb.status().ToString());
    image::FloatImage f = image::ToNormalizedTensor(*rgb, image::ClipNormalize());
    pixels.push_back(at::tensor(f.data, at::kFloat).view({f.channels, f.height, f.width}));
  } else if (!spec.vision.hd && c.Has("image.png")) {
    // Fixed-size models: the official Resize(BICUBIC) + ToTensor + Normalize.
    auto rgb = image::ReadImageFile(c.dir / "image.png");
    if (!rgb.ok()) return c.Report("pixel_values", false, rgb.status().ToString());
    auto f = image::PreprocessFixedSize(*rgb, spec.vision.image_size);
    if (!f.ok()) return c.Report("pixel_values", false, f.status().ToString());
    pixels.push_back(at::tensor(f->data, at::kFloat).view({f->channels, f->height, f->width}));
  }
  int64_t gh = 1, gw = 1;
  if (values.contains("tile_grid_hw")) {
    gh = values["tile_grid_hw"][0].get<int64_t>();
    gw = values["tile_grid_hw"][1].get<int64_t>();
  }
  std::vector<at::Tensor> image_embeds;
  for (size_t i = 0; i < pixels.size(); ++i) {
    model.set_trace_vision(i == 0);
    auto e = model.EncodeImage({pixels[i], gh, gw});
    if (!e.ok()) return c.Report("vision", false, e.status().ToString());
    image_embeds.push_back(*e);
    if (i != 0) continue;
    const auto& trace = model.vision_trace();
    const bool v1 = spec.arch == ModelArch::kIxc1;
    const std::string tower_file = v1 ? "vit_hidden_states.npy" : "clip_hidden_states.npy";
    if (c.Has(tower_file) && pixels.size() == 1) {
      auto want = c.Load(tower_file);
      if (want.ok()) c.Compare("vision_tower_hidden_states", at::stack(trace.tower_hidden), *want, tower_file);
    }
    if (!v1 && c.Has("vit_features.npy")) {
      auto want = c.Load("vit_features.npy");
      if (want.ok()) c.Compare("vision_features", trace.features, *want, "vit_features.npy");
    }
    if (v1 && c.Has("ln_vision_out.npy")) {
      auto want = c.Load("ln_vision_out.npy");
      if (want.ok()) c.Compare("ln_vision", trace.qformer_input, *want, "ln_vision_out.npy");
    }
    if (v1 && c.Has("qformer_hidden_states.npy")) {
      auto want = c.Load("qformer_hidden_states.npy");
      if (want.ok()) c.Compare("qformer_hidden_states", at::stack(trace.qformer_hidden), *want, "qformer_hidden_states.npy");
    }
    if (c.Has("image_embeds.npy") && pixels.size() == 1) {
      auto want = c.Load("image_embeds.npy");
      if (want.ok()) c.Compare("image_embeds", *e, *want, "image_embeds.npy");
    }
  }
  model.set_trace_vision(false);

  // ---- Rows (pads removed) ----
  at::Tensor ids_all, embeds_all, mask_all, attn;
  if (c.Has("input_ids_with_image_slots.npy")) ids_all = *c.Load("input_ids_with_image_slots.npy");
  else if (c.Has("input_ids.npy")) ids_all = *c.Load("input_ids.npy");
  if (c.Has("inputs_embeds.npy")) embeds_all = *c.Load("inputs_embeds.npy");
  if (c.Has("im_mask.npy")) mask_all = *c.Load("im_mask.npy");
  if (c.Has("attention_mask.npy")) attn = *c.Load("attention_mask.npy");
  if (!ids_all.defined() && !embeds_all.defined()) return c.Report("inputs", false, "case has neither ids nor embeddings");
  const int64_t B = ids_all.defined() ? ids_all.size(0) : embeds_all.size(0);
  const int64_t Tpad = ids_all.defined() ? ids_all.size(1) : embeds_all.size(1);
  std::vector<Row> rows(B);
  std::vector<std::vector<at::Tensor>> row_images(B);
  size_t next_image = 0;
  for (int64_t b = 0; b < B; ++b) {
    Row& row = rows[b];
    for (int64_t t = 0; t < Tpad; ++t)
      if (!attn.defined() || attn[b][t].item<int64_t>() != 0) row.keep.push_back(t);
    at::Tensor keep = at::tensor(row.keep, at::kLong);
    if (ids_all.defined()) row.ids = ids_all[b].index_select(0, keep).contiguous();
    if (embeds_all.defined()) row.embeds = embeds_all[b].index_select(0, keep).to(at::kFloat);
    row.im_mask = mask_all.defined() ? mask_all[b].index_select(0, keep).to(at::kBool)
                                     : at::zeros({static_cast<int64_t>(row.keep.size())}, at::kBool);
    // One image per run of image rows.
    const int64_t image_rows =
        row.ids.defined() ? (row.ids < 0).sum().item<int64_t>() : row.im_mask.sum().item<int64_t>();
    int64_t covered = 0;
    while (covered < image_rows && next_image < image_embeds.size()) {
      row_images[b].push_back(image_embeds[next_image]);
      covered += image_embeds[next_image].size(0);
      ++next_image;
    }
    row.images = static_cast<int64_t>(row_images[b].size());
  }
  // Without ids (batch of embeddings), check our image embeddings against the official rows.
  if (!ids_all.defined() && !image_embeds.empty()) {
    std::vector<at::Tensor> ours, theirs;
    for (int64_t b = 0; b < B; ++b) {
      for (const auto& e : row_images[b]) ours.push_back(e);
      theirs.push_back(rows[b].embeds.index_select(0, rows[b].im_mask.nonzero().view({-1})));
    }
    c.Compare("image_embeds", at::cat(ours, 0), at::cat(theirs, 0), "inputs_embeds.npy");
  }
  const bool use_embeds = !ids_all.defined();

  // ---- Prefill: every row in one packed step ----
  StepInput step;
  std::vector<at::Tensor> parts, masks;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t T = static_cast<int64_t>(rows[b].keep.size());
    if (auto st = model.ReserveSequence(b, T); !st.ok()) return c.Report("prefill", false, st.ToString());
    step.segments.push_back({static_cast<uint64_t>(b), T, 0});
    parts.push_back(use_embeds ? rows[b].embeds : rows[b].ids);
    masks.push_back(rows[b].im_mask);
    for (const auto& e : row_images[b]) step.image_embeds.push_back(e);
  }
  if (use_embeds) { step.hidden = at::cat(parts, 0); step.image_embeds.clear(); }
  else step.token_ids = at::cat(parts, 0);
  step.im_mask = at::cat(masks, 0);
  step.all_logits = true;
  step.collect_hidden = true;
  auto out = model.Forward(step);
  for (int64_t b = 0; b < B; ++b) model.ReleaseSequence(b);
  if (!out.ok()) return c.Report("prefill", false, out.status().ToString());

  // Gathers official [B, Tpad, ...] rows at the kept positions into one packed tensor.
  auto pack = [&](const at::Tensor& full) {
    std::vector<at::Tensor> p;
    for (int64_t b = 0; b < B; ++b) p.push_back(full[b].index_select(0, at::tensor(rows[b].keep, at::kLong)));
    return at::cat(p, 0);
  };
  at::Tensor embeds_used = use_embeds ? step.hidden : out->embeds;
  if (!use_embeds && embeds_all.defined()) c.Compare("inputs_embeds", embeds_used, pack(embeds_all), "inputs_embeds.npy");
  if (c.Has("hidden_states.npy")) {
    at::Tensor hs = *c.Load("hidden_states.npy");  // [L+1, B, T, H]
    const int64_t L = hs.size(0) - 1;
    if (static_cast<int64_t>(out->layer_outputs.size()) != L + 1) {
      c.Report("hidden_states", false, "model produced " + std::to_string(out->layer_outputs.size()) +
                                           " layer outputs, fixture has " + std::to_string(L + 1));
    } else {
      // Index l < L is the output of layer l-1; index L is the final norm's output.
      for (int64_t l = 1; l <= L; ++l) {
        const at::Tensor& ours = l < L ? out->layer_outputs[l - 1] : out->layer_outputs.back();
        c.Compare(l < L ? "hidden_state_" + std::to_string(l) : "final_norm", ours, pack(hs[l]), "hidden_states.npy");
      }
    }
  }
  at::Tensor logits = out->logits.to(at::kCPU);  // [N, V]
  std::vector<int64_t> last2;
  {
    int64_t offset = 0;
    for (int64_t b = 0; b < B; ++b) {
      offset += static_cast<int64_t>(rows[b].keep.size());
      last2.push_back(offset - 2);
      last2.push_back(offset - 1);
    }
  }
  if (c.Has("logits_last2.npy")) {
    c.Compare("logits_last2", logits.index_select(0, at::tensor(last2, at::kLong)), *c.Load("logits_last2.npy"),
              "logits_last2.npy");
  }
  if (c.Has("top10_values.npy") && c.Has("top10_ids.npy")) {
    at::Tensor want_v = pack(*c.Load("top10_values.npy"));
    at::Tensor want_i = pack(*c.Load("top10_ids.npy"));
    at::Tensor ours_v = std::get<0>(logits.topk(want_v.size(1), -1));
    c.Compare("top10_values", ours_v, want_v, "top10_values.npy");
    // Ties may reorder ids; what must hold is that each official id has the official value.
    c.Compare("top10_ids_logits", logits.gather(1, want_i), want_v, "top10_values.npy");
  }

  // ---- Generation ----
  bool has_images = !image_embeds.empty();
  for (auto [file, penalty] : {std::pair<std::string, double>{"generated_ids.npy", 1.0},
                               std::pair<std::string, double>{"generated_ids_rep1005.npy", 1.005}}) {
    if (!c.Has(file)) continue;
    at::Tensor want = *c.Load(file);
    auto gen = Generate(model, rows, row_images, use_embeds, want.size(1), penalty,
                        checkpoint::PenaltyCoversPrompt(spec.arch, has_images));
    if (!gen.ok()) {
      c.Report(file, false, gen.status().ToString());
      continue;
    }
    bool same = true;
    std::ostringstream m;
    for (int64_t b = 0; b < B; ++b) {
      const auto& ours = (*gen)[b];
      for (int64_t t = 0; t < want.size(1); ++t) {
        int64_t expected = want[b][t].item<int64_t>();
        int64_t got = t < static_cast<int64_t>(ours.size()) ? ours[t] : spec.llm.pad_id;
        if (t >= static_cast<int64_t>(ours.size()) && t > 0 &&
            std::find(spec.llm.stop_ids.begin(), spec.llm.stop_ids.end(), ours.back()) != spec.llm.stop_ids.end()) {
          continue;  // finished row: the official output pads, we stop
        }
        if (got != expected) {
          same = false;
          m << "row " << b << " token " << t << ": ours " << got << ", expected " << expected << "; ";
          break;
        }
      }
    }
    c.Report(file.substr(0, file.size() - 4), same, same ? "identical" : m.str());
  }
  if (c.Has(kBeamFixture)) CheckBeamFixture(c, model, rows, row_images, use_embeds, has_images);

  // ---- bf16: argmax within the official top-k ----
  if (bf16_model != nullptr && c.Has("top10_ids.npy")) {
    std::vector<at::Tensor> bf_images;
    for (size_t i = 0; i < pixels.size(); ++i) {
      auto e = bf16_model->EncodeImage({pixels[i], gh, gw});
      if (!e.ok()) return c.Report("bf16", false, e.status().ToString());
      bf_images.push_back(*e);
    }
    StepInput s2 = step;
    s2.collect_hidden = false;
    if (!use_embeds) s2.image_embeds = bf_images;
    for (int64_t b = 0; b < B; ++b) (void)bf16_model->ReserveSequence(b, static_cast<int64_t>(rows[b].keep.size()));
    auto o2 = bf16_model->Forward(s2);
    for (int64_t b = 0; b < B; ++b) bf16_model->ReleaseSequence(b);
    if (!o2.ok()) return c.Report("bf16", false, o2.status().ToString());
    at::Tensor want_i = pack(*c.Load("top10_ids.npy"));
    at::Tensor arg = o2->logits.to(at::kCPU).argmax(-1);
    const int64_t k = 5;
    at::Tensor in_topk = (want_i.narrow(1, 0, k) == arg.unsqueeze(1)).any(1);
    at::Tensor top1 = want_i.select(1, 0) == arg;
    const double frac_topk = in_topk.to(at::kDouble).mean().item<double>();
    const double frac_top1 = top1.to(at::kDouble).mean().item<double>();
    std::ostringstream m;
    m << "bf16 argmax equals the official argmax at " << frac_top1 * 100 << "% of positions and is in its top-" << k
      << " at " << frac_topk * 100 << "%";
    c.Report("bf16_topk", frac_topk == 1.0, m.str());
  }
}

void ApplyModelInfo(const fs::path& folder, checkpoint::ModelSpec& spec) {
  // Tiny fixture towers are not the released ones, and 1.0 checkpoints carry no vision config:
  // model_info.json states their head counts.
  auto info = ReadJsonFile(folder / "model_info.json");
  if (!info.ok()) return;
  const auto& j = *info;
  if (j.contains("vision") && j["vision"].contains("num_heads")) spec.vision.heads = j["vision"]["num_heads"].get<int64_t>();
  if (j.contains("vision") && j["vision"].contains("clip_heads")) spec.vision.heads = j["vision"]["clip_heads"].get<int64_t>();
  if (j.contains("qformer") && j["qformer"].contains("num_attention_heads")) {
    spec.vision.qformer_heads = j["qformer"]["num_attention_heads"].get<int64_t>();
  }
}

}  // namespace

std::vector<FixtureCheckResult> RunModelFixtureChecks(const fs::path& root, const FixtureCheckOptions& options) {
  std::vector<FixtureCheckResult> results;
  std::vector<fs::path> folders;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    if (entry.is_directory() && fs::exists(entry.path() / "checkpoint") && fs::exists(entry.path() / "cases")) {
      folders.push_back(entry.path());
    }
  }
  if (ec) {
    results.push_back({root.string(), false, "cannot list fixtures folder: " + ec.message()});
    return results;
  }
  std::sort(folders.begin(), folders.end());
  for (const auto& folder : folders) {
    const std::string name = folder.filename().string();
    if (!options.only_folder.empty() && name != options.only_folder) continue;
    auto fail = [&](const std::string& what, const Status& st) {
      FixtureCheckResult r{name + "/" + what, false, st.ToString()};
      if (options.on_result) options.on_result(r);
      results.push_back(std::move(r));
    };
    auto described = checkpoint::DescribeCheckpoint(folder / "checkpoint");
    if (!described.ok()) { fail("checkpoint", described.status()); continue; }
    checkpoint::ModelSpec spec = described->spec;
    ApplyModelInfo(folder, spec);
    StageOptions f32_options;
    f32_options.device = options.device;
    f32_options.kernels = options.kernels;
    auto fp32 = StageModel::Load(folder / "checkpoint", spec, WholeModel(spec), f32_options);
    if (!fp32.ok()) { fail("load", fp32.status()); continue; }
    std::unique_ptr<StageModel> bf16;
    if (options.check_bf16) {
      StageOptions o = f32_options;
      o.dtype = ComputeDType::kBF16;
      auto loaded = StageModel::Load(folder / "checkpoint", spec, WholeModel(spec), o);
      if (!loaded.ok()) { fail("load_bf16", loaded.status()); continue; }
      bf16 = std::move(loaded).value();
    }
    std::vector<fs::path> cases;
    for (const auto& entry : fs::directory_iterator(folder / "cases", ec)) {
      if (fs::exists(entry.path() / "manifest.json")) cases.push_back(entry.path());
    }
    std::sort(cases.begin(), cases.end());
    for (const auto& case_dir : cases) {
      try {
        CheckCase(case_dir, name + "/" + case_dir.filename().string(), **fp32, bf16.get(), results, options);
      } catch (const std::exception& e) {
        fail(case_dir.filename().string(), InternalError(e.what()));
      }
    }
  }
  return results;
}

}  // namespace xcpipe::model
