// xcpipe check-fixtures DIR: every check of a golden fixtures folder, with a line per check
// and, last, exactly "N passed, M failed". Tokenizer and image checks run in this process;
// the model checks run in an xcpipe-worker process (libtorch and the tokenizer's
// sentencepiece cannot share a process: their two protobufs clash) whose JSON lines are merged here.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>

#include "commands.h"
#include "signalled_cluster.h"
#include "xcpipe/base/exit_codes.h"
#include "xcpipe/base/files.h"
#include "xcpipe/base/npy.h"
#include "xcpipe/base/subprocess.h"
#include "xcpipe/beam/beam_search.h"
#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/coordinator/client.h"
#include "xcpipe/coordinator/local_cluster.h"
#include "xcpipe/image/decode.h"
#include "xcpipe/image/fixture_checks.h"
#include "xcpipe/image/preprocess.h"
#include "xcpipe/tokenizer/fixture_checks.h"

namespace xcpipe::cli {
namespace {

struct Tally {
  int passed = 0;
  int failed = 0;
  void Print(bool ok, const std::string& name, const std::string& message) {
    (ok ? passed : failed)++;
    std::printf("%s %s: %s\n", ok ? "PASS" : "FAIL", name.c_str(), message.c_str());
    std::fflush(stdout);
  }
};

// Reads an .npy the case must have; a failure is reported as the check's failure.
std::optional<NpyArray> Load(const std::filesystem::path& file, Tally& tally, const std::string& name) {
  auto a = ReadNpy(file);
  if (!a.ok()) {
    tally.Print(false, name, a.status().ToString());
    return std::nullopt;
  }
  return std::move(a).value();
}

// The model checks through a local cluster of `workers` worker processes: every case's prompt
// (ids and images exactly as the fixture has them) is submitted to the coordinator; the greedy
// tokens must equal the official ones and the logits of the first generated token must match
// the official logits at the last prompt position.
struct CheckSettings {
  std::string dir;
  std::string folder;  // only this model folder (empty: all)
  bool bf16 = true;    // in process: the bf16 top-k agreement checks too
  int workers = 0;     // > 0: through a local cluster of that many worker processes
  std::string device = "cpu";
  std::string dtype = "f32";  // through workers: f32 (tokens identical) or bf16 (top-k agreement)
  bool generic = false;
  std::string vision_stage = "auto";  // through workers: where the vision block runs
};

void RunClusterChecks(const CheckSettings& settings, Tally& tally) {
  const std::string& dir = settings.dir;
  const std::string& only_folder = settings.folder;
  const int workers = settings.workers;
  const bool bf16 = settings.dtype == "bf16";
  namespace fs = std::filesystem;
  std::vector<fs::path> folders;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (fs::exists(e.path() / "checkpoint") && fs::exists(e.path() / "cases")) folders.push_back(e.path());
  }
  std::sort(folders.begin(), folders.end());
  for (const auto& folder : folders) {
    const std::string fname = folder.filename().string();
    if (!only_folder.empty() && fname != only_folder) continue;
    const std::string prefix = "cluster" + std::to_string(workers) + (bf16 ? "-bf16" : "") +
                               (settings.vision_stage == "separate" ? "-vision/" : "/") + fname;
    auto described = checkpoint::DescribeCheckpoint(folder / "checkpoint");
    if (!described.ok()) {
      tally.Print(false, prefix, described.status().ToString());
      continue;
    }
    const auto& spec = described->spec;
    coordinator::LocalClusterOptions o;
    o.model_dir = folder / "checkpoint";
    o.workers = workers;
    o.quiet_workers = true;
    o.device = settings.device;
    o.dtype = settings.dtype;
    o.generic = settings.generic;
    o.coordinator.vision_stage = settings.vision_stage;
    o.coordinator.edge.max_prompt_tokens = 1 << 16;
    auto cluster = StartLocalCluster(o);
    if (!cluster.ok()) {
      tally.Print(false, prefix, cluster.status().ToString());
      continue;
    }
    auto client = coordinator::Client::Connect((*cluster)->address(), std::chrono::seconds(10));
    if (!client.ok()) {
      tally.Print(false, prefix, client.status().ToString());
      continue;
    }
    std::vector<fs::path> cases;
    for (const auto& e : fs::directory_iterator(folder / "cases"))
      if (fs::exists(e.path() / "manifest.json")) cases.push_back(e.path());
    std::sort(cases.begin(), cases.end());
    for (const auto& cdir : cases) {
      const std::string name = prefix + "/" + cdir.filename().string();
      auto manifest = ReadJsonFile(cdir / "manifest.json");
      if (!manifest.ok()) {
        tally.Print(false, name, manifest.status().ToString());
        continue;
      }
      const fs::path ids_file = fs::exists(cdir / "input_ids_with_image_slots.npy")
                                    ? cdir / "input_ids_with_image_slots.npy"
                                    : cdir / "input_ids.npy";
      if (!fs::exists(ids_file)) {
        tally.Print(true, name, "skipped: the case records embeddings only (checked in-process)");
        continue;
      }
      auto ids = Load(ids_file, tally, name);
      if (!ids) continue;
      std::optional<NpyArray> mask, attn;
      if (fs::exists(cdir / "im_mask.npy")) mask = Load(cdir / "im_mask.npy", tally, name);
      if (fs::exists(cdir / "attention_mask.npy")) attn = Load(cdir / "attention_mask.npy", tally, name);
      // Images, preprocessed as the official code (or as recorded).
      std::vector<coordinator::PreparedImage> images;
      const auto& values = (*manifest)["values"];
      int64_t gh = 1, gw = 1;
      if (values.contains("tile_grid_hw")) {
        gh = values["tile_grid_hw"][0].get<int64_t>();
        gw = values["tile_grid_hw"][1].get<int64_t>();
      }
      auto add_image = [&](image::FloatImage f) {
        coordinator::PreparedImage p;
        p.channels = f.channels;
        p.height = f.height;
        p.width = f.width;
        p.grid_h = gh;
        p.grid_w = gw;
        p.pixels = std::move(f.data);
        images.push_back(std::move(p));
      };
      if (fs::exists(cdir / "pixel_values.npy")) {
        auto pv = Load(cdir / "pixel_values.npy", tally, name);
        if (!pv) continue;
        auto values_f = pv->ToFloat();
        const int64_t per = pv->shape[1] * pv->shape[2] * pv->shape[3];
        for (int64_t b = 0; b < pv->shape[0]; ++b) {
          image::FloatImage f{pv->shape[1], pv->shape[2], pv->shape[3],
                              std::vector<float>(values_f.begin() + b * per, values_f.begin() + (b + 1) * per)};
          add_image(std::move(f));
        }
      } else if (fs::exists(cdir / "hd_image.png")) {
        auto rgb = image::ReadImageFile(cdir / "hd_image.png");
        if (!rgb.ok()) {
          tally.Print(false, name, rgb.status().ToString());
          continue;
        }
        add_image(image::ToNormalizedTensor(*rgb, image::ClipNormalize()));
      } else if (fs::exists(cdir / "image.png")) {
        auto rgb = image::ReadImageFile(cdir / "image.png");
        if (!rgb.ok()) {
          tally.Print(false, name, rgb.status().ToString());
          continue;
        }
        auto f = image::PreprocessFixedSize(*rgb, spec.vision.image_size);
        if (!f.ok()) {
          tally.Print(false, name, f.status().ToString());
          continue;
        }
        add_image(std::move(*f));
      }
      const int64_t B = ids->shape[0], T = ids->shape[1];
      auto id_values = ids->ToInt64();
      std::vector<int64_t> mask_values = mask ? mask->ToInt64() : std::vector<int64_t>(B * T, 0);
      std::vector<int64_t> attn_values = attn ? attn->ToInt64() : std::vector<int64_t>(B * T, 1);
      size_t next_image = 0;
      // bf16 through workers: the first token must be within the official (float32) top-5 at
      // the last prompt position, as in process; later tokens may rightly drift from float32.
      std::optional<NpyArray> top10;
      if (bf16) {
        if (!fs::exists(cdir / "top10_ids.npy")) continue;
        top10 = Load(cdir / "top10_ids.npy", tally, name);
        if (!top10) continue;
      }
      // Row b of the case as the model sees it (images in order: call for rows 0, 1, ... after
      // setting next_image to 0).
      auto row_request = [&](int64_t b) {
        coordinator::GenerateRequest r;
        for (int64_t t = 0; t < T; ++t) {
          if (attn_values[b * T + t] == 0) continue;
          r.token_ids.push_back(id_values[b * T + t]);
          r.im_mask.push_back(static_cast<uint8_t>(mask_values[b * T + t] != 0));
        }
        int64_t slots = 0;
        for (int64_t id : r.token_ids) slots += id < 0;
        while (slots > 0 && next_image < images.size()) {
          r.pixel_images.push_back(images[next_image]);
          slots -= spec.ImageTokens(images[next_image].grid_h, images[next_image].grid_w);
          ++next_image;
        }
        const bool has_images = !r.pixel_images.empty();
        if (checkpoint::PenaltyCoversPrompt(spec.arch, has_images)) r.penalty_context = r.token_ids;
        return r;
      };
      for (auto [file, penalty] : {std::pair<std::string, double>{"generated_ids.npy", 1.0},
                                   std::pair<std::string, double>{"generated_ids_rep1005.npy", 1.005}}) {
        if (!fs::exists(cdir / file) || (bf16 && penalty != 1.0)) continue;
        auto want = Load(cdir / file, tally, name);
        if (!want) continue;
        auto want_ids = want->ToInt64();
        const int64_t n_new = want->shape[1];
        next_image = 0;
        for (int64_t b = 0; b < B; ++b) {
          coordinator::GenerateRequest r = row_request(b);
          r.max_new_tokens = static_cast<uint32_t>(bf16 ? 1 : n_new);
          r.sampling.repetition_penalty = penalty;
          r.want_logits = penalty == 1.0 && !bf16;
          const std::string row_name =
              name + "/" + file.substr(0, file.size() - 4) + (B > 1 ? "/row" + std::to_string(b) : "");
          auto result = (*client)->Generate(r, std::chrono::minutes(5));
          if (!result.ok() || !result->error.empty()) {
            tally.Print(false, row_name, result.ok() ? result->error : result.status().ToString());
            continue;
          }
          const auto& got = result->token_ids.empty() ? std::vector<int64_t>{} : result->token_ids[0];
          if (bf16) {
            int64_t last = -1;
            for (int64_t t = 0; t < T; ++t)
              if (attn_values[b * T + t] != 0) last = t;
            const auto ids10 = top10->ToInt64();
            const int64_t k10 = top10->shape[2], k = 5;
            bool in_top = false;
            std::string official;
            for (int64_t j = 0; j < k && last >= 0; ++j) {
              const int64_t id = ids10[(b * T + last) * k10 + j];
              in_top |= !got.empty() && got[0] == id;
              official += (j ? "," : "") + std::to_string(id);
            }
            tally.Print(in_top, row_name + "/first_token_in_top5",
                        "ours " + (got.empty() ? std::string("none") : std::to_string(got[0])) + ", official top-5 " +
                            official);
            continue;
          }
          bool same = true;
          std::string why;
          for (int64_t t = 0; t < n_new; ++t) {
            const int64_t expected = want_ids[b * n_new + t];
            if (t >= static_cast<int64_t>(got.size())) {
              // Finished rows are padded in the official batch output; we stop at the stop id.
              const bool stopped = !got.empty() && std::find(spec.llm.stop_ids.begin(), spec.llm.stop_ids.end(),
                                                             got.back()) != spec.llm.stop_ids.end();
              if (!stopped) {
                same = false;
                why = "stopped early at token " + std::to_string(t);
              }
              break;
            }
            if (got[t] != expected) {
              same = false;
              why = "token " + std::to_string(t) + ": ours " + std::to_string(got[t]) + ", expected " +
                    std::to_string(expected);
              break;
            }
          }
          tally.Print(same, row_name, same ? "identical (" + std::to_string(got.size()) + " tokens)" : why);
          // The first token's logits are the official logits at the last prompt position.
          if (r.want_logits && fs::exists(cdir / "logits_last2.npy") && !result->logits.empty()) {
            auto ref = Load(cdir / "logits_last2.npy", tally, name);
            if (!ref) continue;
            const int64_t V = ref->shape[2];
            auto ref_values = ref->ToFloat();
            const auto& ours = result->logits[0];
            double worst = 0, max_abs = 0;
            const double atol = 1e-4, rtol = 1e-4;
            for (int64_t v = 0; v < V && v < static_cast<int64_t>(ours.size()); ++v) {
              const double e = ref_values[(b * 2 + 1) * V + v];
              const double d = std::abs(ours[v] - e);
              max_abs = std::max(max_abs, d);
              worst = std::max(worst, d - (atol + rtol * std::abs(e)));
            }
            tally.Print(worst <= 0 && static_cast<int64_t>(ours.size()) == V, row_name + "/logits",
                        "max abs diff " + std::to_string(max_abs));
          }
        }
      }
      // The official default generation (1.0's chat(): beam search), with the settings the
      // manifest states, through the cluster: the coordinator keeps the search, the stages fork
      // and reorder the beams' KV, the last stage sends each beam row's best candidates.
      constexpr char kBeamFile[] = "generated_ids_official_beam5_rep1.5.npy";
      if (!bf16 && fs::exists(cdir / kBeamFile)) {
        const std::string beam_name = name + "/generated_ids_official_beam5_rep1.5";
        auto want = Load(cdir / kBeamFile, tally, beam_name);
        if (!want) continue;
        const auto& files = manifest->value("files", nlohmann::json::object());
        const std::string description =
            files.contains(kBeamFile) ? files[kBeamFile].value("description", std::string()) : std::string();
        auto settings = beam::BeamSettingsFromDescription(description, kBeamFile, spec, want->shape[1]);
        if (!settings.ok()) {
          tally.Print(false, beam_name, settings.status().ToString());
          continue;
        }
        const auto want_ids = want->ToInt64();
        const int64_t n_new = want->shape[1];
        next_image = 0;
        for (int64_t b = 0; b < B; ++b) {
          coordinator::GenerateRequest r = row_request(b);
          r.max_new_tokens = static_cast<uint32_t>(settings->max_new_tokens);
          r.sampling.num_beams = settings->num_beams;
          r.sampling.repetition_penalty = settings->repetition_penalty;
          r.sampling.length_penalty = settings->length_penalty;
          r.sampling.early_stopping = static_cast<int>(settings->early_stopping);
          r.sampling.min_length = settings->min_length;
          r.sampling.min_new_tokens = settings->min_new_tokens;
          const std::string row_name = beam_name + (B > 1 ? "/row" + std::to_string(b) : "");
          auto result = (*client)->Generate(r, std::chrono::minutes(5));
          if (!result.ok() || !result->error.empty()) {
            tally.Print(false, row_name, result.ok() ? result->error : result.status().ToString());
            continue;
          }
          const auto& got = result->token_ids.empty() ? std::vector<int64_t>{} : result->token_ids[0];
          bool same = true;
          std::string why;
          for (int64_t t = 0; t < n_new; ++t) {
            if (t >= static_cast<int64_t>(got.size())) {
              // The official output pads a hypothesis that ended early.
              const bool ended = !got.empty() && std::find(spec.llm.stop_ids.begin(), spec.llm.stop_ids.end(),
                                                           got.back()) != spec.llm.stop_ids.end();
              if (!ended) same = false, why = "ours ends after " + std::to_string(got.size()) + " tokens";
              break;
            }
            if (got[t] != want_ids[b * n_new + t]) {
              same = false;
              why = "token " + std::to_string(t) + ": ours " + std::to_string(got[t]) + ", expected " +
                    std::to_string(want_ids[b * n_new + t]);
              break;
            }
          }
          tally.Print(same, row_name,
                      same ? "identical (" + std::to_string(got.size()) + " tokens, " +
                                 std::to_string(settings->num_beams) + " beams, repetition penalty " +
                                 std::to_string(settings->repetition_penalty) + ")"
                           : why);
        }
      }
    }
    (*cluster)->Stop();
  }
}

int RunCheckFixtures(const CheckSettings& settings) {
  namespace fs = std::filesystem;
  const std::string& dir = settings.dir;
  const std::string& only_folder = settings.folder;
  if (!fs::is_directory(dir)) {
    std::fprintf(stderr,
                 "xcpipe check-fixtures: '%s' is not a folder; expected a fixtures folder with\n"
                 "tokenizer/ and model folders holding checkpoint/ and cases/\n",
                 dir.c_str());
    return kExitInvalidInput;
  }
  Tally tally;
  auto in_folder = [&](const std::string& name) {
    return only_folder.empty() || name.rfind(only_folder + "/", 0) == 0 || name.rfind("tokenizer", 0) == 0;
  };
  for (const auto& r : tokenizer::RunTokenizerFixtureChecks(dir)) {
    if (in_folder(r.name)) tally.Print(r.passed, "tokenizer/" + r.name, r.message);
  }
  for (const auto& r : image::RunImageFixtureChecks(dir)) {
    if (in_folder(r.case_name)) tally.Print(r.passed, "image/" + r.case_name, r.message);
  }

  if (settings.workers > 0) {
    RunClusterChecks(settings, tally);
    std::printf("%d passed, %d failed\n", tally.passed, tally.failed);
    return tally.failed == 0 ? kExitOk : kExitCheckFailed;
  }
  std::vector<std::string> argv = {(ExecutableDir() / "xcpipe-worker").string()};
  if (settings.generic) argv.push_back("--generic");
  argv.insert(argv.end(), {"check-fixtures", dir, "--device", settings.device});
  if (!only_folder.empty()) argv.insert(argv.end(), {"--folder", only_folder});
  if (!settings.bf16) argv.push_back("--no-bf16");
  auto worker = Subprocess::Start(argv, {.capture_stdout = true, .silence_stderr = false, .extra_env = {}});
  if (!worker.ok()) {
    tally.Print(false, "model", worker.status().ToString());
  } else {
    while (true) {
      // A single case of a tiny model takes seconds; a silent worker for minutes is stuck.
      auto line = (*worker)->ReadLine(std::chrono::minutes(10));
      if (!line.ok()) {
        tally.Print(false, "model", "worker gave no result: " + line.status().ToString());
        break;
      }
      if (!line->has_value()) break;
      try {
        auto j = nlohmann::json::parse(**line);
        tally.Print(j.at("passed").get<bool>(), "model/" + j.at("case").get<std::string>(),
                    j.at("message").get<std::string>());
      } catch (const std::exception& e) {
        tally.Print(false, "model", "unreadable worker output: " + **line);
      }
    }
    auto code = (*worker)->Wait(std::chrono::seconds(30));
    if (code.ok() && *code == kExitNotImplemented) {
      // The worker printed why (a CUDA device asked of a libtorch without CUDA): pass it on.
      std::printf("%d passed, %d failed\n", tally.passed, tally.failed);
      return kExitNotImplemented;
    }
    if (!code.ok() || (*code != kExitOk && *code != kExitCheckFailed)) {
      tally.Print(false, "model",
                  "worker exited abnormally (" +
                      (code.ok() ? "exit code " + std::to_string(*code) : code.status().ToString()) + ")");
    }
  }
  std::printf("%d passed, %d failed\n", tally.passed, tally.failed);
  return tally.failed == 0 ? kExitOk : kExitCheckFailed;
}

}  // namespace

