// xcpipe convert --in DIR --out DIR: official pytorch_model-*.bin shards (torch.save zip files
// of a state_dict) to safetensors shards + model.safetensors.index.json, without torch and
// without executing anything from the pickles. Then, where the folder has a config.json, the
// coverage proof: every tensor belongs to exactly one block of the detected model.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "commands.h"
#include "xcpipe/base/exit_codes.h"
#include "xcpipe/checkpoint/convert.h"
#include "xcpipe/checkpoint/model_spec.h"

namespace xcpipe::cli {
namespace {

struct ConvertArgs {
  std::string in;
  std::string out;
  bool force = false;
  bool no_check = false;
};

double GiB(uint64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0); }

int RunConvert(const ConvertArgs& args) {
  namespace fs = std::filesystem;
  checkpoint::ConvertOptions options;
  options.overwrite = args.force;
  auto summary =
      checkpoint::ConvertTorchCheckpoint(args.in, args.out, options, [](const checkpoint::ConvertedShard& s) {
        std::fprintf(stderr, "xcpipe convert: %s -> %s (%zu tensors, %.2f GiB)\n", s.source.c_str(), s.output.c_str(),
                     s.tensors, GiB(s.bytes));
      });
  if (!summary.ok()) {
    std::fprintf(stderr, "xcpipe convert: %s\n", summary.status().ToString().c_str());
    return ExitCodeFor(summary.status());
  }
  std::printf("converted %zu tensors (%.2f GiB) from %zu shards into %s\n", summary->tensors, GiB(summary->bytes),
              summary->shards.size(), args.out.c_str());
  if (!summary->copied_files.empty()) {
    std::string list;
    for (const auto& f : summary->copied_files) list += (list.empty() ? "" : ", ") + f;
    std::printf("copied %s\n", list.c_str());
  }
  if (args.no_check) return kExitOk;
  if (!fs::exists(fs::path(args.out) / "config.json")) {
    std::printf("coverage: skipped (no config.json in %s)\n", args.out.c_str());
    return kExitOk;
  }
  auto described = checkpoint::DescribeCheckpoint(args.out);
  if (!described.ok()) {
    std::fprintf(stderr, "xcpipe convert: converted, but the model cannot be described: %s\n",
                 described.status().ToString().c_str());
    return ExitCodeFor(described.status());
  }
  auto report = checkpoint::CheckCoverage(described->spec, described->tensors);
  if (!report.ok()) {
    std::fprintf(stderr, "xcpipe convert: converted, but %s\n", report.ToStatus().message().c_str());
    return kExitInvalidInput;
  }
  std::printf("coverage: ok (%s, %zu tensors in %zu blocks)\n",
              std::string(checkpoint::ArchName(described->spec.arch)).c_str(), described->tensors.tensors.size(),
              described->spec.blocks.size());
  return kExitOk;
}

}  // namespace

void AddConvertCommand(CLI::App& app, Action& action) {
  auto* sub = app.add_subcommand("convert", "convert official pytorch_model-*.bin shards to safetensors");
  sub->footer(
      "Reads DIR/pytorch_model.bin.index.json (or every DIR/pytorch_model*.bin) and writes, one shard at a\n"
      "time, OUT/model-0000K-of-0000N.safetensors and OUT/model.safetensors.index.json; the other files of\n"
      "DIR (config.json, tokenizer, code) are copied. Tensors keep their names, dtypes and order.\n\n"
      "Safe on untrusted files: the .bin pickles are interpreted, never run. Only a dict / OrderedDict of\n"
      "tensors is accepted; any other pickle GLOBAL (os.system, builtins.eval, ...) is refused with exit 4.\n"
      "Legacy non-zip files (torch < 1.6) are refused: re-save them with a newer torch first.\n\n"
      "After converting, when OUT has a config.json, the checkpoint is checked against the model\n"
      "(every tensor in exactly one block, nothing missing, right shapes); --no-check skips it.\n\n"
      "Exit 0 converted (and checked), 4 bad or missing input or a failed check, 1 output already holds a\n"
      "checkpoint (use --force) or a write failed.\n\n"
      "Example:\n"
      "  xcpipe convert --in ~/hf/internlm-xcomposer2-4khd-7b --out /data/ixc2-4khd\n"
      "  xcpipe plan --model /data/ixc2-4khd --cluster configs/cluster-2x24g.toml");
  auto args = std::make_shared<ConvertArgs>();
  sub->add_option("--in", args->in, "folder with pytorch_model*.bin (and config.json)")->required();
  sub->add_option("--out", args->out, "folder to write the safetensors checkpoint into (created if missing)")
      ->required();
  sub->add_flag("--force", args->force, "replace a checkpoint already in --out");
  sub->add_flag("--no-check", args->no_check, "skip the coverage check after converting");
  sub->callback([&action, args] { action = [args] { return RunConvert(*args); }; });
}

}  // namespace xcpipe::cli
