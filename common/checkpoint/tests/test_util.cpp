#include "test_util.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>

#include "xcpipe/testing/paths.h"

namespace xcpipe::checkpoint::testing {

TempDir::TempDir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "xcpipe-ckpt-XXXXXX").string();
  char* made = ::mkdtemp(pattern.data());
  if (made == nullptr) {
    ADD_FAILURE() << "mkdtemp failed";
    return;
  }
  path_ = made;
}

TempDir::~TempDir() {
  std::error_code ec;
  if (!path_.empty()) std::filesystem::remove_all(path_, ec);
}

std::string PatternBytes(const std::string& seed, uint64_t bytes) {
  uint64_t state = 1469598103934665603ull;
  for (char c : seed) state = (state ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  std::string out(bytes, '\0');
  for (uint64_t i = 0; i < bytes; ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    out[i] = static_cast<char>(state >> 56);
  }
  return out;
}

std::string ReadAll(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteAll(const std::filesystem::path& file, const std::string& bytes) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

bool EditHeader(const std::filesystem::path& file, const std::string& from, const std::string& to) {
  std::string bytes = ReadAll(file);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  std::string header = bytes.substr(8, n);
  std::string data = bytes.substr(8 + n);
  auto pos = header.find(from);
  if (pos == std::string::npos) return false;
  header.replace(pos, from.size(), to);
  std::string prefix(8, '\0');
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  WriteAll(file, prefix + header + data);
  return true;
}

std::map<std::string, std::string> WriteCheckpoint(const std::filesystem::path& dir, const nlohmann::json& config,
                                                   const nlohmann::json* clip_config,
                                                   const std::vector<TensorInfo>& tensors, int shards,
                                                   const std::vector<TensorInfo>& duplicates_in_last_shard) {
  std::filesystem::create_directories(dir);
  WriteAll(dir / "config.json", config.dump(2));
  if (clip_config) WriteAll(dir / "clip_vision_config.json", clip_config->dump(2));
  std::map<std::string, std::string> data;
  std::map<std::string, std::string> weight_map;
  uint64_t total = 0;
  const size_t per_shard = (tensors.size() + shards - 1) / shards;
  for (int s = 0; s < shards; ++s) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, shards);
    std::vector<TensorToWrite> batch;
    for (size_t i = s * per_shard; i < tensors.size() && i < (s + 1) * per_shard; ++i) {
      const auto& t = tensors[i];
      data[t.name] = PatternBytes(t.name, t.bytes());
      weight_map[t.name] = name;
      total += t.bytes();
    }
    for (size_t i = s * per_shard; i < tensors.size() && i < (s + 1) * per_shard; ++i) {
      const auto& t = tensors[i];
      batch.push_back({t.name, t.dtype, t.shape, data[t.name]});
    }
    if (s == shards - 1) {
      for (const auto& t : duplicates_in_last_shard) {
        data[t.name + "#copy"] = PatternBytes(t.name, t.bytes());
        batch.push_back({t.name, t.dtype, t.shape, data[t.name + "#copy"]});
      }
    }
    Status st = WriteSafetensors(dir / name, batch);
    EXPECT_TRUE(st.ok()) << st.ToString();
  }
  Status st = WriteSafetensorsIndex(dir, weight_map, total);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return data;
}

std::vector<TensorInfo> SyntheticIxc2VlTensors(int layers, int64_t vocab) {
  auto dir = xcpipe::testing::FixturesDir() / "ixc2_vl" / "checkpoint";
  auto index = ReadJson(dir / "model.safetensors.index.json");
  std::set<std::string> shards;
  for (auto& [name, shard] : index["weight_map"].items()) shards.insert(shard.get<std::string>());
  std::vector<TensorInfo> fixture;
  for (const auto& shard : shards) {
    auto header = ReadSafetensorsHeader(dir / shard);
    EXPECT_TRUE(header.ok()) << header.status().ToString();
    if (!header.ok()) return {};
    for (auto& e : header->entries) fixture.push_back(e.info);
  }
  // Pipeline order, so that shards split the model the way real ones do.
  std::vector<TensorInfo> front, layer0_tensors, back;
  const std::string layer0 = "model.layers.0.";
  for (const auto& t : fixture) {
    TensorInfo copy = t;
    if (copy.name == "model.tok_embeddings.weight" || copy.name == "output.weight") copy.shape[0] = vocab;
    if (t.name.rfind(layer0, 0) == 0) {
      layer0_tensors.push_back(copy);
    } else if (t.name.rfind("model.layers.", 0) == 0) {
      continue;
    } else if (t.name == "model.norm.weight" || t.name == "output.weight") {
      back.push_back(copy);
    } else {
      front.push_back(copy);
    }
  }
  std::vector<TensorInfo> out = front;
  for (int i = 0; i < layers; ++i) {
    for (const auto& t : layer0_tensors) {
      TensorInfo copy = t;
      copy.name = "model.layers." + std::to_string(i) + "." + t.name.substr(layer0.size());
      out.push_back(copy);
    }
  }
  out.insert(out.end(), back.begin(), back.end());
  return out;
}

nlohmann::json ReadJson(const std::filesystem::path& file) {
  std::ifstream in(file);
  return nlohmann::json::parse(in);
}

}  // namespace xcpipe::checkpoint::testing
