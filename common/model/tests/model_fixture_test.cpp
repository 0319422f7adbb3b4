// The forward pass against the official outputs, and the pipeline oracle: the model split
// into stages gives the same hidden states and logits as the model run whole.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <fstream>
#include <limits>

#include "ops.h"
#include "xcpipe/model/fixture_check.h"
#include "xcpipe/model/stage_model.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::model {
namespace {

namespace fs = std::filesystem;

fs::path Fixture(const std::string& folder) { return testing::FixturesDir() / folder; }

class ModelFixtureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ModelFixtureTest, Fp32MatchesOfficialOutputs) {
  if (!fs::exists(Fixture(GetParam()))) GTEST_SKIP() << "fixtures not found at " << Fixture(GetParam());
  FixtureCheckOptions options;
  options.only_folder = GetParam();
  options.check_bf16 = true;
  auto results = RunModelFixtureChecks(testing::FixturesDir(), options);
  ASSERT_FALSE(results.empty());
  int failed = 0;
  for (const auto& r : results) {
    if (!r.passed) ++failed;
    EXPECT_TRUE(r.passed) << r.name << ": " << r.message;
  }
  std::cout << results.size() - failed << " passed, " << failed << " failed\n";
}

INSTANTIATE_TEST_SUITE_P(Versions, ModelFixtureTest, ::testing::Values("ixc2_vl", "ixc2_4khd", "ixc2d5", "ixc1"));

// Rows of a prompt piece attend with the query heads of each KV head stacked ([nkv, g * t, d])
// against the cache in place: the same result as copying the cache to every query head, for a
// piece after a prefilled context (causal offset) and for a first piece (offset 0).
TEST(AttentionTest, StackedQueryHeadsGiveTheResultOfTheCopiedCache) {
  at::manual_seed(7);
  const int64_t nh = 8, nkv = 4, g = nh / nkv, d = 16;
  for (const int64_t start : {int64_t{0}, int64_t{11}}) {
    const int64_t t = 5, total = start + t;
    at::Tensor q = at::randn({t, nh, d});
    at::Tensor keys = at::randn({nkv, total, d}), values = at::randn({nkv, total, d});
    const double scale = 0.25;
    at::Tensor copied =
        ops::Attention(q.transpose(0, 1), keys.repeat_interleave(g, 0), values.repeat_interleave(g, 0), scale, start)
            .transpose(0, 1)
            .reshape({t, nh * d});
    at::Tensor qg = q.view({t, nkv, g, d}).permute({1, 2, 0, 3}).reshape({nkv, g * t, d});
    at::Tensor stacked = ops::Attention(qg, keys, values, scale, start, t)
                             .view({nkv, g, t, d})
                             .permute({2, 0, 1, 3})
                             .reshape({t, nh * d});
    EXPECT_TRUE(at::allclose(stacked, copied, 1e-5, 1e-6)) << "start " << start;
    // Without the period the stacked rows would be masked as later positions: a different result.
    at::Tensor unperiodic =
        ops::Attention(qg, keys, values, scale, start).view({nkv, g, t, d}).permute({2, 0, 1, 3}).reshape({t, nh * d});
    EXPECT_FALSE(at::allclose(unperiodic, copied, 1e-5, 1e-6)) << "start " << start;
  }
}

// Runs the text prompt of a case through a list of stages, passing hidden states on.
at::Tensor RunPipeline(std::vector<std::unique_ptr<StageModel>>& stages, const at::Tensor& ids) {
  StepInput in;
  in.segments = {{1, ids.size(0), 0}};
  in.token_ids = ids;
  in.im_mask = at::zeros({ids.size(0)}, at::kBool);
  in.all_logits = true;
  at::Tensor logits;
  for (auto& stage : stages) {
    EXPECT_TRUE(stage->ReserveSequence(1, ids.size(0)).ok());
    auto out = stage->Forward(in);
    EXPECT_TRUE(out.ok()) << out.status().ToString();
    if (!out.ok()) return {};
    in.hidden = out->hidden;
    in.token_ids = at::Tensor();
    logits = out->logits;
  }
  return logits;
}

