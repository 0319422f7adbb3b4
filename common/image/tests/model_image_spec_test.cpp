#include "xcpipe/image/model_image_spec.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "xcpipe/testing/paths.h"

namespace xcpipe::image {
namespace {

namespace fs = std::filesystem;

// A checkpoint folder with one model.safetensors holding only a header (shapes, no data).
class FakeCheckpoint {
 public:
  FakeCheckpoint() {
    dir_ = fs::temp_directory_path() / ("xcpipe_image_spec_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
                                        "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  ~FakeCheckpoint() { fs::remove_all(dir_); }
  void Add(const std::string& name, std::vector<int64_t> shape) {
    header_[name] = {{"dtype", "F32"}, {"shape", shape}, {"data_offsets", {0, 0}}};
  }
  void Config(const nlohmann::json& config) { std::ofstream(dir_ / "config.json") << config.dump(); }
  const fs::path& Write() {
    const std::string json = header_.dump();
    std::ofstream out(dir_ / "model.safetensors", std::ios::binary);
    for (int i = 0; i < 8; ++i) out.put(static_cast<char>((json.size() >> (8 * i)) & 0xFF));
    out << json;
    return dir_;
  }

 private:
  fs::path dir_;
  nlohmann::json header_ = nlohmann::json::object();
};

constexpr const char* kPos = "vit.vision_tower.vision_model.embeddings.position_embedding.weight";
constexpr const char* kPatch = "vit.vision_tower.vision_model.embeddings.patch_embedding.weight";

TEST(DetectModelImageSpecTest, FixtureFolders) {
  const fs::path root = xcpipe::testing::FixturesDir();
  if (!fs::exists(root / "ixc2_vl/checkpoint")) GTEST_SKIP() << "fixtures missing: " << root;
  auto vl = DetectModelImageSpec(root / "ixc2_vl/checkpoint");
  ASSERT_TRUE(vl.ok()) << vl.status().ToString();
  EXPECT_EQ(vl->version, "ixc2-vl");
  EXPECT_FALSE(vl->hd);
  EXPECT_EQ(vl->input_size, 490);  // not clip_vision_config.json's 336

  auto v1 = DetectModelImageSpec(root / "ixc1/checkpoint");
  ASSERT_TRUE(v1.ok()) << v1.status().ToString();
  EXPECT_EQ(v1->version, "ixc1");
  EXPECT_EQ(v1->input_size, 224);

  auto khd = DetectModelImageSpec(root / "ixc2_4khd/checkpoint");
  ASSERT_TRUE(khd.ok()) << khd.status().ToString();
  EXPECT_EQ(khd->version, "ixc2-4khd");
  EXPECT_TRUE(khd->hd);
  EXPECT_EQ(khd->hd_variant, HdVariant::kXComposer2_4khd);
  EXPECT_EQ(khd->input_size, 336);
  EXPECT_EQ(khd->default_hd_num, 25);

  auto d5 = DetectModelImageSpec(root / "ixc2d5/checkpoint");
  ASSERT_TRUE(d5.ok()) << d5.status().ToString();
  EXPECT_EQ(d5->version, "ixc2.5");
  EXPECT_EQ(d5->hd_variant, HdVariant::kXComposer2_5);
  EXPECT_EQ(d5->input_size, 560);
  EXPECT_EQ(d5->default_hd_num, 24);
}

TEST(DetectModelImageSpecTest, SizesComeFromTheTensors) {
  FakeCheckpoint hd;
  hd.Add(kPos, {257, 8});  // 16x16 patches of 14 -> 224 px tiles
  hd.Add(kPatch, {8, 3, 14, 14});
  hd.Add("plora_glb_GN", {1, 1, 32});
  hd.Add("model.layers.0.attention.wqkv.Plora_A.weight", {8, 16});
  auto spec = DetectModelImageSpec(hd.Write());
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->version, "ixc2-4khd");
  EXPECT_EQ(spec->input_size, 224);

  FakeCheckpoint vl;
  vl.Add(kPos, {50, 8});  // 7x7 patches of 10 px
  vl.Add(kPatch, {8, 3, 10, 10});
  vl.Config({{"img_size", 70}});
  auto small = DetectModelImageSpec(vl.Write());
  ASSERT_TRUE(small.ok()) << small.status().ToString();
  EXPECT_EQ(small->input_size, 70);
}

TEST(DetectModelImageSpecTest, RefusesInconsistentOrUnknownCheckpoints) {
  FakeCheckpoint mismatch;
  mismatch.Add(kPos, {1226, 8});
  mismatch.Add(kPatch, {8, 3, 14, 14});
  mismatch.Config({{"img_size", 448}});
  auto a = DetectModelImageSpec(mismatch.Write());
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("disagrees"), std::string::npos) << a.status().message();

  FakeCheckpoint not_square;
  not_square.Add(kPos, {1000, 8});
  not_square.Add(kPatch, {8, 3, 14, 14});
  auto b = DetectModelImageSpec(not_square.Write());
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("n*n + 1"), std::string::npos) << b.status().message();

  FakeCheckpoint no_tower;
  no_tower.Add("model.tok_embeddings.weight", {10, 4});
  auto c = DetectModelImageSpec(no_tower.Write());
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("no vision tower"), std::string::npos) << c.status().message();

  auto d = DetectModelImageSpec("/nonexistent/checkpoint");
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kNotFound);
}

TEST(PreprocessForModelTest, FollowsTheSpec) {
  RgbImage image = RgbImage::Filled(60, 20, 10, 20, 30);
  ModelImageSpec fixed;
  fixed.version = "ixc2-vl";
  fixed.input_size = 35;
  auto a = PreprocessForModel(image, fixed);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->pixel_values.height, 35);
  EXPECT_EQ(a->pixel_values.width, 35);
  EXPECT_EQ(a->grid_h * a->grid_w, 1);

  ModelImageSpec hd;
  hd.version = "ixc2.5";
  hd.hd = true;
  hd.hd_variant = HdVariant::kXComposer2_5;
  hd.input_size = 14;
  hd.default_hd_num = 24;
  auto b = PreprocessForModel(image, hd, 4);  // ratio 3: scale 3 (4 * ceil(4/3) = 8 > 4) -> 42x14
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(b->grid_w, 3);
  EXPECT_EQ(b->grid_h, 1);
  EXPECT_EQ(b->pixel_values.width, 42);
  auto c = PreprocessForModel(image, hd);  // default hd_num 24
  ASSERT_TRUE(c.ok());
  EXPECT_GT(c->grid_w, b->grid_w);
}

}  // namespace
}  // namespace xcpipe::image
