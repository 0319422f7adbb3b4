#include "xcpipe/checkpoint/model_spec.h"

#include <gtest/gtest.h>

#include <charconv>
#include <nlohmann/json.hpp>
#include <set>

#include "test_util.h"
#include "xcpipe/testing/paths.h"

namespace xcpipe::checkpoint {
namespace {

using Json = nlohmann::json;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

std::filesystem::path Fixture(const std::string& model) {
  return xcpipe::testing::FixturesDir() / model / "checkpoint";
}

// The block a tensor belongs to, written by name prefix alone from the block table (model_spec.h;
// docs/architecture.md, "The model as placeable blocks"): an oracle independent of the spec
// builder.
std::string OracleBlock(ModelArch arch, const std::string& name) {
  const std::string layers = arch == ModelArch::kIxc1 ? "internlm_model.model.layers." : "model.layers.";
  if (name.rfind(layers, 0) == 0) {
    std::string rest = name.substr(layers.size());
    return "layer." + rest.substr(0, rest.find('.'));
  }
  if (arch == ModelArch::kIxc1) {
    if (name == "internlm_model.model.embed_tokens.weight") return "embed";
    if (name == "internlm_model.model.norm.weight" || name == "internlm_model.lm_head.weight") return "head";
    for (const char* p : {"visual_encoder.", "ln_vision.", "Qformer.", "query_tokens", "internlm_proj.",
                          "flag_image_start", "flag_image_end"}) {
      if (name.rfind(p, 0) == 0) return "vision";
    }
    return "?";
  }
  if (name == "model.tok_embeddings.weight") return "embed";
  if (name == "model.norm.weight" || name == "output.weight") return "head";
  for (const char* p : {"vit.", "vision_proj.", "plora_glb_GN", "plora_sub_GN", "video_mem_proj."}) {
    if (name.rfind(p, 0) == 0) return "vision";
  }
  return "?";
}

// Every tensor assigned to exactly one block, the one the oracle names; block order checked.
void ExpectFullCoverage(const ModelSpec& spec, const TensorTable& table, size_t expected_tensors,
                        int64_t expected_layers) {
  ASSERT_EQ(table.tensors.size(), expected_tensors);
  CoverageReport report = CheckCoverage(spec, table);
  EXPECT_TRUE(report.ok()) << report.ToStatus().ToString();
  EXPECT_TRUE(report.ToStatus().ok());
  EXPECT_EQ(report.assignment.size(), expected_tensors);
  ASSERT_EQ(spec.blocks.size(), static_cast<size_t>(expected_layers) + 3);
  EXPECT_EQ(spec.blocks.front().name, "vision");
  EXPECT_EQ(spec.blocks[1].name, "embed");
  EXPECT_EQ(spec.blocks.back().name, "head");
  for (int64_t i = 0; i < expected_layers; ++i) {
    EXPECT_EQ(spec.blocks[2 + i].name, "layer." + std::to_string(i));
    EXPECT_EQ(spec.blocks[2 + i].layer, i);
    EXPECT_EQ(spec.blocks[2 + i].kind, BlockKind::kLayer);
  }
  std::map<size_t, size_t> per_block;
  for (const auto& t : table.tensors) {
    auto it = report.assignment.find(t.name);
    ASSERT_NE(it, report.assignment.end()) << t.name;
    EXPECT_EQ(spec.blocks[it->second].name, OracleBlock(spec.arch, t.name)) << t.name;
    EXPECT_EQ(spec.BlockOf(t.name), it->second) << t.name;
    ++per_block[it->second];
  }
  size_t total = 0;
  for (size_t b = 0; b < spec.blocks.size(); ++b) {
    EXPECT_GT(per_block[b], 0u) << spec.blocks[b].name << " owns no tensor";
    total += per_block[b];
  }
  EXPECT_EQ(total, expected_tensors);
}

struct TinyCase {
  const char* model;
  ModelArch arch;
};

class TinyFixtureSpecTest : public ::testing::TestWithParam<TinyCase> {};

TEST_P(TinyFixtureSpecTest, EveryTensorBelongsToExactlyOneBlock) {
  const auto& c = GetParam();
  const auto dir = Fixture(c.model);
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << "no fixture at " << dir;
  auto described = DescribeCheckpoint(dir);
  ASSERT_TRUE(described.ok()) << described.status().ToString();
  EXPECT_EQ(described->spec.arch, c.arch);
  // Counted from the index and the config, without the library.
  auto index = testing::ReadJson(dir / "model.safetensors.index.json");
  auto config = testing::ReadJson(dir / "config.json");
  ExpectFullCoverage(described->spec, described->tensors, index["weight_map"].size(),
                     config["num_hidden_layers"].get<int64_t>());
  for (const auto& t : described->tensors.tensors) {
    EXPECT_EQ(index["weight_map"][t.name].get<std::string>(), t.file) << t.name;
  }
  EXPECT_EQ(described->tensors.total_bytes(), index["metadata"]["total_size"].get<uint64_t>());
}

INSTANTIATE_TEST_SUITE_P(AllFour, TinyFixtureSpecTest,
                         ::testing::Values(TinyCase{"ixc1", ModelArch::kIxc1}, TinyCase{"ixc2_vl", ModelArch::kIxc2Vl},
                                           TinyCase{"ixc2_4khd", ModelArch::kIxc2_4khd},
                                           TinyCase{"ixc2d5", ModelArch::kIxc2_5}));

struct LayoutCase {
  const char* file;
  ModelArch arch;
};

class RealLayoutSpecTest : public ::testing::TestWithParam<LayoutCase> {};

TEST_P(RealLayoutSpecTest, EveryTensorBelongsToExactlyOneBlock) {
  const auto& c = GetParam();
  const auto path = xcpipe::testing::FixturesDir() / "real_layouts" / c.file;
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "no layout at " << path;
  auto described = DescribeLayout(path);
  ASSERT_TRUE(described.ok()) << described.status().ToString();
  EXPECT_EQ(described->spec.arch, c.arch);
  auto raw = testing::ReadJson(path);
  ExpectFullCoverage(described->spec, described->tensors, raw["parameters"].size(), 32);
  const auto& llm = described->spec.llm;
  EXPECT_EQ(llm.hidden, 4096);
  EXPECT_EQ(llm.layers, 32);
  EXPECT_EQ(llm.heads, 32);
  EXPECT_EQ(llm.head_dim, 128);
}

INSTANTIATE_TEST_SUITE_P(AllFour, RealLayoutSpecTest,
                         ::testing::Values(LayoutCase{"internlm-xcomposer2-vl-7b.layout.json", ModelArch::kIxc2Vl},
                                           LayoutCase{"internlm-xcomposer2-4khd-7b.layout.json", ModelArch::kIxc2_4khd},
                                           LayoutCase{"internlm-xcomposer2d5-7b.layout.json", ModelArch::kIxc2_5},
                                           LayoutCase{"ixc1_7b.layout.json", ModelArch::kIxc1}));

StatusOr<CheckpointDescription> Tiny(const std::string& model) {
  if (!std::filesystem::exists(Fixture(model))) return NotFoundError("no fixture " + model);
  return DescribeCheckpoint(Fixture(model));
}

#define SKIP_WITHOUT_FIXTURES()                                               \
  if (!std::filesystem::exists(xcpipe::testing::FixturesDir() / "ixc2_vl")) { \
    GTEST_SKIP() << "no fixtures at " << xcpipe::testing::FixturesDir();      \
  }

TEST(ModelSpecTest, Ixc2VlDimensions) {
  SKIP_WITHOUT_FIXTURES();
  auto d = Tiny("ixc2_vl");
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  const ModelSpec& s = d->spec;
  EXPECT_EQ(s.llm.hidden, 64);
  EXPECT_EQ(s.llm.layers, 3);
  EXPECT_EQ(s.llm.heads, 4);
  EXPECT_EQ(s.llm.kv_heads, 2);
  EXPECT_EQ(s.llm.head_dim, 16);
  EXPECT_EQ(s.llm.intermediate, 128);
  EXPECT_EQ(s.llm.vocab, 92544);
  EXPECT_DOUBLE_EQ(s.llm.rope_theta, 1e6);
  EXPECT_EQ(s.llm.rope_scaling, RopeScaling::kNone);
  EXPECT_DOUBLE_EQ(s.llm.rms_eps, 1e-5);
  EXPECT_FALSE(s.llm.attention_bias);
  EXPECT_EQ(s.llm.stop_ids, (std::vector<int64_t>{2, 92542}));
  EXPECT_EQ(s.llm.pad_id, 2);
  ASSERT_EQ(s.llm.lora.size(), 5u);
  for (const auto& [name, lora] : s.llm.lora) {
    EXPECT_EQ(lora.rank, 256) << name;
    EXPECT_DOUBLE_EQ(lora.scale, 1.0) << name;
  }
  EXPECT_EQ(s.vision.kind, VisionKind::kClip);
  EXPECT_EQ(s.vision.width, 32);
  EXPECT_EQ(s.vision.layers, 2);
  EXPECT_EQ(s.vision.heads, 2);
  EXPECT_EQ(s.vision.mlp, 128);
  EXPECT_EQ(s.vision.image_size, 490);
  EXPECT_EQ(s.vision.positions, 1226);
  EXPECT_EQ(s.vision.proj_in, 32);
  EXPECT_FALSE(s.vision.hd);
  EXPECT_EQ(s.ImageTokens(1, 1), 1225);
}

TEST(ModelSpecTest, FourKhdDimensionsAndWqkvScale) {
  SKIP_WITHOUT_FIXTURES();
  auto d = Tiny("ixc2_4khd");
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  const ModelSpec& s = d->spec;
  EXPECT_EQ(s.llm.hidden, 16);
  EXPECT_EQ(s.llm.kv_heads, 1);
  EXPECT_EQ(s.llm.head_dim, 8);
  EXPECT_EQ(s.llm.intermediate, 48);
  EXPECT_EQ(s.llm.lora.at("wqkv").rank, 8);
  EXPECT_DOUBLE_EQ(s.llm.lora.at("wqkv").scale, 2.0);
  for (const char* m : {"wo", "w1", "w2", "w3"}) {
    EXPECT_EQ(s.llm.lora.at(m).rank, 256) << m;
    EXPECT_DOUBLE_EQ(s.llm.lora.at(m).scale, 1.0) << m;
  }
  EXPECT_TRUE(s.vision.hd);
  EXPECT_EQ(s.vision.image_size, 336);
  EXPECT_EQ(s.vision.positions, 577);
  EXPECT_EQ(s.vision.default_hd_num, 25);
  EXPECT_EQ(s.vision.proj_in, 64);
  EXPECT_EQ(s.ImageTokens(1, 2), 457);  // the image_chat case
  EXPECT_EQ(s.llm.stop_ids, (std::vector<int64_t>{2, 92542}));
}

TEST(ModelSpecTest, Ixc25Dimensions) {
  SKIP_WITHOUT_FIXTURES();
  auto d = Tiny("ixc2d5");
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  const ModelSpec& s = d->spec;
  EXPECT_EQ(s.llm.kv_heads, 2);
  EXPECT_EQ(s.llm.intermediate, 32);
  for (const auto& [name, lora] : s.llm.lora) {
    EXPECT_EQ(lora.rank, 256) << name;
    EXPECT_DOUBLE_EQ(lora.scale, 1.0) << name;
  }
  EXPECT_EQ(s.vision.image_size, 560);
  EXPECT_EQ(s.vision.positions, 1601);
  EXPECT_EQ(s.vision.default_hd_num, 24);
  EXPECT_EQ(s.ImageTokens(1, 2), 1241);  // the image_chat case
  auto block = s.BlockOf("video_mem_proj.0.weight");
  ASSERT_TRUE(block.has_value());
  EXPECT_EQ(s.blocks[*block].kind, BlockKind::kVision);
}

TEST(ModelSpecTest, Ixc1Dimensions) {
  SKIP_WITHOUT_FIXTURES();
  auto d = Tiny("ixc1");
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  const ModelSpec& s = d->spec;
  EXPECT_EQ(s.llm.hidden, 32);
  EXPECT_EQ(s.llm.layers, 3);
  EXPECT_EQ(s.llm.heads, 2);
  EXPECT_EQ(s.llm.kv_heads, 2);
  EXPECT_EQ(s.llm.head_dim, 16);
  EXPECT_EQ(s.llm.intermediate, 96);
  EXPECT_EQ(s.llm.vocab, 103168);
  EXPECT_DOUBLE_EQ(s.llm.rms_eps, 1e-6);
  EXPECT_DOUBLE_EQ(s.llm.rope_theta, 10000.0);
  EXPECT_TRUE(s.llm.attention_bias);
  EXPECT_EQ(s.llm.stop_ids, (std::vector<int64_t>{2, 103027, 103028}));
  EXPECT_EQ(s.llm.pad_id, 2);
  ASSERT_EQ(s.llm.lora.size(), 6u);
  for (const char* p : {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"}) {
    EXPECT_EQ(s.llm.lora.at(p).rank, 4) << p;
    EXPECT_DOUBLE_EQ(s.llm.lora.at(p).scale, 1.0) << p;
  }
  const auto& v = s.vision;
  EXPECT_EQ(v.kind, VisionKind::kEvaQformer);
  EXPECT_EQ(v.width, 32);
  EXPECT_EQ(v.layers, 2);
  EXPECT_EQ(v.heads, 2);
  EXPECT_EQ(v.mlp, 139);
  EXPECT_EQ(v.image_size, 224);
  EXPECT_EQ(v.positions, 257);
  EXPECT_DOUBLE_EQ(v.eps, 1e-6);
  EXPECT_DOUBLE_EQ(v.ln_vision_eps, 1e-5);
  EXPECT_DOUBLE_EQ(v.qformer_eps, 1e-12);
  EXPECT_EQ(v.qformer_width, 32);
  EXPECT_EQ(v.qformer_layers, 2);
  EXPECT_EQ(v.qformer_heads, 2);
  EXPECT_EQ(v.qformer_intermediate, 64);
  EXPECT_EQ(v.query_tokens, 8);
  EXPECT_EQ(v.qformer_cross_attention_every, 2);
  EXPECT_EQ(v.proj_in, 32);
  EXPECT_EQ(s.ImageTokens(1, 1), 10);  // NQ + 2
  // The tiny towers' head counts are in no config.json; the fixture folder's model_info.json
  // supplies them, and the spec says so.
  bool noted = false;
  for (const auto& n : s.notes) noted |= Contains(n, "eva_vit_g.num_heads = 2 from");
  EXPECT_TRUE(noted);
}

TEST(ModelSpecTest, Ixc1TowerHeadsWithoutAnyRecordAreAssumedAndNoted) {
  SKIP_WITHOUT_FIXTURES();
  auto table = ReadCheckpointTensorTable(Fixture("ixc1"));
  ASSERT_TRUE(table.ok());
  auto spec = BuildModelSpec(testing::ReadJson(Fixture("ixc1") / "config.json"), nullptr, *table);
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->vision.heads, 2);  // width 32 / head_dim 16
  EXPECT_EQ(spec->vision.qformer_heads, 2);
  bool noted = false;
  for (const auto& n : spec->notes) noted |= Contains(n, "EVA ViT heads not in config.json");
  EXPECT_TRUE(noted);
  // A config that names them wins.
  auto config = testing::ReadJson(Fixture("ixc1") / "config.json");
  config["eva_vit_g"] = {{"num_heads", 4}};
  config["qformer"] = {{"num_attention_heads", 8}};
  spec = BuildModelSpec(config, nullptr, *table);
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->vision.heads, 4);
  EXPECT_EQ(spec->vision.qformer_heads, 8);
}

TEST(ModelSpecTest, RealLayoutValues) {
  const auto dir = xcpipe::testing::FixturesDir() / "real_layouts";
  if (!std::filesystem::exists(dir)) GTEST_SKIP();
  auto khd = DescribeLayout(dir / "internlm-xcomposer2-4khd-7b.layout.json");
  ASSERT_TRUE(khd.ok()) << khd.status().ToString();
  EXPECT_EQ(khd->spec.llm.lora.at("wqkv").rank, 8);
  EXPECT_DOUBLE_EQ(khd->spec.llm.lora.at("wqkv").scale, 2.0);
  EXPECT_EQ(khd->spec.llm.lora.at("w2").rank, 256);
  EXPECT_EQ(khd->spec.vision.width, 1024);
  EXPECT_EQ(khd->spec.vision.heads, 16);
  EXPECT_EQ(khd->spec.vision.proj_in, 4096);
  EXPECT_EQ(khd->spec.llm.kv_heads, 8);
  EXPECT_EQ(khd->spec.llm.intermediate, 14336);

  auto vl = DescribeLayout(dir / "internlm-xcomposer2-vl-7b.layout.json");
  ASSERT_TRUE(vl.ok()) << vl.status().ToString();
  EXPECT_EQ(vl->spec.vision.image_size, 490);
  EXPECT_EQ(vl->spec.vision.positions, 1226);
  EXPECT_EQ(vl->spec.llm.lora.at("wqkv").rank, 256);

  auto d5 = DescribeLayout(dir / "internlm-xcomposer2d5-7b.layout.json");
  ASSERT_TRUE(d5.ok()) << d5.status().ToString();
  EXPECT_EQ(d5->spec.vision.image_size, 560);

  auto one = DescribeLayout(dir / "ixc1_7b.layout.json");
  ASSERT_TRUE(one.ok()) << one.status().ToString();
  const auto& v = one->spec.vision;
  EXPECT_EQ(v.width, 1408);
  EXPECT_EQ(v.layers, 39);
  EXPECT_EQ(v.heads, 16);
  EXPECT_EQ(v.mlp, 6144);
  EXPECT_EQ(v.qformer_width, 768);
  EXPECT_EQ(v.qformer_layers, 12);
  EXPECT_EQ(v.qformer_heads, 12);
  EXPECT_EQ(v.query_tokens, 64);
  EXPECT_TRUE(one->spec.llm.lora.empty());  // the merged layout carries no LoRA
  EXPECT_EQ(one->spec.llm.intermediate, 11008);
}

TEST(ModelSpecTest, RealIxc1WithItsLoraPatternCoversEveryTensor) {
  const auto path = xcpipe::testing::FixturesDir() / "real_layouts" / "ixc1_7b.layout.json";
  if (!std::filesystem::exists(path)) GTEST_SKIP();
  auto layout = ReadLayoutFile(path);
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  TensorTable with_lora = layout->table;
  for (const auto& t : layout->lora_pattern.tensors) with_lora.tensors.push_back(t);
  Json config = Json::parse(layout->config_json);
  auto spec = BuildModelSpec(config, nullptr, with_lora);
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  ExpectFullCoverage(*spec, with_lora, 1224 + 384, 32);
  ASSERT_EQ(spec->llm.lora.size(), 6u);
  for (const auto& [name, lora] : spec->llm.lora) {
    EXPECT_EQ(lora.rank, 8) << name;  // the pattern's placeholder rank, read from shapes
    EXPECT_DOUBLE_EQ(lora.scale, 1.0) << name;
  }
  EXPECT_FALSE(spec->llm.lora.count("gate_proj"));
}

TEST(ModelSpecTest, Real2xLayoutsWithoutClipConfigUseTheReleasedTower) {
  for (const char* file : {"internlm-xcomposer2-vl-7b.layout.json", "internlm-xcomposer2-4khd-7b.layout.json",
                           "internlm-xcomposer2d5-7b.layout.json"}) {
    const auto path = xcpipe::testing::FixturesDir() / "real_layouts" / file;
    if (!std::filesystem::exists(path)) GTEST_SKIP();
    auto layout = ReadLayoutFile(path);
    ASSERT_TRUE(layout.ok());
    auto spec = BuildModelSpec(Json::parse(layout->config_json), nullptr, layout->table);
    ASSERT_TRUE(spec.ok()) << file << ": " << spec.status().ToString();
    EXPECT_TRUE(CheckCoverage(*spec, layout->table).ok()) << file;
    EXPECT_EQ(spec->vision.width, 1024);
    EXPECT_EQ(spec->vision.layers, 24);
  }
}

TEST(ModelSpecTest, TinyTowerWithoutClipConfigIsRefusedClearly) {
  SKIP_WITHOUT_FIXTURES();
  auto table = ReadCheckpointTensorTable(Fixture("ixc2_vl"));
  ASSERT_TRUE(table.ok());
  auto spec = BuildModelSpec(testing::ReadJson(Fixture("ixc2_vl") / "config.json"), nullptr, *table);
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(spec.status().message(), "clip_vision_config.json")) << spec.status().message();
  EXPECT_TRUE(Contains(spec.status().message(), "width 1024")) << spec.status().message();
}