TEST(PipelineOracleTest, SplitModelEqualsWholeModel) {
  auto dir = Fixture("ixc2_vl") / "checkpoint";
  if (!fs::exists(dir)) GTEST_SKIP() << "fixtures not found at " << dir;
  auto described = checkpoint::DescribeCheckpoint(dir);
  ASSERT_TRUE(described.ok()) << described.status().ToString();
  const auto& spec = described->spec;
  const size_t n = spec.blocks.size();
  at::Tensor ids = at::tensor(std::vector<int64_t>{1, 1, 92543, 1008, 364, 9843, 346, 5368}, at::kLong);

  std::vector<std::unique_ptr<StageModel>> whole;
  whole.push_back(std::move(StageModel::Load(dir, spec, WholeModel(spec), {})).value());
  at::Tensor reference = RunPipeline(whole, ids);
  ASSERT_TRUE(reference.defined());

  // Every split into 2 and 3 contiguous stages that keeps vision and embeddings together (a
  // stage of vision alone hands image embeddings, not hidden states, to the next stage).
  for (size_t a = 2; a < n; ++a) {
    for (size_t b = a; b < n; ++b) {
      std::vector<size_t> cuts = {0, a};
      if (b > a) cuts.push_back(b);
      cuts.push_back(n);
      std::vector<std::unique_ptr<StageModel>> stages;
      for (size_t i = 0; i + 1 < cuts.size(); ++i) {
        auto s = StageModel::Load(dir, spec, {cuts[i], cuts[i + 1]}, {});
        ASSERT_TRUE(s.ok()) << s.status().ToString();
        stages.push_back(std::move(s).value());
      }
      at::Tensor logits = RunPipeline(stages, ids);
      ASSERT_TRUE(logits.defined());
      EXPECT_TRUE(at::equal(logits, reference)) << "split at " << a << "," << b;
    }
  }
}

TEST(StageModelTest, BadInputsAreRefusedWithAReason) {
  auto dir = Fixture("ixc2_vl") / "checkpoint";
  if (!fs::exists(dir)) GTEST_SKIP() << "fixtures not found at " << dir;
  auto described = checkpoint::DescribeCheckpoint(dir);
  ASSERT_TRUE(described.ok());
  const auto& spec = described->spec;
  auto bad_range = StageModel::Load(dir, spec, {2, 1}, {});
  ASSERT_FALSE(bad_range.ok());
  EXPECT_NE(bad_range.status().message().find("block range"), std::string::npos);

  auto model = std::move(StageModel::Load(dir, spec, {2, spec.blocks.size()}, {})).value();
  StepInput in;
  in.segments = {{5, 4, 0}};
  in.hidden = at::zeros({4, spec.llm.hidden});
  auto no_room = model->Forward(in);
  ASSERT_FALSE(no_room.ok());
  EXPECT_NE(no_room.status().message().find("no KV room"), std::string::npos);

  ASSERT_TRUE(model->ReserveSequence(5, 4).ok());
  in.hidden = at::zeros({3, spec.llm.hidden});
  auto wrong_rows = model->Forward(in);
  ASSERT_FALSE(wrong_rows.ok());
  EXPECT_NE(wrong_rows.status().message().find("hidden states must be"), std::string::npos);

  in.segments = {{5, 5, 0}};
  in.hidden = at::zeros({5, spec.llm.hidden});
  auto too_long = model->Forward(in);
  ASSERT_FALSE(too_long.ok());
  EXPECT_EQ(too_long.status().code(), StatusCode::kResourceExhausted);
}

