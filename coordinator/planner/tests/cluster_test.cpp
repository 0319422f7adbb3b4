#include "xcpipe/planner/cluster.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "xcpipe/testing/paths.h"

namespace xcpipe::planner {
namespace {

constexpr const char* kMinimal = R"(
[[hosts]]
name = "a"
[[hosts.gpus]]
device = "cuda:0"
memory_gib = 24
tflops = 165
mem_bw_gbps = 1008
)";

std::string ReadText(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

TEST(ClusterFile, MinimalClusterGetsDefaults) {
  auto cluster = ParseClusterToml(kMinimal, "minimal.toml");
  ASSERT_TRUE(cluster.ok()) << cluster.status().ToString();
  EXPECT_EQ(cluster->device_count(), 1u);
  EXPECT_EQ(cluster->serving.max_sequences, 8);
  EXPECT_EQ(cluster->serving.max_context, 4096);
  EXPECT_EQ(cluster->serving.max_images, 1);
  EXPECT_FALSE(cluster->serving.hd_tiles.has_value());
  EXPECT_EQ(cluster->serving.dtype, checkpoint::DType::kBF16);
  EXPECT_DOUBLE_EQ(cluster->planner.headroom_fraction, kDefaultHeadroomFraction);
  EXPECT_EQ(cluster->planner.vision, VisionPlacement::kFirstStage);
  const GpuSpec& gpu = cluster->hosts[0].gpus[0];
  EXPECT_DOUBLE_EQ(gpu.reserved_gib, kDefaultCudaReservedGib);
  EXPECT_EQ(gpu.capacity_bytes(), uint64_t{24} << 30);
  EXPECT_EQ(gpu.cuda_index(), 0);
}

TEST(ClusterFile, ReadsEveryField) {
  auto cluster = ParseClusterToml(R"(
[serving]
max_sequences = 4
max_context = 2048
max_images = 2
hd_tiles = 9
dtype = "fp16"
prefill_chunk = 256
[planner]
headroom_fraction = 0.2
vision_stage = "separate"
[network]
inter_host_gbps = 100
inter_host_latency_us = 5
[[hosts]]
name = "a"
address = "10.0.0.1"
intra_host_gbps = 300
intra_host_latency_us = 2
[[hosts.gpus]]
device = "cuda:3"
model = "H100"
memory_gib = 80.5
tflops = 989
mem_bw_gbps = 3350
reserved_gib = 1.5
[[hosts.gpus]]
device = "cpu:1"
memory_gib = 8
tflops = 0.2
mem_bw_gbps = 30
[[hosts]]
name = "b"
[[hosts.gpus]]
device = "cpu"
memory_gib = 8
tflops = 0.2
mem_bw_gbps = 30
)",
                                  "full.toml");
  ASSERT_TRUE(cluster.ok()) << cluster.status().ToString();
  EXPECT_EQ(cluster->serving.max_sequences, 4);
  EXPECT_EQ(cluster->serving.max_context, 2048);
  EXPECT_EQ(cluster->serving.max_images, 2);
  EXPECT_EQ(cluster->serving.hd_tiles, 9);
  EXPECT_EQ(cluster->serving.dtype, checkpoint::DType::kF16);
  EXPECT_EQ(cluster->serving.prefill_chunk, 256);
  EXPECT_DOUBLE_EQ(cluster->planner.headroom_fraction, 0.2);
  EXPECT_EQ(cluster->planner.vision, VisionPlacement::kSeparateStage);
  EXPECT_DOUBLE_EQ(cluster->network.inter_host_gbps, 100);
  EXPECT_DOUBLE_EQ(cluster->network.inter_host_latency_us, 5);
  ASSERT_EQ(cluster->hosts.size(), 2u);
  EXPECT_EQ(cluster->hosts[0].address, "10.0.0.1");
  EXPECT_DOUBLE_EQ(cluster->hosts[0].intra_host_latency_us, 2);
  EXPECT_EQ(cluster->hosts[0].gpus[0].model, "H100");
  EXPECT_DOUBLE_EQ(cluster->hosts[0].gpus[0].memory_gib, 80.5);
  EXPECT_DOUBLE_EQ(cluster->hosts[0].gpus[0].reserved_gib, 1.5);
  EXPECT_EQ(cluster->hosts[0].gpus[0].cuda_index(), 3);
  EXPECT_DOUBLE_EQ(cluster->hosts[0].gpus[1].reserved_gib, kDefaultCpuReservedGib);
  EXPECT_FALSE(cluster->hosts[0].gpus[1].cuda_index().has_value());
  EXPECT_EQ(cluster->device_count(), 3u);
}

TEST(ClusterFile, VisionStageAutoAndWhetherTheFileNamesOne) {
  auto unset = ParseClusterToml(kMinimal, "minimal.toml");
  ASSERT_TRUE(unset.ok()) << unset.status().ToString();
  EXPECT_FALSE(unset->planner.vision_set);
  for (VisionPlacement placement :
       {VisionPlacement::kFirstStage, VisionPlacement::kSeparateStage, VisionPlacement::kAuto}) {
    const std::string name(VisionPlacementName(placement));
    EXPECT_EQ(ParseVisionPlacement(name), placement) << name;
    auto cluster = ParseClusterToml("[planner]\nvision_stage = \"" + name + "\"\n" + kMinimal, "set.toml");
    ASSERT_TRUE(cluster.ok()) << name << ": " << cluster.status().ToString();
    EXPECT_EQ(cluster->planner.vision, placement) << name;
    EXPECT_TRUE(cluster->planner.vision_set) << name;
  }
  EXPECT_EQ(VisionPlacementName(VisionPlacement::kAuto), "auto");
  EXPECT_FALSE(ParseVisionPlacement("Auto").has_value());
}

TEST(ClusterFile, EveryExampleConfigParses) {
  const auto dir = xcpipe::testing::SourceDir() / "configs";
  size_t count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".toml" || entry.path().filename().string().rfind("cluster-", 0) != 0) continue;
    ++count;
    auto cluster = ReadClusterFile(entry.path());
    EXPECT_TRUE(cluster.ok()) << entry.path() << ": " << cluster.status().ToString();
  }
  EXPECT_GE(count, 6u) << "configs/ should hold the six example clusters";
  auto two_hosts = ReadClusterFile(dir / "cluster-2hosts-2x24g.toml");
  ASSERT_TRUE(two_hosts.ok());
  EXPECT_EQ(two_hosts->hosts.size(), 2u);
  EXPECT_EQ(two_hosts->device_count(), 4u);
  auto mixed = ReadClusterFile(dir / "cluster-mixed-48-24.toml");
  ASSERT_TRUE(mixed.ok());
  EXPECT_DOUBLE_EQ(mixed->hosts[0].gpus[0].memory_gib, 48);
  EXPECT_DOUBLE_EQ(mixed->hosts[0].gpus[1].memory_gib, 24);
  auto cpu = ReadClusterFile(dir / "cluster-cpu-3.toml");
  ASSERT_TRUE(cpu.ok());
  EXPECT_EQ(cpu->device_count(), 3u);
  EXPECT_FALSE(cpu->hosts[0].gpus[0].is_cuda());
}