TensorTable Table(std::vector<TensorInfo> tensors) {
  TensorTable t;
  t.tensors = std::move(tensors);
  t.source = "test table";
  return t;
}

TEST(DetectArchTest, DecidesFromNamesAndShapes) {
  const std::string pos = "vit.vision_tower.vision_model.embeddings.position_embedding.weight";
  auto detect = [](const TensorTable& t, const Json* clip = nullptr) { return DetectArch(t, clip); };
  EXPECT_EQ(*detect(Table({{"internlm_model.model.norm.weight", DType::kF32, {8}, ""}})), ModelArch::kIxc1);
  EXPECT_EQ(*detect(Table({{"model.norm.weight", DType::kF32, {8}, ""}})), ModelArch::kIxc2Vl);
  EXPECT_EQ(*detect(Table({{"plora_glb_GN", DType::kF32, {1, 1, 64}, ""},
                           {pos, DType::kF32, {577, 16}, ""},
                           {"model.norm.weight", DType::kF32, {8}, ""}})),
            ModelArch::kIxc2_4khd);
  EXPECT_EQ(*detect(Table({{"plora_glb_GN", DType::kF32, {1, 1, 64}, ""},
                           {pos, DType::kF32, {1601, 16}, ""},
                           {"model.norm.weight", DType::kF32, {8}, ""}})),
            ModelArch::kIxc2_5);
  // Without the position table: the CLIP config's image size, then video_mem_proj.
  Json clip560 = {{"image_size", 560}};
  Json clip336 = {{"image_size", 336}};
  auto hd_only = Table({{"plora_glb_GN", DType::kF32, {1, 1, 64}, ""}, {"model.norm.weight", DType::kF32, {8}, ""}});
  EXPECT_EQ(*detect(hd_only, &clip560), ModelArch::kIxc2_5);
  EXPECT_EQ(*detect(hd_only, &clip336), ModelArch::kIxc2_4khd);
  auto with_video = hd_only;
  with_video.tensors.push_back({"video_mem_proj.0.weight", DType::kF32, {8, 1536}, ""});
  EXPECT_EQ(*detect(with_video), ModelArch::kIxc2_5);
  auto undecided = detect(hd_only);
  ASSERT_FALSE(undecided.ok());
  EXPECT_TRUE(Contains(undecided.status().message(), "4KHD from 2.5")) << undecided.status().message();
  auto odd = detect(Table({{"plora_glb_GN", DType::kF32, {1, 1, 64}, ""}, {pos, DType::kF32, {1226, 16}, ""}}));
  ASSERT_FALSE(odd.ok());
  EXPECT_TRUE(Contains(odd.status().message(), "1226-row")) << odd.status().message();
  auto neither = detect(Table({{"encoder.weight", DType::kF32, {8}, ""}}));
  ASSERT_FALSE(neither.ok());
  EXPECT_TRUE(Contains(neither.status().message(), "not an InternLM-XComposer checkpoint"));
}

