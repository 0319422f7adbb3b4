// ConvertTorchCheckpoint on torch.save-format shards written by make_torch_bin.py (python3's
// zipfile + pickle with torch's GLOBAL names; torch itself is not needed).
#include "xcpipe/checkpoint/convert.h"

#include <cstring>

#include <gtest/gtest.h>

#include <cstdlib>

#include "test_util.h"
#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/checkpoint/safetensors.h"
#include "xcpipe/checkpoint/torch_pickle.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::checkpoint {
namespace {

using testing::TempDir;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

std::string FromHex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return out;
}

class ConvertTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::system("python3 --version > /dev/null 2>&1") != 0) GTEST_SKIP() << "python3 not found";
  }
  // Runs make_torch_bin.py MODE DIR.
  void Make(const std::string& mode, const std::filesystem::path& dir) {
    const auto script = xcpipe::testing::SourceDir() / "common" / "checkpoint" / "tests" / "make_torch_bin.py";
    const std::string command = "python3 '" + script.string() + "' " + mode + " '" + dir.string() + "'";
    ASSERT_EQ(std::system(command.c_str()), 0) << command;
  }
  TempDir tmp_;
};

TEST_F(ConvertTest, ConvertsShardsByteForByte) {
  const auto in = tmp_ / "in";
  const auto out = tmp_ / "out";
  Make("good", in);
  std::vector<std::string> reported;
  auto summary = ConvertTorchCheckpoint(in, out, {}, [&](const ConvertedShard& s) { reported.push_back(s.output); });
  ASSERT_TRUE(summary.ok()) << summary.status().ToString();
  EXPECT_EQ(reported,
            (std::vector<std::string>{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}));
  EXPECT_EQ(summary->tensors, 8u);
  ASSERT_EQ(summary->shards.size(), 2u);
  EXPECT_EQ(summary->shards[0].source, "pytorch_model-00001-of-00002.bin");
  EXPECT_EQ(summary->shards[0].tensors, 4u);
  EXPECT_TRUE(std::filesystem::exists(out / "tokenizer_config.json"));  // the rest of the folder comes along
  EXPECT_EQ(summary->copied_files, (std::vector<std::string>{"expected.json", "tokenizer_config.json"}));
  EXPECT_FALSE(std::filesystem::exists(out / "pytorch_model.bin.index.json"));

  auto expected = testing::ReadJson(in / "expected.json");
  ASSERT_EQ(expected.size(), 8u);
  auto table = ReadCheckpointTensorTable(out);
  ASSERT_TRUE(table.ok()) << table.status().ToString();
  EXPECT_EQ(table->tensors.size(), expected.size());
  auto mapped = MappedCheckpoint::Open(out, [](const std::string&) { return true; });
  ASSERT_TRUE(mapped.ok()) << mapped.status().ToString();
  uint64_t total = 0;
  for (const auto& [name, want] : expected.items()) {
    auto view = (*mapped)->Get(name);
    ASSERT_TRUE(view.ok()) << name;
    EXPECT_EQ(DTypeName(view->info->dtype), want["dtype"].get<std::string>()) << name;
    EXPECT_EQ(view->info->shape, want["shape"].get<std::vector<int64_t>>()) << name;
    const std::string bytes = FromHex(want["hex"].get<std::string>());
    ASSERT_EQ(view->info->bytes(), bytes.size()) << name;
    EXPECT_EQ(std::string_view(static_cast<const char*>(view->data), bytes.size()), bytes) << name;
    total += bytes.size();
  }
  EXPECT_EQ(summary->bytes, total);
  auto header = ReadSafetensorsHeader(out / "model-00002-of-00002.safetensors");
  ASSERT_TRUE(header.ok());
  EXPECT_EQ(header->metadata.at("format"), "pt");  // transformers refuses files without it
  auto index = ReadSafetensorsIndex(out / "model.safetensors.index.json");
  ASSERT_TRUE(index.ok());
  EXPECT_EQ(index->weight_map.at("output.weight"), "model-00002-of-00002.safetensors");
  EXPECT_EQ(index->total_size, total);
}

// The tiny 4KHD fixture re-saved the way its official release is (torch.save shards), then
// converted back: same tensors, same bytes, and the coverage proof holds.
TEST_F(ConvertTest, RoundTripsATinyFixtureModel) {
  const auto fixture = xcpipe::testing::FixturesDir() / "ixc2_4khd" / "checkpoint";
  if (!std::filesystem::exists(fixture)) GTEST_SKIP() << "no fixture at " << fixture;
  const auto in = tmp_ / "bin";
  const auto out = tmp_ / "out";
  const auto script = xcpipe::testing::SourceDir() / "common" / "checkpoint" / "tests" / "make_torch_bin.py";
  const std::string command =
      "python3 '" + script.string() + "' from_safetensors '" + fixture.string() + "' '" + in.string() + "' 3";
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  auto summary = ConvertTorchCheckpoint(in, out, {});
  ASSERT_TRUE(summary.ok()) << summary.status().ToString();
  EXPECT_EQ(summary->shards.size(), 3u);
  auto described = DescribeCheckpoint(out);
  ASSERT_TRUE(described.ok()) << described.status().ToString();
  EXPECT_EQ(described->spec.arch, ModelArch::kIxc2_4khd);
  EXPECT_TRUE(CheckCoverage(described->spec, described->tensors).ok());

  auto all = [](const std::string&) { return true; };
  auto original = MappedCheckpoint::Open(fixture, all);
  auto converted = MappedCheckpoint::Open(out, all);
  ASSERT_TRUE(original.ok() && converted.ok());
  ASSERT_EQ((*original)->Names(), (*converted)->Names());
  EXPECT_EQ((*original)->tensor_bytes(), (*converted)->tensor_bytes());
  for (const auto& name : (*original)->Names()) {
    auto a = (*original)->Get(name);
    auto b = (*converted)->Get(name);
    ASSERT_TRUE(a.ok() && b.ok()) << name;
    EXPECT_EQ(a->info->shape, b->info->shape) << name;
    EXPECT_EQ(a->info->dtype, b->info->dtype) << name;
    ASSERT_EQ(a->info->bytes(), b->info->bytes()) << name;
    EXPECT_EQ(std::memcmp(a->data, b->data, a->info->bytes()), 0) << name;
  }
}

