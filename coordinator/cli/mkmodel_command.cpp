// xcpipe mkmodel --arch A --preset P --out DIR: a random-weight model of version A in the official
// layout (sharded safetensors + index, config.json, clip_vision_config.json for 2.x, a freshly
// trained tokenizer.model), checked by reading it back as the runtime does. The generator is
// mkmodel::GenerateModel (common/mkmodel); this file is flags, progress lines and the summary.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "commands.h"
#include "xcpipe/base/exit_codes.h"
#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/mkmodel/model_generator.h"

namespace xcpipe::cli {
namespace {

struct MkmodelArgs {
  std::string arch;
  std::string preset = "tiny";
  std::string out;
  uint64_t seed = 0;
  std::string dtype = "f32";
  bool force = false;
};

double MiB(uint64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

int RunMkmodel(const MkmodelArgs& args) {
  mkmodel::GeneratorOptions options;
  // The flags are checked by CLI11 (IsMember); these cannot fail.
  options.arch = *checkpoint::ParseArch(args.arch);
  options.preset = *mkmodel::ParsePreset(args.preset);
  options.dtype = args.dtype == "bf16" ? checkpoint::DType::kBF16 : checkpoint::DType::kF32;
  options.seed = args.seed;
  options.overwrite = args.force;

  std::fprintf(stderr, "xcpipe mkmodel: %s %s (%s, seed %llu) into %s; training a %d-piece tokenizer\n",
               args.arch.c_str(), args.preset.c_str(), args.dtype.c_str(), static_cast<unsigned long long>(args.seed),
               args.out.c_str(), mkmodel::PresetVocabSize(options.preset));
  const auto start = std::chrono::steady_clock::now();
  auto model = mkmodel::GenerateModel(options, args.out, [](const mkmodel::WrittenFile& f) {
    if (f.shard >= 0) {
      std::fprintf(stderr, "xcpipe mkmodel: wrote %s (shard %d of %d, %zu tensors, %llu bytes = %.1f MiB)\n",
                   f.file.c_str(), f.shard + 1, f.num_shards, f.tensors, static_cast<unsigned long long>(f.bytes),
                   MiB(f.bytes));
    } else {
      std::fprintf(stderr, "xcpipe mkmodel: wrote %s (%llu bytes)\n", f.file.c_str(),
                   static_cast<unsigned long long>(f.bytes));
    }
  });
  if (!model.ok()) {
    std::fprintf(stderr, "xcpipe mkmodel: %s\n", model.status().ToString().c_str());
    return ExitCodeFor(model.status());
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto& plan = model->plan;
  const auto& llm = model->spec.llm;
  std::printf("wrote %s: %s (%s preset, %s, seed %llu)\n", std::filesystem::absolute(model->dir).string().c_str(),
              std::string(checkpoint::ArchName(model->spec.arch)).c_str(), args.preset.c_str(), args.dtype.c_str(),
              static_cast<unsigned long long>(args.seed));
  std::printf("  %llu parameters, %zu tensors in %d shard(s), %llu bytes of weights (%.1f MiB), %llu bytes on disk\n",
              static_cast<unsigned long long>(plan.parameters()), plan.tensors.size(), plan.num_shards,
              static_cast<unsigned long long>(plan.total_bytes()), MiB(plan.total_bytes()),
              static_cast<unsigned long long>(model->file_bytes));
  std::printf("  LLM hidden %lld, %lld layers, %lld heads / %lld KV heads, FFN %lld, vocab %lld (tokenizer.model)\n",
              static_cast<long long>(llm.hidden), static_cast<long long>(llm.layers), static_cast<long long>(llm.heads),
              static_cast<long long>(llm.kv_heads), static_cast<long long>(llm.intermediate),
              static_cast<long long>(llm.vocab));
  const auto& v = model->spec.vision;
  std::printf("  vision width %lld, %lld layers, %lld heads at %lld px; %lld image tokens per tile grid 1x1\n",
              static_cast<long long>(v.width), static_cast<long long>(v.layers), static_cast<long long>(v.heads),
              static_cast<long long>(v.image_size), static_cast<long long>(model->spec.ImageTokens(1, 1)));
  std::printf("  checked: describes as %s, every tensor in one of %zu blocks (%.1f s)\n",
              std::string(checkpoint::ArchName(model->spec.arch)).c_str(), model->spec.blocks.size(), seconds);
  return kExitOk;
}

}  // namespace

void AddMkmodelCommand(CLI::App& app, Action& action) {
  auto* sub = app.add_subcommand("mkmodel", "write a random-weight model in the official layout");
  sub->footer(
      "Writes into OUT a model of the chosen version with seeded random weights, laid out exactly as the\n"
      "official state_dict() (PLoRA A/B with the released ranks, HD separators, CLIP or EVA + Q-Former):\n"
      "model-0000K-of-0000N.safetensors + model.safetensors.index.json, config.json (the official config\n"
      "fields), clip_vision_config.json (2.x), and a tokenizer.model trained on the spot for the version.\n"
      "The same flags give byte-identical files. The result is read back and checked before exit.\n\n"
      "Presets: tiny   the fixtures' tiny dimensions, 2048-piece vocabulary (about 1-5 MB, seconds)\n"
      "         small  LLM hidden 1024, 8 layers, FFN 2816, 8192 pieces; vision width 256, 4 layers at the\n"
      "                version's real tile size (a few hundred MB; for benchmarks)\n"
      "         large  the 7B's decoder layer size (hidden 4096) with 8 layers, small towers (~2 G parameters:\n"
      "                ~4 GB in bf16; a decode benchmark that is memory-bound on a data-centre GPU)\n\n"
      "An existing, non-empty OUT is refused; --force replaces the model files in it (other files stay).\n\n"
      "Exit 0 written and checked, 1 OUT not empty (without --force), a write failed or the check failed,\n"
      "2 bad flags.\n\n"
      "Example:\n"
      "  xcpipe mkmodel --arch ixc2-vl --preset tiny --out /tmp/m-vl\n"
      "  xcpipe run --model /tmp/m-vl --prompt '<ImageHere>Describe this picture.' --image cat.png\n"
      "  xcpipe mkmodel --arch ixc2-4khd --preset small --dtype bf16 --seed 7 --out /data/bench-4khd");
  auto args = std::make_shared<MkmodelArgs>();
  sub->add_option("--arch", args->arch, "model version")
      ->required()
      ->check(CLI::IsMember({"ixc2-vl", "ixc2-4khd", "ixc2.5", "ixc1"}));
  sub->add_option("--preset", args->preset, "model size")
      ->capture_default_str()
      ->check(CLI::IsMember({"tiny", "small", "large"}));
  sub->add_option("--out", args->out, "folder to write the model into (created if missing)")->required();
  sub->add_option("--seed", args->seed, "seed of the weights and of the tokenizer's corpus")->capture_default_str();
  sub->add_option("--dtype", args->dtype, "weight dtype: f32 or bf16")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "bf16"}));
  sub->add_flag("--force", args->force, "replace the model files of a non-empty --out");
  sub->callback([&action, args] { action = [args] { return RunMkmodel(*args); }; });
}

}  // namespace xcpipe::cli