TEST(DetectArchTest, ConfigArchitecturesDoNotDecide) {
  SKIP_WITHOUT_FIXTURES();
  // 4KHD's and 2.5's tiny configs are identical in `architectures`; the tensors tell them apart.
  auto a = testing::ReadJson(Fixture("ixc2_4khd") / "config.json");
  auto b = testing::ReadJson(Fixture("ixc2d5") / "config.json");
  EXPECT_EQ(a["architectures"], b["architectures"]);
  EXPECT_EQ(Tiny("ixc2_4khd")->spec.arch, ModelArch::kIxc2_4khd);
  EXPECT_EQ(Tiny("ixc2d5")->spec.arch, ModelArch::kIxc2_5);
}

TEST(ModelSpecTest, ArchNamesRoundTrip) {
  for (ModelArch a : {ModelArch::kIxc1, ModelArch::kIxc2Vl, ModelArch::kIxc2_4khd, ModelArch::kIxc2_5}) {
    EXPECT_EQ(ParseArch(ArchName(a)), a);
  }
  EXPECT_EQ(ArchName(ModelArch::kIxc2_5), "ixc2.5");
  EXPECT_EQ(ParseArch("ixc2d5"), ModelArch::kIxc2_5);
  EXPECT_EQ(ParseArch("ixc3"), std::nullopt);
}