TEST_F(ConvertTest, RefusesToOverwriteUnlessAsked) {
  const auto in = tmp_ / "in";
  const auto out = tmp_ / "out";
  Make("good", in);
  ASSERT_TRUE(ConvertTorchCheckpoint(in, out, {}).ok());
  auto again = ConvertTorchCheckpoint(in, out, {});
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(again.status().message(), "--force")) << again.status().message();
  ConvertOptions overwrite;
  overwrite.overwrite = true;
  EXPECT_TRUE(ConvertTorchCheckpoint(in, out, overwrite).ok());
  auto same = ConvertTorchCheckpoint(in, in, overwrite);
  ASSERT_FALSE(same.ok());
  EXPECT_TRUE(Contains(same.status().message(), "must differ")) << same.status().message();
}

TEST_F(ConvertTest, RefusesAPickleThatCallsOsSystem) {
  const auto in = tmp_ / "in";
  const auto out = tmp_ / "out";
  Make("evil", in);
  auto summary = ConvertTorchCheckpoint(in, out, {});
  ASSERT_FALSE(summary.ok());
  EXPECT_EQ(summary.status().code(), StatusCode::kInvalidArgument);
  const auto& m = summary.status().message();
  EXPECT_TRUE(Contains(m, "refusing pickle GLOBAL 'posix.system'")) << m;
  EXPECT_TRUE(Contains(m, "pytorch_model.bin")) << m;
  EXPECT_FALSE(std::filesystem::exists(out / "model-00001-of-00001.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(in / "pwned.txt"));
  EXPECT_FALSE(std::filesystem::exists("pwned.txt"));
}

TEST_F(ConvertTest, RefusesLegacyFilesWithAHint) {
  const auto in = tmp_ / "in";
  Make("legacy", in);
  auto summary = ConvertTorchCheckpoint(in, tmp_ / "out", {});
  ASSERT_FALSE(summary.ok());
  EXPECT_TRUE(Contains(summary.status().message(), "legacy (non-zip) torch.save")) << summary.status().message();
}

TEST_F(ConvertTest, MissingAndTruncatedShardsAreNamed) {
  const auto in = tmp_ / "in";
  Make("good", in);
  const auto second = in / "pytorch_model-00002-of-00002.bin";
  const std::string bytes = testing::ReadAll(second);
  std::filesystem::remove(second);
  auto missing = ConvertTorchCheckpoint(in, tmp_ / "out1", {});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(missing.status().message(), "pytorch_model-00002-of-00002.bin")) << missing.status().message();

  testing::WriteAll(second, bytes.substr(0, bytes.size() / 2));
  auto truncated = ConvertTorchCheckpoint(in, tmp_ / "out2", {});
  ASSERT_FALSE(truncated.ok());
  EXPECT_EQ(truncated.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(truncated.status().message(), "pytorch_model-00002-of-00002.bin"))
      << truncated.status().message();
  // The first shard was finished before the second failed; the second never appears.
  EXPECT_FALSE(std::filesystem::exists(tmp_ / "out2" / "model-00002-of-00002.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(tmp_ / "out2" / "model.safetensors.index.json"));
}

TEST_F(ConvertTest, NoShardsIsNotFound) {
  std::filesystem::create_directories(tmp_ / "empty");
  auto summary = ConvertTorchCheckpoint(tmp_ / "empty", tmp_ / "out", {});
  ASSERT_FALSE(summary.ok());
  EXPECT_EQ(summary.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(summary.status().message(), "pytorch_model")) << summary.status().message();
}

TEST_F(ConvertTest, TorchZipFileReadsStridedViews) {
  const auto in = tmp_ / "in";
  Make("good", in);
  auto archive = TorchZipFile::Open(in / "pytorch_model-00002-of-00002.bin");
  ASSERT_TRUE(archive.ok()) << archive.status().ToString();
  const TorchTensorRecord* transposed = nullptr;
  for (const auto& t : (*archive)->tensors()) {
    if (t.name == "output.weight") transposed = &t;
  }
  ASSERT_NE(transposed, nullptr);
  EXPECT_FALSE(transposed->contiguous());
  auto bytes = (*archive)->ReadTensor(*transposed);
  ASSERT_TRUE(bytes.ok());
  // Storage [1..6] viewed as size (3,2) stride (1,3): rows (1,4), (2,5), (3,6).
  const float expected[6] = {1, 4, 2, 5, 3, 6};
  ASSERT_EQ(bytes->size(), sizeof expected);
  EXPECT_EQ(std::memcmp(bytes->data(), expected, sizeof expected), 0);
}

}  // namespace
}  // namespace xcpipe::checkpoint