TEST(ClusterFile, MissingFileIsNotFound) {
  auto cluster = ReadClusterFile("/nonexistent/cluster.toml");
  ASSERT_FALSE(cluster.ok());
  EXPECT_EQ(cluster.status().code(), StatusCode::kNotFound);
}

struct BadCase {
  const char* what;
  std::string text;
  std::vector<std::string> expected;  // substrings of the message
};

std::string Gpu(const std::string& fields) { return "[[hosts]]\nname = \"a\"\n[[hosts.gpus]]\n" + fields + "\n"; }
const std::string kGoodGpu = "device = \"cuda:0\"\nmemory_gib = 24\ntflops = 165\nmem_bw_gbps = 1008";

TEST(ClusterFile, BadFilesNameTheField) {
  const std::vector<BadCase> cases = {
      {"no hosts", "[serving]\nmax_sequences = 2\n", {"bad.toml: hosts", "required"}},
      {"hosts not an array", "hosts = 3\n", {"hosts (line 1)", "array of tables", "got 3"}},
      {"memory as text",
       Gpu("device = \"cuda:0\"\nmemory_gib = \"24GB\"\ntflops = 1\nmem_bw_gbps = 1"),
       {"hosts[0].gpus[0].memory_gib (line 5)", "must be a number > 0", "\"24GB\""}},
      {"negative memory",
       Gpu("device = \"cuda:0\"\nmemory_gib = -1\ntflops = 1\nmem_bw_gbps = 1"),
       {"hosts[0].gpus[0].memory_gib", "got -1"}},
      {"infinite speed",
       Gpu("device = \"cuda:0\"\nmemory_gib = 1\ntflops = inf\nmem_bw_gbps = 1"),
       {"hosts[0].gpus[0].tflops"}},
      {"missing tflops",
       Gpu("device = \"cuda:0\"\nmemory_gib = 24\nmem_bw_gbps = 1"),
       {"hosts[0].gpus[0].tflops", "required field is missing"}},
      {"typo",
       Gpu("device = \"cuda:0\"\nmemory_gb = 24\ntflops = 1\nmem_bw_gbps = 1"),
       {"hosts[0].gpus[0].'memory_gb' (line 5)", "unknown field", "did you mean 'memory_gib'"}},
      {"bad device",
       Gpu("device = \"gpu0\"\nmemory_gib = 24\ntflops = 1\nmem_bw_gbps = 1"),
       {"hosts[0].gpus[0].device", "\"cuda:N\"", "\"gpu0\""}},
      {"device twice",
       "[[hosts]]\nname = \"a\"\nintra_host_gbps = 10\n[[hosts.gpus]]\n" + kGoodGpu + "\n[[hosts.gpus]]\n" + kGoodGpu,
       {"hosts[0].gpus[1].device", "appears twice"}},
      {"host twice",
       Gpu(kGoodGpu) + Gpu(kGoodGpu) + "[network]\ninter_host_gbps = 1\n",
       {"hosts[1].name", "appears twice"}},
      {"no network",
       Gpu(kGoodGpu) + "[[hosts]]\nname = \"b\"\n[[hosts.gpus]]\n" + kGoodGpu,
       {"network.inter_host_gbps", "more than one host"}},
      {"no intra link",
       "[[hosts]]\nname = \"a\"\n[[hosts.gpus]]\n" + kGoodGpu +
           "\n[[hosts.gpus]]\ndevice = \"cuda:1\"\nmemory_gib = 24\ntflops = 1\nmem_bw_gbps = 1",
       {"hosts[0].intra_host_gbps", "more than one device"}},
      {"no gpus", "[[hosts]]\nname = \"a\"\n", {"hosts[0].gpus", "at least one"}},
      {"empty gpus", "[[hosts]]\nname = \"a\"\ngpus = []\n", {"hosts[0].gpus", "non-empty"}},
      {"unnamed host", "[[hosts]]\n[[hosts.gpus]]\n" + kGoodGpu, {"hosts[0].name", "missing"}},
      {"bad dtype", "[serving]\ndtype = \"int8\"\n" + Gpu(kGoodGpu), {"serving.dtype (line 2)", "\"int8\""}},
      {"zero sequences", "[serving]\nmax_sequences = 0\n" + Gpu(kGoodGpu), {"serving.max_sequences", "got 0"}},
      {"fractional context",
       "[serving]\nmax_context = 4096.5\n" + Gpu(kGoodGpu),
       {"serving.max_context", "whole number"}},
      {"unknown serving key",
       "[serving]\nmax_seqs = 4\n" + Gpu(kGoodGpu),
       {"serving.'max_seqs'", "did you mean 'max_sequences'"}},
      {"headroom too big", "[planner]\nheadroom_fraction = 1.5\n" + Gpu(kGoodGpu), {"planner.headroom_fraction"}},
      {"bad vision stage",
       "[planner]\nvision_stage = \"middle\"\n" + Gpu(kGoodGpu),
       {"planner.vision_stage", "\"auto\", \"first\" or \"separate\"", "\"middle\""}},
      {"reserve too big", Gpu(kGoodGpu + "\nreserved_gib = 30"), {"hosts[0].gpus[0].reserved_gib"}},
      {"serving not a table", "serving = 1\n" + Gpu(kGoodGpu), {"serving (line 1)", "must be a table"}},
      {"unknown top-level table", "[servng]\n" + Gpu(kGoodGpu), {"'servng'", "did you mean 'serving'"}},
      {"not TOML", "[[hosts]\nname = ", {"bad.toml (line 1", "not valid TOML"}},
  };
  for (const auto& c : cases) {
    auto cluster = ParseClusterToml(c.text, "bad.toml");
    ASSERT_FALSE(cluster.ok()) << c.what;
    EXPECT_EQ(cluster.status().code(), StatusCode::kInvalidArgument) << c.what;
    for (const auto& piece : c.expected) {
      EXPECT_NE(cluster.status().message().find(piece), std::string::npos)
          << c.what << ": expected '" << piece << "' in: " << cluster.status().message();
    }
  }
}