TEST(StageModelTest, KvBudgetRefusesBeyondCapacity) {
  auto dir = Fixture("ixc2_vl") / "checkpoint";
  if (!fs::exists(dir)) GTEST_SKIP() << "fixtures not found at " << dir;
  auto described = checkpoint::DescribeCheckpoint(dir);
  ASSERT_TRUE(described.ok());
  StageOptions options;
  auto probe = std::move(StageModel::Load(dir, described->spec, {2, 3}, options)).value();
  options.kv_budget_bytes = probe->kv_bytes_per_token() * 100;
  auto model = std::move(StageModel::Load(dir, described->spec, {2, 3}, options)).value();
  EXPECT_TRUE(model->ReserveSequence(1, 60).ok());
  auto full = model->ReserveSequence(2, 60);
  ASSERT_FALSE(full.ok());
  EXPECT_EQ(full.code(), StatusCode::kResourceExhausted);
  model->ReleaseSequence(1);
  EXPECT_TRUE(model->ReserveSequence(2, 60).ok());
  EXPECT_EQ(model->kv_bytes_reserved(), model->kv_bytes_per_token() * 60);
}

TEST(StageModelTest, KvBytesUsedFollowsTheTokensStepped) {
  auto dir = Fixture("ixc2_vl") / "checkpoint";
  if (!fs::exists(dir)) GTEST_SKIP() << "fixtures not found at " << dir;
  auto described = checkpoint::DescribeCheckpoint(dir);
  ASSERT_TRUE(described.ok());
  auto model = std::move(StageModel::Load(dir, described->spec, {2, 3}, StageOptions{})).value();
  ASSERT_TRUE(model->ReserveSequence(1, 40).ok());
  EXPECT_EQ(model->kv_bytes_used(), 0u);
  const int64_t hidden = described->spec.llm.hidden;
  StepInput prefill;
  prefill.segments = {{1, 5, 0}};
  prefill.hidden = at::randn({5, hidden});
  prefill.im_mask = at::zeros({5}, at::kBool);
  ASSERT_TRUE(model->Forward(prefill).ok());
  EXPECT_EQ(model->kv_bytes_used(), model->kv_bytes_per_token() * 5);
  StepInput decode;
  decode.segments = {{1, 1, 5}};
  decode.hidden = at::randn({1, hidden});
  decode.im_mask = at::zeros({1}, at::kBool);
  ASSERT_TRUE(model->Forward(decode).ok());
  EXPECT_EQ(model->kv_bytes_used(), model->kv_bytes_per_token() * 6);
  EXPECT_EQ(model->kv_bytes_reserved(), model->kv_bytes_per_token() * 40);
  model->ReleaseSequence(1);
  EXPECT_EQ(model->kv_bytes_used(), 0u);
}

