// The NCCL data plane end to end (label gpu; CUDA builds only): a LocalCluster of two worker
// processes on two GPUs, activations between them over NCCL, gives the same tokens as the same
// cluster over TCP, for a tiny random-weight XComposer2-VL (mkmodel).
//
// Skips, saying why, without two CUDA devices: the planner gives every worker a device of its
// own (two workers naming cuda:0 on one host are refused as the same device twice), and NCCL
// cannot put both ranks of a link on one GPU ("Duplicate GPU detected"), so two workers on
// GPU 0 cannot be joined by NCCL.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "xcpipe/coordinator/client.h"
#include "xcpipe/coordinator/local_cluster.h"
#include "xcpipe/cuda/device.h"
#include "xcpipe/mkmodel/model_generator.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::coordinator {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

class NcclClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_dir_ = new fs::path(fs::temp_directory_path() / ("xcpipe-nccl-cluster-" + std::to_string(getpid())));
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(*model_dir_, ec);
    delete model_dir_;
    model_dir_ = nullptr;
  }

  void SetUp() override {
    auto devices = cuda::ProbeCudaDevices();
    if (!devices.ok()) GTEST_SKIP() << "no CUDA device: " << devices.status().ToString();
    if (devices->size() < 2) {
      GTEST_SKIP() << "needs two CUDA devices, found " << devices->size()
                   << ": each worker needs a GPU of its own (the planner refuses two workers on one device, and NCCL "
                      "cannot put both ranks of a link on one GPU)";
    }
    if (!fs::exists(*model_dir_ / "config.json")) {
      auto model = mkmodel::GenerateModel(mkmodel::GeneratorOptions{}, *model_dir_);  // tiny XComposer2-VL
      ASSERT_TRUE(model.ok()) << model.status().ToString();
    }
  }

  // Greedy tokens of a few prompts from a 2-worker cluster on cuda:0 and cuda:1 over
  // `data_plane`; checks the status says that data plane is in use.
  std::vector<std::vector<int64_t>> Generate(const std::string& data_plane) {
    LocalClusterOptions o;
    o.model_dir = *model_dir_;
    o.workers = 2;
    o.threads_per_worker = 2;
    o.worker_binary = testing::BinDir() / "xcpipe-worker";
    o.worker_extra_args = {{"--device", "cuda:0"}, {"--device", "cuda:1"}};
    o.coordinator.strategy = "even";  // two stages, so there is a link between them
    o.coordinator.data_plane = data_plane;
    auto cluster = LocalCluster::Start(o);
    EXPECT_TRUE(cluster.ok()) << cluster.status().ToString();
    if (!cluster.ok()) return {};
    auto client = Client::Connect((*cluster)->address(), 10s);
    EXPECT_TRUE(client.ok()) << client.status().ToString();
    if (!client.ok()) return {};
    auto status = (*client)->GetStatus(5s);
    EXPECT_TRUE(status.ok());
    if (status.ok()) {
      EXPECT_EQ((*status)["data_plane"].get<std::string>(), data_plane) << status->dump();
      EXPECT_EQ((*status)["stages"].get<int>(), 2);
    }
    std::vector<std::vector<int64_t>> out;
    for (const char* prompt : {"Hello!", "Describe the sky in one sentence.", "Count to five."}) {
      GenerateRequest r;
      r.prompt_json = nlohmann::json(prompt).dump();
      r.max_new_tokens = 12;
      auto result = (*client)->Generate(r, 120s);
      EXPECT_TRUE(result.ok()) << result.status().ToString();
      if (!result.ok()) return {};
      EXPECT_TRUE(result->error.empty()) << result->error;
      out.push_back(result->token_ids.empty() ? std::vector<int64_t>{} : result->token_ids[0]);
    }
    return out;
  }

  static fs::path* model_dir_;
};
fs::path* NcclClusterTest::model_dir_ = nullptr;

TEST_F(NcclClusterTest, NcclDataPlaneGivesTheTokensOfTheTcpDataPlane) {
  const auto over_tcp = Generate("tcp");
  ASSERT_EQ(over_tcp.size(), 3u);
  const auto over_nccl = Generate("nccl");
  ASSERT_EQ(over_nccl.size(), 3u);
  for (size_t i = 0; i < over_tcp.size(); ++i) {
    EXPECT_EQ(over_tcp[i].size(), 12u) << "prompt " << i;
    EXPECT_EQ(over_nccl[i], over_tcp[i]) << "prompt " << i;
  }
}

}  // namespace
}  // namespace xcpipe::coordinator