TEST(ModelSpecTest, ConfigErrorsNameTheKey) {
  SKIP_WITHOUT_FIXTURES();
  auto table = ReadCheckpointTensorTable(Fixture("ixc2_vl"));
  ASSERT_TRUE(table.ok());
  auto clip = testing::ReadJson(Fixture("ixc2_vl") / "clip_vision_config.json");
  auto config = testing::ReadJson(Fixture("ixc2_vl") / "config.json");
  auto missing = config;
  missing.erase("hidden_size");
  auto spec = BuildModelSpec(missing, &clip, *table);
  ASSERT_FALSE(spec.ok());
  EXPECT_TRUE(Contains(spec.status().message(), "\"hidden_size\"")) << spec.status().message();
  auto wrong_type = config;
  wrong_type["num_attention_heads"] = "four";
  spec = BuildModelSpec(wrong_type, &clip, *table);
  ASSERT_FALSE(spec.ok());
  EXPECT_TRUE(Contains(spec.status().message(), "\"num_attention_heads\" must be an integer"))
      << spec.status().message();
  auto not_divisible = config;
  not_divisible["num_key_value_heads"] = 3;
  spec = BuildModelSpec(not_divisible, &clip, *table);
  ASSERT_FALSE(spec.ok());
  EXPECT_TRUE(Contains(spec.status().message(), "num_key_value_heads")) << spec.status().message();
  auto scaling = config;
  scaling["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
  spec = BuildModelSpec(scaling, &clip, *table);
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->llm.rope_scaling, RopeScaling::kDynamic);
  EXPECT_DOUBLE_EQ(spec->llm.rope_scaling_factor, 2.0);
}

