#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_util.h"
#include "xcpipe/checkpoint/tensor_table.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::checkpoint {
namespace {

std::filesystem::path Layouts() { return xcpipe::testing::FixturesDir() / "real_layouts"; }

struct LayoutCase {
  const char* file;
  size_t parameters;
  size_t optional;
  size_t lora_pattern;
  size_t buffers;
  const char* first;
  DType dtype;
  uint64_t parameter_count;  // the file's own count (num_parameters + num_parameters_optional)
};

class RealLayoutTest : public ::testing::TestWithParam<LayoutCase> {};

TEST_P(RealLayoutTest, ParsesEveryEntry) {
  const auto& c = GetParam();
  const auto path = Layouts() / c.file;
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "no layout at " << path;
  auto layout = ReadLayoutFile(path);
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  // Counted independently from the raw JSON.
  auto raw = testing::ReadJson(path);
  ASSERT_EQ(raw["parameters"].size(), c.parameters);
  EXPECT_EQ(layout->table.tensors.size(), c.parameters);
  EXPECT_EQ(layout->optional_names.size(), c.optional);
  EXPECT_EQ(layout->lora_pattern.tensors.size(), c.lora_pattern);
  EXPECT_EQ(layout->non_persistent_buffers.tensors.size(), c.buffers);
  EXPECT_EQ(layout->table.tensors.front().name, c.first);  // state_dict order kept
  EXPECT_FALSE(layout->config_json.empty());
  EXPECT_FALSE(layout->model.empty());
  // Shapes and dtypes equal the raw entries one by one; numel where given.
  uint64_t numel_sum = 0;
  for (const auto& t : layout->table.tensors) {
    const auto& entry = raw["parameters"][t.name];
    EXPECT_EQ(t.shape, entry["shape"].get<std::vector<int64_t>>()) << t.name;
    if (entry.contains("numel")) {
      EXPECT_EQ(t.numel(), entry["numel"].get<int64_t>()) << t.name;
    }
    if (t.name != "Qformer.bert.embeddings.position_ids") {
      EXPECT_EQ(t.dtype, c.dtype) << t.name;
    }
    numel_sum += static_cast<uint64_t>(t.numel());
  }
  EXPECT_EQ(numel_sum, c.parameter_count);
}

INSTANTIATE_TEST_SUITE_P(AllFour, RealLayoutTest,
                         ::testing::Values(LayoutCase{"internlm-xcomposer2-vl-7b.layout.json", 942, 2, 0, 97,
                                                      "model.tok_embeddings.weight", DType::kF16, 8666840064ull},
                                           LayoutCase{"internlm-xcomposer2-4khd-7b.layout.json", 944, 2, 0, 97,
                                                      "plora_glb_GN", DType::kBF16, 8597501952ull},
                                           LayoutCase{"internlm-xcomposer2d5-7b.layout.json", 948, 6, 0, 97,
                                                      "plora_glb_GN", DType::kBF16, 8679815168ull + 23076864ull},
                                           LayoutCase{"ixc1_7b.layout.json", 1224, 0, 384, 0, "query_tokens",
                                                      DType::kF32,
                                                      // num_parameters_without_lora + the 512 Q-Former position_ids
                                                      8416192384ull + 512ull}));

TEST(LayoutFileTest, FourKhdReleasedBytesMatchTheReleasedIndex) {
  const auto path = Layouts() / "internlm-xcomposer2-4khd-7b.layout.json";
  if (!std::filesystem::exists(path)) GTEST_SKIP();
  auto layout = ReadLayoutFile(path);
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  uint64_t optional_bytes = 0;
  for (const auto& name : layout->optional_names) optional_bytes += layout->table.Find(name)->bytes();
  // metadata.total_size of the released pytorch_model.bin.index.json.
  EXPECT_EQ(layout->table.total_bytes() - optional_bytes, 17194999808ull);
}

TEST(LayoutFileTest, RefusesBrokenLayouts) {
  testing::TempDir tmp;
  struct Case {
    std::string json, expect;
  };
  const std::vector<Case> cases = {
      {R"({"parameters": {"a": {"shape": [2], "dtype": "float32"}, "a": {"shape": [2], "dtype": "float32"}}})",
       "'a' appears twice"},
      {R"({"parameters": {"a": {"shape": [2, 3], "dtype": "float32", "numel": 7}}})", "does not match the shape"},
      {R"({"parameters": {"a": {"shape": [2], "dtype": "float128"}}})", "unknown dtype"},
      {R"({"parameters": {"a": {"shape": [-2], "dtype": "float32"}}})", "negative"},
      {R"({"parameters": {"a": {"dtype": "float32"}}})", "shape"},
      {R"({"model": "x"})", "no \"parameters\""},
      {R"([1, 2])", "JSON object"},
  };
  for (const auto& c : cases) {
    auto path = tmp / "x.layout.json";
    testing::WriteAll(path, c.json);
    auto layout = ReadLayoutFile(path);
    ASSERT_FALSE(layout.ok()) << c.json;
    EXPECT_NE(layout.status().message().find(c.expect), std::string::npos) << layout.status().message();
    EXPECT_NE(layout.status().message().find("x.layout.json"), std::string::npos) << layout.status().message();
  }
}

}  // namespace
}  // namespace xcpipe::checkpoint
