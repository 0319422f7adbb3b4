#include "xcpipe/checkpoint/convert.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "xcpipe/base/files.h"
#include "xcpipe/checkpoint/safetensors.h"
#include "xcpipe/checkpoint/torch_pickle.h"

namespace xcpipe::checkpoint {

namespace {

namespace fs = std::filesystem;

constexpr const char* kTorchIndexFileName = "pytorch_model.bin.index.json";

bool IsPlainFileName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos;
}

// The input shards, in order, and (when there is an index) the shard each tensor should be in.
struct InputPlan {
  std::vector<std::string> shards;
  std::map<std::string, std::string> expected_shard;  // empty without an index
};

StatusOr<InputPlan> PlanInputs(const fs::path& in_dir) {
  InputPlan plan;
  std::error_code ec;
  const fs::path index_path = in_dir / kTorchIndexFileName;
  if (fs::exists(index_path, ec)) {
    XCPIPE_ASSIGN_OR_RETURN(nlohmann::json index, ReadJsonFile(index_path));
    auto map = index.find("weight_map");
    if (!index.is_object() || map == index.end() || !map->is_object()) {
      return InvalidArgumentError(index_path.string() + ": no \"weight_map\" object");
    }
    std::set<std::string> shards;
    for (const auto& [name, shard] : map->items()) {
      if (!shard.is_string() || !IsPlainFileName(shard.get<std::string>())) {
        return InvalidArgumentError(index_path.string() + ": weight_map['" + name + "'] is not a plain file name");
      }
      plan.expected_shard[name] = shard.get<std::string>();
      shards.insert(shard.get<std::string>());
    }
    plan.shards.assign(shards.begin(), shards.end());
    for (const auto& shard : plan.shards) {
      if (!fs::exists(in_dir / shard, ec)) {
        return NotFoundError(index_path.string() + " names shard '" + shard + "', but " + (in_dir / shard).string() +
                             " does not exist (missing shard)");
      }
    }
    return plan;
  }
  for (const auto& item : fs::directory_iterator(in_dir, ec)) {
    const std::string name = item.path().filename().string();
    if (item.is_regular_file() && name.rfind("pytorch_model", 0) == 0 && item.path().extension() == ".bin") {
      plan.shards.push_back(name);
    }
  }
  if (ec) return InvalidArgumentError(in_dir.string() + ": cannot list: " + ec.message());
  std::sort(plan.shards.begin(), plan.shards.end());
  if (plan.shards.empty()) {
    return NotFoundError(in_dir.string() + ": no pytorch_model*.bin files and no " + kTorchIndexFileName);
  }
  return plan;
}

bool IsCheckpointFile(const std::string& name) {
  auto ends_with = [&](std::string_view suffix) {
    return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return ends_with(".bin") || ends_with(".safetensors") || name == kTorchIndexFileName ||
         name == kSafetensorsIndexFileName || ends_with(".partial");
}

}  // namespace

StatusOr<ConvertSummary> ConvertTorchCheckpoint(const fs::path& in_dir, const fs::path& out_dir,
                                                const ConvertOptions& options,
                                                const std::function<void(const ConvertedShard&)>& on_shard) {
  std::error_code ec;
  if (!fs::is_directory(in_dir, ec)) return NotFoundError(in_dir.string() + ": no such folder");
  if (fs::exists(out_dir, ec) && fs::equivalent(in_dir, out_dir, ec)) {
    return FailedPreconditionError("the output folder must differ from the input folder (" + in_dir.string() + ")");
  }
  XCPIPE_ASSIGN_OR_RETURN(InputPlan plan, PlanInputs(in_dir));

  fs::create_directories(out_dir, ec);
  if (ec) return InvalidArgumentError(out_dir.string() + ": cannot create: " + ec.message());
  if (!options.overwrite) {
    for (const auto& item : fs::directory_iterator(out_dir, ec)) {
      const std::string name = item.path().filename().string();
      if (name == kSafetensorsIndexFileName || item.path().extension() == ".safetensors") {
        return FailedPreconditionError(out_dir.string() + " already holds a checkpoint (" + name +
                                       "); pass --force to replace it");
      }
    }
  }

  ConvertSummary summary;
  std::map<std::string, std::string> weight_map;  // tensor -> output shard
  std::map<std::string, std::string> source_of;   // tensor -> input shard
  const size_t count = plan.shards.size();
  for (size_t k = 0; k < count; ++k) {
    const std::string& source = plan.shards[k];
    char output[64];
    std::snprintf(output, sizeof output, "model-%05zu-of-%05zu.safetensors", k + 1, count);
    XCPIPE_ASSIGN_OR_RETURN(auto archive, TorchZipFile::Open(in_dir / source));
    std::vector<SafetensorsFileWriter::Entry> entries;
    for (const auto& t : archive->tensors()) {
      if (auto it = source_of.find(t.name); it != source_of.end()) {
        return InvalidArgumentError("tensor '" + t.name + "' is in both " + it->second + " and " + source);
      }
      if (!plan.expected_shard.empty()) {
        auto it = plan.expected_shard.find(t.name);
        if (it == plan.expected_shard.end() || it->second != source) {
          return InvalidArgumentError(
              (in_dir / source).string() + " holds tensor '" + t.name + "', which " + kTorchIndexFileName +
              (it == plan.expected_shard.end() ? " does not list" : " places in " + it->second));
        }
      }
      source_of[t.name] = source;
      entries.push_back({t.name, t.dtype, t.shape});
    }
    XCPIPE_ASSIGN_OR_RETURN(auto writer,
                            SafetensorsFileWriter::Create(out_dir / output, std::move(entries), {{"format", "pt"}}));
    ConvertedShard shard{source, output, 0, 0};
    for (const auto& t : archive->tensors()) {
      XCPIPE_ASSIGN_OR_RETURN(std::string bytes, archive->ReadTensor(t));
      XCPIPE_RETURN_IF_ERROR(writer->Append(bytes));
      weight_map[t.name] = output;
      ++shard.tensors;
      shard.bytes += bytes.size();
    }
    XCPIPE_RETURN_IF_ERROR(writer->Finish());
    summary.tensors += shard.tensors;
    summary.bytes += shard.bytes;
    summary.shards.push_back(shard);
    if (on_shard) on_shard(shard);
  }
  for (const auto& [name, shard] : plan.expected_shard) {
    if (!source_of.count(name)) {
      return NotFoundError(std::string(kTorchIndexFileName) + " lists tensor '" + name + "' in " + shard +
                           ", which does not hold it");
    }
  }
  XCPIPE_RETURN_IF_ERROR(WriteSafetensorsIndex(out_dir, weight_map, summary.bytes));

  // Everything else a model folder carries (config, tokenizer, code) comes along.
  for (const auto& item : fs::directory_iterator(in_dir, ec)) {
    const std::string name = item.path().filename().string();
    if (!item.is_regular_file() || IsCheckpointFile(name)) continue;
    const auto target = out_dir / name;
    if (fs::exists(target, ec) && !options.overwrite) continue;
    fs::copy_file(item.path(), target, fs::copy_options::overwrite_existing, ec);
    if (ec) return InternalError("copy " + item.path().string() + " -> " + target.string() + ": " + ec.message());
    summary.copied_files.push_back(name);
  }
  std::sort(summary.copied_files.begin(), summary.copied_files.end());
  return summary;
}

}  // namespace xcpipe::checkpoint