TEST(ModelSpecTest, ArchOverrideForcesTheVersion) {
  SKIP_WITHOUT_FIXTURES();
  auto forced = DescribeCheckpoint(Fixture("ixc2d5"), ModelArch::kIxc2_4khd);
  ASSERT_TRUE(forced.ok()) << forced.status().ToString();
  EXPECT_EQ(forced->spec.arch, ModelArch::kIxc2_4khd);
  // The 2.5 tensors do not fit a 4KHD spec, and coverage says where.
  CoverageReport report = CheckCoverage(forced->spec, forced->tensors);
  EXPECT_FALSE(report.ok());
  EXPECT_FALSE(report.unknown.empty());  // video_mem_proj.* belong to no 4KHD block
}

TEST(ModelSpecTest, BlockOfRejectsStrangers) {
  SKIP_WITHOUT_FIXTURES();
  auto d = Tiny("ixc2_vl");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->spec.BlockOf("model.layers.2.ffn_norm.weight"), 4u);
  EXPECT_EQ(d->spec.BlockOf("model.layers.3.ffn_norm.weight"), std::nullopt);
  EXPECT_EQ(d->spec.BlockOf("model.layers.x.ffn_norm.weight"), std::nullopt);
  EXPECT_EQ(d->spec.BlockOf("model.layers.0.ffn_norm.bias"), std::nullopt);
  EXPECT_EQ(d->spec.BlockOf("output.weight"), d->spec.blocks.size() - 1);
  EXPECT_EQ(d->spec.BlockOf("vision_proj.2.bias"), 0u);
  EXPECT_EQ(d->spec.BlockOf(""), std::nullopt);
}