TEST(ClusterFile, ValidateClusterChecksClustersBuiltInCode) {
  ClusterSpec cluster;
  EXPECT_FALSE(ValidateCluster(cluster).ok());
  auto parsed = ParseClusterToml(kMinimal, "minimal.toml");
  ASSERT_TRUE(parsed.ok());
  cluster = *parsed;
  EXPECT_TRUE(ValidateCluster(cluster).ok());
  cluster.hosts[0].gpus[0].tflops = 0;
  Status status = ValidateCluster(cluster);
  EXPECT_NE(status.message().find("hosts[0].gpus[0].tflops"), std::string::npos) << status.message();
  cluster = *parsed;
  cluster.serving.prefill_chunk = 0;
  status = ValidateCluster(cluster);
  EXPECT_NE(status.message().find("serving.prefill_chunk"), std::string::npos) << status.message();
}

// The fuzz corpus (fuzz/corpus) and deterministic mutations of every example config: the
// parser gives a value or an error, never a crash or an exception.
TEST(ClusterFile, SurvivesCorpusAndMutations) {
  std::vector<std::string> inputs;
  for (const auto& dir :
       {xcpipe::testing::SourceDir() / "coordinator/planner/fuzz/corpus", xcpipe::testing::SourceDir() / "configs"}) {
    ASSERT_TRUE(std::filesystem::is_directory(dir)) << dir;
    for (const auto& entry : std::filesystem::directory_iterator(dir)) inputs.push_back(ReadText(entry.path()));
  }
  ASSERT_GE(inputs.size(), 10u);
  const unsigned seed = 20240601;
  std::mt19937 rng(seed);
  size_t ok = 0, errors = 0;
  for (const auto& input : inputs) {
    for (int round = 0; round < 200; ++round) {
      std::string mutated = input;
      const int edits = 1 + static_cast<int>(rng() % 4);
      for (int e = 0; e < edits && !mutated.empty(); ++e) {
        const size_t at = rng() % mutated.size();
        switch (rng() % 4) {
          case 0:
            mutated[at] = static_cast<char>(rng() % 256);
            break;
          case 1:
            mutated.erase(at, 1 + rng() % 8);
            break;
          case 2:
            mutated.insert(at, mutated.substr(rng() % mutated.size(), 1 + rng() % 16));
            break;
          case 3:
            mutated.resize(at);
            break;
        }
      }
      auto cluster = ParseClusterToml(mutated, "mutated.toml");
      if (cluster.ok()) {
        ++ok;
        EXPECT_TRUE(ValidateCluster(*cluster).ok()) << "seed " << seed;
      } else {
        ++errors;
        EXPECT_FALSE(cluster.status().message().empty());
      }
    }
  }
  EXPECT_GT(errors, 0u) << "seed " << seed;
  EXPECT_GT(ok, 0u) << "seed " << seed;
}

}  // namespace
}  // namespace xcpipe::planner
