// MappedCheckpoint and ReadCheckpointTensorTable on checkpoint folders written in a temp dir.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <set>
#include <sstream>

#include "test_util.h"
#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/checkpoint/safetensors.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::checkpoint {
namespace {

using testing::TempDir;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

nlohmann::json TinyVlConfig(int layers, int64_t vocab) {
  auto config = testing::ReadJson(xcpipe::testing::FixturesDir() / "ixc2_vl" / "checkpoint" / "config.json");
  config["num_hidden_layers"] = layers;
  config["vocab_size"] = vocab;
  return config;
}

nlohmann::json TinyVlClipConfig() {
  return testing::ReadJson(xcpipe::testing::FixturesDir() / "ixc2_vl" / "checkpoint" / "clip_vision_config.json");
}

class SyntheticCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(xcpipe::testing::FixturesDir() / "ixc2_vl")) {
      GTEST_SKIP() << "no fixtures at " << xcpipe::testing::FixturesDir();
    }
  }
  // Writes an 8-layer ixc2_vl-shaped checkpoint over 3 shards.
  void Write(int layers = 8, int shards = 3) {
    tensors_ = testing::SyntheticIxc2VlTensors(layers, kVocab);
    ASSERT_FALSE(tensors_.empty());
    config_ = TinyVlConfig(layers, kVocab);
    clip_ = TinyVlClipConfig();
    data_ = testing::WriteCheckpoint(dir_.path(), config_, &clip_, tensors_, shards);
  }
  static constexpr int64_t kVocab = 300;
  TempDir dir_;
  std::vector<TensorInfo> tensors_;
  nlohmann::json config_, clip_;
  std::map<std::string, std::string> data_;
};

// Sum of "Size:" (kB) over the mappings of files inside `dir`, from /proc/self/smaps.
uint64_t SmapsBytesUnder(const std::filesystem::path& dir) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  uint64_t total_kb = 0;
  const std::string prefix = dir.string() + "/";
  while (std::getline(smaps, line)) {
    // Mapping lines start with "<hex>-<hex> "; attribute lines with "Name:".
    auto dash = line.find('-');
    auto colon = line.find(':');
    if (dash != std::string::npos && (colon == std::string::npos || dash < colon) &&
        std::isxdigit(static_cast<unsigned char>(line[0]))) {
      inside = line.find(prefix) != std::string::npos;
      continue;
    }
    if (inside && line.rfind("Size:", 0) == 0) {
      std::istringstream fields(line.substr(5));
      uint64_t kb = 0;
      fields >> kb;
      total_kb += kb;
    }
  }
  return total_kb * 1024;
}