// Bad checkpoints that parse but do not match the model: each is named in the report.
class BadCheckpointCoverageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(xcpipe::testing::FixturesDir() / "ixc2_vl")) GTEST_SKIP();
    tensors_ = testing::SyntheticIxc2VlTensors(3, 100);
    config_ = testing::ReadJson(Fixture("ixc2_vl") / "config.json");
    config_["vocab_size"] = 100;
    clip_ = testing::ReadJson(Fixture("ixc2_vl") / "clip_vision_config.json");
  }
  CoverageReport Check(const std::vector<TensorInfo>& tensors, const std::vector<TensorInfo>& duplicates = {}) {
    testing::WriteCheckpoint(dir_.path(), config_, &clip_, tensors, 2, duplicates);
    auto described = DescribeCheckpoint(dir_.path());
    EXPECT_TRUE(described.ok()) << described.status().ToString();
    if (!described.ok()) return {};
    return CheckCoverage(described->spec, described->tensors);
  }
  testing::TempDir dir_;
  std::vector<TensorInfo> tensors_;
  Json config_, clip_;
};

TEST_F(BadCheckpointCoverageTest, CleanSyntheticCheckpointPasses) { EXPECT_TRUE(Check(tensors_).ok()); }

TEST_F(BadCheckpointCoverageTest, UnknownTensorIsNamed) {
  auto tensors = tensors_;
  tensors.push_back({"model.layers.1.attention.extra.weight", DType::kF32, {4}, ""});
  tensors.push_back({"mystery_head.weight", DType::kF32, {4}, ""});
  tensors.push_back({"model.layers.7.ffn_norm.weight", DType::kF32, {64}, ""});  // beyond num_hidden_layers
  auto report = Check(tensors);
  EXPECT_EQ(report.unknown, (std::vector<std::string>{"model.layers.1.attention.extra.weight", "mystery_head.weight",
                                                      "model.layers.7.ffn_norm.weight"}));
  EXPECT_TRUE(report.missing.empty());
  const std::string m = report.ToStatus().message();
  EXPECT_TRUE(Contains(m, "3 unknown tensors")) << m;
  EXPECT_TRUE(Contains(m, "mystery_head.weight")) << m;
}