// Resident bytes of this process and how many of them are anonymous huge pages.
std::pair<uint64_t, uint64_t> ResidentAndHugeBytes() {
  std::ifstream in("/proc/self/smaps_rollup");
  std::string key;
  std::getline(in, key);  // the "[rollup]" range line
  uint64_t kb = 0, rss = 0, huge = 0;
  while (in >> key >> kb) {
    if (key == "Rss:") rss = kb * 1024;
    if (key == "AnonHugePages:") huge = kb * 1024;
    in.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return {rss, huge};
}

// Weights copied into the huge-page arena compute exactly what the mapped weights compute, and
// the copy does not keep the mapped pages resident beside it.
TEST(StageModelTest, WeightsInHugePagesGiveTheSameLogitsWithoutADoubleCopy) {
  auto dir = Fixture("ixc2_vl") / "checkpoint";
  if (!fs::exists(dir)) GTEST_SKIP() << "fixtures not found at " << dir;
  auto described = checkpoint::DescribeCheckpoint(dir);
  ASSERT_TRUE(described.ok());
  const auto& spec = described->spec;
  at::Tensor ids = at::tensor(std::vector<int64_t>{1, 1, 92543, 1008, 364, 9843, 346, 5368}, at::kLong);
  auto logits_of = [&](bool huge_pages, uint64_t* resident_growth, uint64_t* huge_growth, uint64_t* weights) {
    StageOptions options;
    options.huge_pages = huge_pages;
    const auto before = ResidentAndHugeBytes();
    auto model = StageModel::Load(dir, spec, WholeModel(spec), options);
    EXPECT_TRUE(model.ok()) << model.status().ToString();
    if (!model.ok()) return at::Tensor();
    const auto after = ResidentAndHugeBytes();
    if (resident_growth) *resident_growth = after.first > before.first ? after.first - before.first : 0;
    if (huge_growth) *huge_growth = after.second > before.second ? after.second - before.second : 0;
    if (weights) *weights = (*model)->weight_bytes();
    std::vector<std::unique_ptr<StageModel>> whole;
    whole.push_back(std::move(model).value());
    return RunPipeline(whole, ids);
  };
  uint64_t growth = 0, huge = 0, weights = 0;
  at::Tensor copied = logits_of(true, &growth, &huge, &weights);
  at::Tensor mapped = logits_of(false, nullptr, nullptr, nullptr);
  ASSERT_TRUE(copied.defined() && mapped.defined());
  EXPECT_TRUE(at::equal(copied, mapped));
  ASSERT_GT(weights, 0u);
  // One copy of the weights (plus the small tensors' shared pages), not the arena and the mapping.
  EXPECT_LT(static_cast<double>(growth), 1.5 * static_cast<double>(weights))
      << "resident memory grew by " << growth << " bytes for " << weights << " bytes of weights";
  std::cout << "weights " << weights << " bytes; resident +" << growth << "; anonymous huge pages +" << huge << "\n";
}

// A shared prompt prefix: its KV stepped once under one sequence and copied into another,
// which then steps only the rest of its prompt, gives the logits of stepping the whole prompt.
TEST(StageModelTest, CopiedPrefixGivesTheLogitsOfTheWholePrompt) {
  auto dir = Fixture("ixc2_vl") / "checkpoint";
  if (!fs::exists(dir)) GTEST_SKIP() << "fixtures not found at " << dir;
  auto described = checkpoint::DescribeCheckpoint(dir);
  ASSERT_TRUE(described.ok());
  const auto& spec = described->spec;
  auto model = std::move(StageModel::Load(dir, spec, WholeModel(spec), {})).value();
  const std::vector<int64_t> prompt = {1, 1, 92543, 1008, 364, 9843, 346, 5368, 1008, 364};
  const int64_t P = 6, T = static_cast<int64_t>(prompt.size());
  auto step = [&](uint64_t id, int64_t from, int64_t to) {
    StepInput in;
    in.segments = {{id, to - from, from}};
    in.token_ids = at::tensor(std::vector<int64_t>(prompt.begin() + from, prompt.begin() + to), at::kLong);
    in.im_mask = at::zeros({to - from}, at::kBool);
    auto out = model->Forward(in);
    EXPECT_TRUE(out.ok()) << out.status().ToString();
    return out.ok() ? out->logits : at::Tensor();
  };
  ASSERT_TRUE(model->ReserveSequence(1, T).ok());
  at::Tensor whole = step(1, 0, T);
  ASSERT_TRUE(model->ReserveSequence(2, P).ok());  // the prefix holder
  step(2, 0, P);
  ASSERT_TRUE(model->ReserveSequence(3, T).ok());
  // Refused before the prefix is there or beyond it, and into a sequence without room.
  EXPECT_EQ(model->CopyPrefix(2, 3, P + 1).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(model->CopyPrefix(2, 99, P).code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(model->CopyPrefix(2, 3, P).ok());
  EXPECT_EQ(model->kv_bytes_used(), model->kv_bytes_per_token() * (T + P + P));
  at::Tensor rest = step(3, P, T);
  ASSERT_TRUE(whole.defined() && rest.defined());
  EXPECT_TRUE(at::allclose(rest, whole, 1e-4, 1e-4)) << "max diff " << (rest - whole).abs().max().item<float>();
  // Without the copy the same step reads an empty cache: the logits differ (the test can fail).
  ASSERT_TRUE(model->ReserveSequence(4, T).ok());
  at::Tensor uncopied = step(4, P, T);
  EXPECT_FALSE(at::allclose(uncopied, whole, 1e-4, 1e-4));
}

}  // namespace
}  // namespace xcpipe::model