TEST_F(SyntheticCheckpointTest, StageWithLayers3To5MapsOnlyThoseTensors) {
  Write();
  auto described = DescribeCheckpoint(dir_.path());
  ASSERT_TRUE(described.ok()) << described.status().ToString();
  const ModelSpec& spec = described->spec;
  ASSERT_TRUE(CheckCoverage(spec, described->tensors).ok())
      << CheckCoverage(spec, described->tensors).ToStatus().ToString();
  ASSERT_EQ(spec.llm.layers, 8);

  // The stage's filter, as a worker builds it: tensors of the blocks layer.3 .. layer.5.
  auto want = [&](const std::string& name) {
    auto block = spec.BlockOf(name);
    if (!block) return false;
    const Block& b = spec.blocks[*block];
    return b.kind == BlockKind::kLayer && b.layer >= 3 && b.layer <= 5;
  };
  auto mapped = MappedCheckpoint::Open(dir_.path(), want);
  ASSERT_TRUE(mapped.ok()) << mapped.status().ToString();

  // Expected set and byte counts, from the names and each shard's own offsets.
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  std::set<std::string> expected;
  uint64_t tensor_bytes = 0, page_bytes = 0;
  auto index = testing::ReadJson(dir_ / "model.safetensors.index.json");
  for (const auto& t : tensors_) {
    bool in_stage = false;
    for (int layer = 3; layer <= 5; ++layer) {
      if (t.name.rfind("model.layers." + std::to_string(layer) + ".", 0) == 0) in_stage = true;
    }
    if (!in_stage) continue;
    expected.insert(t.name);
    auto header = ReadSafetensorsHeader(dir_ / index["weight_map"][t.name].get<std::string>());
    ASSERT_TRUE(header.ok());
    for (const auto& e : header->entries) {
      if (e.info.name != t.name) continue;
      const uint64_t begin = header->data_section_offset + e.begin;
      const uint64_t end = header->data_section_offset + e.end;
      tensor_bytes += e.end - e.begin;
      page_bytes += (end + page - 1) / page * page - begin / page * page;
    }
  }
  ASSERT_EQ(expected.size(), 3u * 17u);  // 17 tensors per ixc2_vl layer
  auto names = (*mapped)->Names();
  EXPECT_EQ(std::set<std::string>(names.begin(), names.end()), expected);
  EXPECT_EQ((*mapped)->tensor_bytes(), tensor_bytes);
  EXPECT_EQ((*mapped)->mapped_bytes(), page_bytes);
  // The kernel agrees: the only mappings of checkpoint files are this stage's pages.
  EXPECT_EQ(SmapsBytesUnder(dir_.path()), page_bytes);

  // Every mapped tensor holds exactly the bytes written for it.
  for (const auto& name : expected) {
    auto view = (*mapped)->Get(name);
    ASSERT_TRUE(view.ok()) << name;
    ASSERT_EQ(view->info->bytes(), data_[name].size()) << name;
    EXPECT_EQ(std::string_view(static_cast<const char*>(view->data), data_[name].size()), data_[name]) << name;
    EXPECT_EQ(view->info->name, name);
  }
  // Nothing else is reachable.
  for (const char* other : {"model.layers.2.attention.wqkv.weight", "model.layers.6.ffn_norm.weight",
                            "model.tok_embeddings.weight", "output.weight", "vision_proj.0.weight"}) {
    EXPECT_FALSE((*mapped)->Has(other)) << other;
    auto view = (*mapped)->Get(other);
    ASSERT_FALSE(view.ok());
    EXPECT_EQ(view.status().code(), StatusCode::kNotFound);
  }
  mapped->reset();
  EXPECT_EQ(SmapsBytesUnder(dir_.path()), 0u);  // unmapped on destruction
}

TEST_F(SyntheticCheckpointTest, WantingNothingMapsNothing) {
  Write(3, 2);
  auto mapped = MappedCheckpoint::Open(dir_.path(), [](const std::string&) { return false; });
  ASSERT_TRUE(mapped.ok()) << mapped.status().ToString();
  EXPECT_TRUE((*mapped)->Names().empty());
  EXPECT_EQ((*mapped)->mapped_bytes(), 0u);
}

TEST_F(SyntheticCheckpointTest, MissingShardIsNotFoundNamingTheShard) {
  Write(3, 3);
  std::filesystem::remove(dir_ / "model-00002-of-00003.safetensors");
  auto table = ReadCheckpointTensorTable(dir_.path());
  ASSERT_FALSE(table.ok());
  EXPECT_EQ(table.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(table.status().message(), "model-00002-of-00003.safetensors")) << table.status().message();

  auto mapped = MappedCheckpoint::Open(dir_.path(), [](const std::string&) { return true; });
  ASSERT_FALSE(mapped.ok());
  EXPECT_EQ(mapped.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(mapped.status().message(), "model-00002-of-00003.safetensors")) << mapped.status().message();
  EXPECT_TRUE(Contains(mapped.status().message(), "missing shard")) << mapped.status().message();

  // A stage whose tensors all live in the shards that are there still opens.
  auto index = testing::ReadJson(dir_ / "model.safetensors.index.json");
  auto first_shard_only = [&](const std::string& name) {
    return index["weight_map"][name] == "model-00001-of-00003.safetensors";
  };
  auto partial = MappedCheckpoint::Open(dir_.path(), first_shard_only);
  ASSERT_TRUE(partial.ok()) << partial.status().ToString();
  EXPECT_FALSE((*partial)->Names().empty());

  auto described = DescribeCheckpoint(dir_.path());
  ASSERT_FALSE(described.ok());
  EXPECT_EQ(described.status().code(), StatusCode::kNotFound);
}