TEST_F(BadCheckpointCoverageTest, DuplicatedTensorIsNamed) {
  std::vector<TensorInfo> dups = {tensors_.front()};  // also written into the last shard
  auto report = Check(tensors_, dups);
  EXPECT_EQ(report.duplicated, (std::vector<std::string>{tensors_.front().name}));
  EXPECT_TRUE(report.unknown.empty());
  EXPECT_TRUE(report.missing.empty());
  const std::string m = report.ToStatus().message();
  EXPECT_TRUE(Contains(m, "duplicated")) << m;
  EXPECT_TRUE(Contains(m, tensors_.front().name)) << m;
}

TEST_F(BadCheckpointCoverageTest, WrongShapeIsNamedWithBothShapes) {
  auto tensors = tensors_;
  for (auto& t : tensors) {
    if (t.name == "model.layers.1.attention.wo.weight") t.shape = {64, 32};
  }
  auto report = Check(tensors);
  ASSERT_EQ(report.wrong_shape.size(), 1u);
  EXPECT_EQ(report.wrong_shape[0], "model.layers.1.attention.wo.weight: expected [64,64], found [64,32]");
  EXPECT_TRUE(Contains(report.ToStatus().message(), "wrong shape")) << report.ToStatus().message();
}

TEST_F(BadCheckpointCoverageTest, MissingTensorIsNamedButOptionalOnesMayBeAbsent) {
  std::vector<TensorInfo> tensors;
  for (const auto& t : tensors_) {
    if (t.name == "model.layers.2.feed_forward.w2.Plora_B.weight") continue;  // required
    if (t.name.find("post_layernorm") != std::string::npos) continue;         // optional
    tensors.push_back(t);
  }
  auto report = Check(tensors);
  EXPECT_EQ(report.missing, (std::vector<std::string>{"model.layers.2.feed_forward.w2.Plora_B.weight"}));
  EXPECT_TRUE(Contains(report.ToStatus().message(), "1 missing")) << report.ToStatus().message();
}

}  // namespace
}  // namespace xcpipe::checkpoint
