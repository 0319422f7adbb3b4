// Converts an official checkpoint folder of torch.save shards (pytorch_model-0000K-of-0000N.bin,
// or a single pytorch_model.bin) into safetensors shards plus model.safetensors.index.json, the
// form every xcpipe process reads. Torch-free (see torch_pickle.h for what is accepted).
//
// One input shard is converted at a time, one tensor in memory at a time (at most one storage
// plus one tensor: ~1.5 GB for a 7B model's embedding), so a 7B model converts on a 24 GB host.
// Output shards keep the input's grouping and tensor order: model-0000K-of-0000N.safetensors,
// metadata {"format": "pt"} (what transformers expects). Every other regular file of the input
// folder (config.json, tokenizer files, code) is copied beside them.
//
// Failure leaves no partial shard under its final name (each shard is written to a temporary
// file and renamed); already finished shards of an interrupted run stay and are rewritten by the
// next run with `overwrite`.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "xcpipe/base/status.h"

namespace xcpipe::checkpoint {

struct ConvertOptions {
  // Replace an existing converted checkpoint (and copied files) in the output folder.
  bool overwrite = false;
};

struct ConvertedShard {
  std::string source;  // input file name
  std::string output;  // output file name
  size_t tensors = 0;
  uint64_t bytes = 0;
};

struct ConvertSummary {
  std::vector<ConvertedShard> shards;
  std::vector<std::string> copied_files;
  size_t tensors = 0;
  uint64_t bytes = 0;
};

// Errors: NotFound (no input shards, a shard named by pytorch_model.bin.index.json is missing),
// InvalidArgument (a file that is not a torch.save archive, a refused pickle, a tensor in two
// shards, an index that disagrees with the shards), FailedPrecondition (output already holds a
// checkpoint and !overwrite, or output == input). `on_shard` is called after each shard.
StatusOr<ConvertSummary> ConvertTorchCheckpoint(const std::filesystem::path& in_dir,
                                                const std::filesystem::path& out_dir, const ConvertOptions& options,
                                                const std::function<void(const ConvertedShard&)>& on_shard = {});

}  // namespace xcpipe::checkpoint