TEST_F(SyntheticCheckpointTest, TruncatedShardIsRefusedBeforeMapping) {
  Write(3, 3);
  const auto shard = dir_ / "model-00003-of-00003.safetensors";
  std::filesystem::resize_file(shard, std::filesystem::file_size(shard) - 100);
  auto mapped = MappedCheckpoint::Open(dir_.path(), [](const std::string&) { return true; });
  ASSERT_FALSE(mapped.ok());
  EXPECT_TRUE(Contains(mapped.status().message(), "model-00003-of-00003.safetensors")) << mapped.status().message();
  EXPECT_TRUE(Contains(mapped.status().message(), "truncated")) << mapped.status().message();
  // The last tensor written is the one cut short.
  EXPECT_TRUE(Contains(mapped.status().message(), "'" + tensors_.back().name + "'")) << mapped.status().message();
}

TEST_F(SyntheticCheckpointTest, IndexEntryAbsentFromItsShardIsNotFound) {
  Write(3, 2);
  auto index = testing::ReadJson(dir_ / "model.safetensors.index.json");
  const std::string moved = tensors_.front().name;  // lives in shard 1
  ASSERT_EQ(index["weight_map"][moved], "model-00001-of-00002.safetensors");
  index["weight_map"][moved] = "model-00002-of-00002.safetensors";
  testing::WriteAll(dir_ / "model.safetensors.index.json", index.dump());
  auto table = ReadCheckpointTensorTable(dir_.path());
  ASSERT_FALSE(table.ok());
  EXPECT_EQ(table.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(table.status().message(), "'" + moved + "'")) << table.status().message();
  EXPECT_TRUE(Contains(table.status().message(), "does not hold it")) << table.status().message();
  auto mapped = MappedCheckpoint::Open(dir_.path(), [&](const std::string& n) { return n == moved; });
  ASSERT_FALSE(mapped.ok());
  EXPECT_EQ(mapped.status().code(), StatusCode::kNotFound);
}

TEST(MappedCheckpointTest, OpensASingleFileCheckpoint) {
  TempDir tmp;
  std::string a = testing::PatternBytes("a", 4 * 10), b = testing::PatternBytes("b", 6000);
  ASSERT_TRUE(WriteSafetensors(tmp / "model.safetensors",
                               {{"a", DType::kF32, {10}, a}, {"b", DType::kU8, {6000}, b}, {"z", DType::kF32, {0}, ""}})
                  .ok());
  auto table = ReadCheckpointTensorTable(tmp.path());
  ASSERT_TRUE(table.ok()) << table.status().ToString();
  EXPECT_EQ(table->tensors.size(), 3u);
  EXPECT_EQ(table->tensors[0].file, "model.safetensors");
  auto mapped = MappedCheckpoint::Open(tmp.path(), [](const std::string& n) { return n != "a"; });
  ASSERT_TRUE(mapped.ok()) << mapped.status().ToString();
  EXPECT_EQ((*mapped)->Names(), (std::vector<std::string>{"b", "z"}));
  auto view = (*mapped)->Get("b");
  ASSERT_TRUE(view.ok());
  EXPECT_EQ(std::string_view(static_cast<const char*>(view->data), b.size()), b);
  EXPECT_EQ((*mapped)->tensor_bytes(), 6000u);
  auto zero = (*mapped)->Get("z");
  ASSERT_TRUE(zero.ok());
  EXPECT_NE(zero->data, nullptr);
}

TEST(MappedCheckpointTest, EmptyFolderSaysWhatIsMissing) {
  TempDir tmp;
  testing::WriteAll(tmp / "pytorch_model-00001-of-00002.bin", "PK");
  auto table = ReadCheckpointTensorTable(tmp.path());
  ASSERT_FALSE(table.ok());
  EXPECT_EQ(table.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(table.status().message(), "xcpipe convert")) << table.status().message();
  auto mapped = MappedCheckpoint::Open(tmp.path(), [](const std::string&) { return true; });
  EXPECT_EQ(mapped.status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace xcpipe::checkpoint