void AddCheckFixturesCommand(CLI::App& app, Action& action) {
  auto* sub = app.add_subcommand(
      "check-fixtures",
      "compare tokenizer, image preprocessing and the C++ model with the official outputs in a fixtures folder");
  sub->footer(
      "Reads every model folder (checkpoint/ + cases/*/manifest.json) and tokenizer_cases.json under DIR and\n"
      "compares with the manifest tolerances. Prints a line per check and, last, 'N passed, M failed'.\n"
      "Exit 0 when all pass, 6 when any differs, 4 when DIR is not a fixtures folder, 7 when --device names a\n"
      "CUDA device and this build's libtorch has no CUDA.\n\n"
      "Examples:\n  xcpipe check-fixtures ../shared/fixtures\n  xcpipe check-fixtures ../shared/fixtures --folder "
      "ixc2_vl\n"
      "  xcpipe check-fixtures ../shared/fixtures --generic --workers 2 --dtype bf16   # what a GPU runs, on the CPU\n"
      "  xcpipe check-fixtures ../shared/fixtures --device cuda:0 --workers 2          # a GPU host\n"
      "  xcpipe check-fixtures ../shared/fixtures --workers 3 --vision-stage separate  # vision on a worker of its "
      "own");
  auto settings = std::make_shared<CheckSettings>();
  auto no_bf16 = std::make_shared<bool>(false);
  sub->add_option("dir", settings->dir, "fixtures folder")->required();
  sub->add_option("--folder", settings->folder, "only this model folder (e.g. ixc2_vl)");
  sub->add_flag("--no-bf16", *no_bf16, "skip the bf16 top-k agreement checks (in process)");
  sub->add_option("--workers", settings->workers, "run the model through a local cluster of N worker processes");
  sub->add_option("--device", settings->device, "compute device: cpu or cuda:K (exit 7 where libtorch has no CUDA)")
      ->capture_default_str();
  sub->add_option("--dtype", settings->dtype,
                  "with --workers: f32 (tokens identical, logits within 1e-4) or bf16 (first token within the "
                  "official top-5); in process both always run")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "bf16"}));
  sub->add_flag("--generic", settings->generic,
                "compute with the generic op sequence a CUDA device runs (no CPU-only fast paths)");
  sub->add_option("--vision-stage", settings->vision_stage,
                  "with --workers: where the vision block runs: auto, first (stage 0) or separate (a vision worker of "
                  "its own; needs --workers 2 or more)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "first", "separate"}));
  sub->callback([&action, settings, no_bf16] {
    action = [=] {
      CheckSettings s = *settings;
      s.bf16 = !*no_bf16;
      return RunCheckFixtures(s);
    };
  });
}

}  // namespace xcpipe::cli
