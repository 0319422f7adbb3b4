#include "xcpipe/mkmodel/model_generator.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "xcpipe/base/files.h"
#include "xcpipe/checkpoint/safetensors.h"
#include "xcpipe/testing/paths.h"
#include "xcpipe/tokenizer/chat_template.h"
#include "xcpipe/tokenizer/tokenizer.h"

namespace xcpipe::mkmodel {
namespace {

namespace fs = std::filesystem;
using checkpoint::DType;
using checkpoint::ModelArch;

constexpr ModelArch kArchs[] = {ModelArch::kIxc2Vl, ModelArch::kIxc2_4khd, ModelArch::kIxc2_5, ModelArch::kIxc1};

class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("xcpipe_mkmodel_test_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::string ReadAll(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

std::string Name(ModelArch arch) { return std::string(checkpoint::ArchName(arch)); }

GeneratorOptions Options(ModelArch arch, Preset preset = Preset::kTiny, DType dtype = DType::kF32, uint64_t seed = 0) {
  GeneratorOptions o;
  o.arch = arch;
  o.preset = preset;
  o.dtype = dtype;
  o.seed = seed;
  return o;
}

// ---------------------------------------------------------------------------------------------
// Plans (no I/O).

TEST(MkmodelPresetTest, NamesRoundTrip) {
  for (auto preset : {Preset::kTiny, Preset::kSmall}) EXPECT_EQ(ParsePreset(PresetName(preset)), preset);
  EXPECT_FALSE(ParsePreset("huge"));
  EXPECT_EQ(PresetVocabSize(Preset::kTiny), 2048);
}

// The tiny plans have exactly the fixtures' tensor names and shapes (the official state_dict()
// of each version, read from the fixture shards, not from the spec code), except for the
// vocabulary rows, which follow the trained tokenizer.
TEST(MkmodelPlanTest, TinyPlanIsTheFixtureLayout) {
  const std::map<ModelArch, std::string> folders = {{ModelArch::kIxc2Vl, "ixc2_vl"},
                                                    {ModelArch::kIxc2_4khd, "ixc2_4khd"},
                                                    {ModelArch::kIxc2_5, "ixc2d5"},
                                                    {ModelArch::kIxc1, "ixc1"}};
  for (auto arch : kArchs) {
    SCOPED_TRACE(Name(arch));
    const fs::path dir = testing::FixturesDir() / folders.at(arch) / "checkpoint";
    if (!fs::exists(dir)) GTEST_SKIP() << "no fixtures at " << dir;
    auto fixture = checkpoint::ReadCheckpointTensorTable(dir);
    ASSERT_TRUE(fixture.ok()) << fixture.status().ToString();
    auto plan = PlanModel(Options(arch));
    ASSERT_TRUE(plan.ok()) << plan.status().ToString();
    const int64_t fixture_vocab = arch == ModelArch::kIxc1 ? 103168 : 92544;

    std::map<std::string, std::vector<int64_t>> expected;
    for (const auto& t : fixture->tensors) {
      auto shape = t.shape;
      if (!shape.empty() && shape[0] == fixture_vocab) shape[0] = plan->vocab_size;
      expected[t.name] = shape;
    }
    std::map<std::string, std::vector<int64_t>> planned;
    for (const auto& t : plan->tensors) planned[t.name] = t.shape;
    EXPECT_EQ(planned.size(), plan->tensors.size()) << "duplicated names";
    for (const auto& [name, shape] : expected) {
      auto it = planned.find(name);
      if (it == planned.end()) {
        ADD_FAILURE() << "missing " << name;
      } else {
        EXPECT_EQ(it->second, shape) << name;
      }
    }
    for (const auto& [name, shape] : planned) EXPECT_TRUE(expected.count(name)) << "not in the fixture: " << name;
    // The configs carry the fixtures' (official) field sets; torch_dtype is added, and 1.0's
    // tower sizes (eva_vit_g, qformer).
    auto keys = [](const nlohmann::json& j) {
      std::set<std::string> out;
      for (const auto& [key, value] : j.items()) out.insert(key);
      return out;
    };
    auto fixture_config = ReadJsonFile(dir / "config.json");
    ASSERT_TRUE(fixture_config.ok());
    auto expected_keys = keys(*fixture_config);
    expected_keys.insert("torch_dtype");
    if (arch == ModelArch::kIxc1) expected_keys.insert({"eva_vit_g", "qformer"});
    EXPECT_EQ(keys(plan->config), expected_keys);
    for (const auto& [key, value] : fixture_config->items()) {
      if (key != "vocab_size") {
        EXPECT_EQ(plan->config[key], value) << key;
      }
    }
    if (plan->clip_config) {
      auto fixture_clip = ReadJsonFile(dir / "clip_vision_config.json");
      ASSERT_TRUE(fixture_clip.ok());
      EXPECT_EQ(*plan->clip_config, *fixture_clip);  // the tiny towers are the fixtures' own
    }
    // Buffers keep their own dtypes (as in the fixture); everything else is f32 here.
    for (const auto& t : plan->tensors) {
      const auto* f = fixture->Find(t.name);
      if (f) {
        EXPECT_EQ(t.dtype, f->dtype) << t.name;
      }
    }
  }
}

TEST(MkmodelPlanTest, EveryPlanReadsBackAsItsVersion) {
  for (auto arch : kArchs) {
    for (auto preset : {Preset::kTiny, Preset::kSmall}) {
      for (auto dtype : {DType::kF32, DType::kBF16}) {
        SCOPED_TRACE(Name(arch) + " " + std::string(PresetName(preset)) + " " +
                     std::string(checkpoint::DTypeName(dtype)));
        auto plan = PlanModel(Options(arch, preset, dtype));
        ASSERT_TRUE(plan.ok()) << plan.status().ToString();
        const auto table = plan->ToTensorTable();
        auto spec = checkpoint::BuildModelSpec(plan->config, plan->clip_config ? &*plan->clip_config : nullptr, table);
        ASSERT_TRUE(spec.ok()) << spec.status().ToString();
        EXPECT_EQ(spec->arch, arch);
        EXPECT_EQ(spec->llm.vocab, PresetVocabSize(preset));
        EXPECT_EQ(plan->config["vocab_size"], PresetVocabSize(preset));
        EXPECT_TRUE(checkpoint::CheckCoverage(*spec, table).ok())
            << checkpoint::CheckCoverage(*spec, table).ToStatus().ToString();
        EXPECT_EQ(plan->config["torch_dtype"], dtype == DType::kBF16 ? "bfloat16" : "float32");
        for (const auto& t : plan->tensors) {
          if (!t.is_buffer()) {
            EXPECT_EQ(t.dtype, dtype) << t.name;
          }
        }
        if (arch == ModelArch::kIxc1) {
          // The tower heads come from config.json's eva_vit_g / qformer objects.
          const int64_t heads = preset == Preset::kTiny ? 2 : 4;
          EXPECT_EQ(spec->vision.heads, heads);
          EXPECT_EQ(spec->vision.qformer_heads, heads);
          EXPECT_EQ(spec->llm.lora.size(), 6u);
          for (const auto& [key, lora] : spec->llm.lora) EXPECT_DOUBLE_EQ(lora.scale, 1.0) << key;
          for (const auto& note : spec->notes) EXPECT_EQ(note.find("heads"), std::string::npos) << note;
        } else {
          ASSERT_EQ(spec->llm.lora.size(), 5u);
          for (const auto& [key, lora] : spec->llm.lora) {
            const bool khd_wqkv = arch == ModelArch::kIxc2_4khd && key == "wqkv";
            EXPECT_EQ(lora.rank, khd_wqkv ? 8 : 256) << key;
            EXPECT_DOUBLE_EQ(lora.scale, khd_wqkv ? 2.0 : 1.0) << key;
          }
          EXPECT_TRUE(plan->clip_config);
        }
      }
    }
  }
}

TEST(MkmodelPlanTest, SmallPresetIsBenchmarkSized) {
  const std::map<ModelArch, int64_t> tile_px = {
      {ModelArch::kIxc2Vl, 490}, {ModelArch::kIxc2_4khd, 336}, {ModelArch::kIxc2_5, 560}, {ModelArch::kIxc1, 224}};
  for (auto arch : kArchs) {
    SCOPED_TRACE(Name(arch));
    auto plan = PlanModel(Options(arch, Preset::kSmall));
    ASSERT_TRUE(plan.ok()) << plan.status().ToString();
    const uint64_t bytes = plan->total_bytes();
    EXPECT_GT(bytes, uint64_t{100} * 1000 * 1000);
    EXPECT_LT(bytes, uint64_t{1000} * 1000 * 1000);
    EXPECT_GE(plan->num_shards, 3);
    auto bf16 = PlanModel(Options(arch, Preset::kSmall, DType::kBF16));
    ASSERT_TRUE(bf16.ok());
    EXPECT_NEAR(static_cast<double>(bf16->total_bytes()), bytes / 2.0, bytes * 0.01);
    EXPECT_EQ(bf16->parameters(), plan->parameters());
    auto spec = checkpoint::BuildModelSpec(plan->config, plan->clip_config ? &*plan->clip_config : nullptr,
                                           plan->ToTensorTable());
    ASSERT_TRUE(spec.ok());
    EXPECT_EQ(spec->llm.hidden, 1024);
    EXPECT_EQ(spec->llm.head_dim, 128);
    EXPECT_EQ(spec->vision.image_size, tile_px.at(arch));
  }
}

TEST(MkmodelPlanTest, ShardsRespectTheCap) {
  for (auto [arch, preset] :
       {std::pair{ModelArch::kIxc2Vl, Preset::kTiny}, std::pair{ModelArch::kIxc2Vl, Preset::kSmall},
        std::pair{ModelArch::kIxc2_4khd, Preset::kTiny}, std::pair{ModelArch::kIxc1, Preset::kTiny}}) {
    SCOPED_TRACE(Name(arch) + " " + std::string(PresetName(preset)));
    auto plan = PlanModel(Options(arch, preset));
    ASSERT_TRUE(plan.ok());
    EXPECT_GT(plan->num_shards, 1);  // every model exercises multi-shard loading
    std::vector<uint64_t> shard_bytes(plan->num_shards);
    std::vector<size_t> shard_tensors(plan->num_shards);
    int last = 0;
    for (const auto& t : plan->tensors) {
      ASSERT_GE(t.shard, last);
      ASSERT_LT(t.shard, plan->num_shards);
      last = t.shard;
      shard_bytes[t.shard] += t.bytes();
      ++shard_tensors[t.shard];
    }
    for (int s = 0; s < plan->num_shards; ++s) {
      EXPECT_GT(shard_tensors[s], 0u);
      if (shard_tensors[s] > 1) {
        EXPECT_LE(shard_bytes[s], plan->shard_cap_bytes) << s;
      }
    }
    EXPECT_EQ(plan->ShardFileName(0), "model-00001-of-" +
                                          std::string(5 - std::to_string(plan->num_shards).size(), '0') +
                                          std::to_string(plan->num_shards) + ".safetensors");
  }
}

TEST(MkmodelPlanTest, RefusesOtherDtypes) {
  auto plan = PlanModel(Options(ModelArch::kIxc2Vl, Preset::kTiny, DType::kF16));
  EXPECT_EQ(plan.status().code(), StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Values.

std::vector<float> FloatValues(const PlannedTensor& t, uint64_t seed) {
  std::vector<char> bytes(t.bytes());
  EXPECT_TRUE(FillTensor(t, seed, bytes).ok());
  std::vector<float> out(t.numel());
  std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

PlannedTensor Tensor(std::string name, std::vector<int64_t> shape, InitKind init, float stddev = 0.02f,
                     DType dtype = DType::kF32) {
  PlannedTensor t;
  t.name = std::move(name);
  t.shape = std::move(shape);
  t.init = init;
  t.stddev = stddev;
  t.dtype = dtype;
  return t;
}

TEST(MkmodelValuesTest, NormalValuesHaveTheAskedSpread) {
  const auto t = Tensor("model.layers.0.attention.wqkv.weight", {256, 256}, InitKind::kNormal, 0.02f);
  const auto v = FloatValues(t, 0);
  double sum = 0, sq = 0;
  float lo = 0, hi = 0;
  for (float x : v) {
    ASSERT_TRUE(std::isfinite(x));
    sum += x, sq += double{x} * x;
    lo = std::min(lo, x), hi = std::max(hi, x);
  }
  const double mean = sum / v.size();
  const double stddev = std::sqrt(sq / v.size() - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.001);
  EXPECT_NEAR(stddev, 0.02, 0.0005);
  // Irwin-Hall(4) is bounded by 2*sqrt(3) standard deviations, and reaches well past 2.
  EXPECT_LE(hi, 0.02f * 3.47f);
  EXPECT_GE(lo, -0.02f * 3.47f);
  EXPECT_GT(hi, 0.02f * 2.0f);
  EXPECT_LT(lo, -0.02f * 2.0f);
  std::set<float> distinct(v.begin(), v.end());
  EXPECT_GT(distinct.size(), v.size() * 9 / 10);
}

TEST(MkmodelValuesTest, StreamsDependOnSeedAndNameOnly) {
  const auto a = Tensor("a", {64}, InitKind::kNormal);
  const auto b = Tensor("b", {64}, InitKind::kNormal);
  EXPECT_EQ(FloatValues(a, 1), FloatValues(a, 1));
  EXPECT_NE(FloatValues(a, 1), FloatValues(a, 2));
  EXPECT_NE(FloatValues(a, 1), FloatValues(b, 1));
  // A longer tensor of the same name starts with the same values (counter-based stream).
  auto a_long = Tensor("a", {128}, InitKind::kNormal);
  auto longer = FloatValues(a_long, 1);
  longer.resize(64);
  EXPECT_EQ(longer, FloatValues(a, 1));
}

TEST(MkmodelValuesTest, OnesArangeAndInvFreq) {
  for (float x : FloatValues(Tensor("n", {8}, InitKind::kOnes), 3)) EXPECT_EQ(x, 1.0f);

  auto pos = Tensor("Qformer.bert.embeddings.position_ids", {1, 512}, InitKind::kArange, 0, DType::kI64);
  std::vector<char> bytes(pos.bytes());
  ASSERT_TRUE(FillTensor(pos, 3, bytes).ok());
  for (int64_t i = 0; i < 512; ++i) {
    int64_t v;
    std::memcpy(&v, bytes.data() + 8 * i, 8);
    ASSERT_EQ(v, i);
  }

  auto inv = Tensor("inv_freq", {8}, InitKind::kInvFreq);
  inv.rope_base = 10000.0;
  const auto f = FloatValues(inv, 0);
  for (int i = 0; i < 8; ++i) EXPECT_FLOAT_EQ(f[i], static_cast<float>(std::pow(10000.0, -2.0 * i / 16.0))) << i;
}

TEST(MkmodelValuesTest, Bf16IsTheRoundedF32) {
  const auto f32 = Tensor("w", {4096}, InitKind::kNormal, 0.02f, DType::kF32);
  const auto bf16 = Tensor("w", {4096}, InitKind::kNormal, 0.02f, DType::kBF16);
  const auto wide = FloatValues(f32, 9);
  std::vector<char> bytes(bf16.bytes());
  ASSERT_TRUE(FillTensor(bf16, 9, bytes).ok());
  for (size_t i = 0; i < wide.size(); ++i) {
    uint16_t half;
    std::memcpy(&half, bytes.data() + 2 * i, 2);
    const uint32_t bits = uint32_t{half} << 16;
    float back;
    std::memcpy(&back, &bits, 4);
    ASSERT_LE(std::fabs(back - wide[i]), std::fabs(wide[i]) / 256.0f) << i;  // 8 significant bits
  }
}

TEST(MkmodelValuesTest, WrongBufferSizeIsRefused) {
  const auto t = Tensor("w", {4, 4}, InitKind::kNormal);
  std::vector<char> bytes(63);
  EXPECT_EQ(FillTensor(t, 0, bytes).code(), StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Writing (tiny preset only; small is too slow for unit tests).

std::map<std::string, std::string> FolderContents(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) files[e.path().filename().string()] = ReadAll(e.path());
  return files;
}

class MkmodelGenerateTest : public ::testing::TestWithParam<ModelArch> {};

TEST_P(MkmodelGenerateTest, TinyModelDescribesCoversAndIsDeterministic) {
  const ModelArch arch = GetParam();
  TempDir tmp;
  const fs::path dir = tmp.path() / "m";
  std::vector<WrittenFile> written;
  auto model = GenerateModel(Options(arch), dir, [&](const WrittenFile& f) { written.push_back(f); });
  ASSERT_TRUE(model.ok()) << model.status().ToString();

  // Progress: the tokenizer, every shard in order, the index and the configs (config.json last).
  ASSERT_FALSE(written.empty());
  EXPECT_EQ(written.front().file, "tokenizer.model");
  EXPECT_EQ(written.back().file, "config.json");
  int shards = 0;
  uint64_t bytes = 0;
  for (const auto& f : written) {
    bytes += f.bytes;
    EXPECT_EQ(f.bytes, fs::file_size(dir / f.file)) << f.file;
    if (f.shard >= 0) {
      EXPECT_EQ(f.shard, shards++);
      EXPECT_EQ(f.file, model->plan.ShardFileName(f.shard));
    }
  }
  EXPECT_EQ(shards, model->plan.num_shards);
  EXPECT_EQ(bytes, model->file_bytes);
  EXPECT_EQ(fs::exists(dir / "clip_vision_config.json"), arch != ModelArch::kIxc1);

  // Read back independently of the generator's own check.
  auto described = checkpoint::DescribeCheckpoint(dir);
  ASSERT_TRUE(described.ok()) << described.status().ToString();
  EXPECT_EQ(described->spec.arch, arch);
  EXPECT_TRUE(checkpoint::CheckCoverage(described->spec, described->tensors).ok());
  EXPECT_EQ(described->tensors.tensors.size(), model->plan.tensors.size());
  auto index = checkpoint::ReadSafetensorsIndex(dir / checkpoint::kSafetensorsIndexFileName);
  ASSERT_TRUE(index.ok());
  EXPECT_EQ(index->total_size, model->plan.total_bytes());
  EXPECT_EQ(static_cast<int>(index->Shards().size()), model->plan.num_shards);

  // The bytes in the shards are FillTensor's.
  auto mapped = checkpoint::MappedCheckpoint::Open(dir, [](const std::string&) { return true; });
  ASSERT_TRUE(mapped.ok()) << mapped.status().ToString();
  for (const auto& t : model->plan.tensors) {
    auto view = (*mapped)->Get(t.name);
    ASSERT_TRUE(view.ok()) << t.name;
    std::vector<char> expected(t.bytes());
    ASSERT_TRUE(FillTensor(t, 0, expected).ok());
    ASSERT_EQ(std::memcmp(view->data, expected.data(), expected.size()), 0) << t.name;
  }

  // The tokenizer loads, matches the config and encodes the version's chat template.
  auto tok = tokenizer::Tokenizer::LoadFromFile(dir / "tokenizer.model");
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  EXPECT_EQ((*tok)->vocab_size(), model->plan.vocab_size);
  EXPECT_EQ(described->spec.llm.vocab, (*tok)->vocab_size());
  const auto version = *tokenizer::ParseChatVersion(checkpoint::ArchName(arch));
  auto special = tokenizer::LookupChatSpecialIds(**tok, version);
  ASSERT_TRUE(special.ok()) << special.status().ToString();
  const std::string_view start = arch == ModelArch::kIxc1 ? tokenizer::kIxc1EndOfHuman : tokenizer::kIxc2TurnStart;
  const std::string_view end = arch == ModelArch::kIxc1 ? tokenizer::kIxc1EndOfAssistant : tokenizer::kIxc2TurnEnd;
  auto ids = (*tok)->Encode(std::string(start) + "user\nHi" + std::string(end), false);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->front(), special->turn_start);
  EXPECT_EQ(ids->back(), special->turn_end);
  tokenizer::ChatRequest request;
  request.query = arch == ModelArch::kIxc1 ? "Describe this picture." : "<ImageHere>Describe this picture.";
  request.num_images = 1;
  auto prompt = tokenizer::BuildChatPrompt(**tok, version, request);
  ASSERT_TRUE(prompt.ok()) << prompt.status().ToString();
  EXPECT_EQ(prompt->num_images(), 1);
  EXPECT_GT(prompt->num_text_tokens(), 5u);
  for (const auto& segment : prompt->segments) {
    if (const auto* text = std::get_if<tokenizer::TextSegment>(&segment)) {
      for (auto id : text->ids) EXPECT_NE(id, (*tok)->unk_id()) << text->text;
    }
  }

  // Same options: byte-identical files. Another seed: other weights and another tokenizer corpus.
  const fs::path again = tmp.path() / "again";
  ASSERT_TRUE(GenerateModel(Options(arch), again).ok());
  const auto first = FolderContents(dir), second = FolderContents(again);
  ASSERT_EQ(first.size(), second.size());
  for (const auto& [name, content] : first) {
    ASSERT_TRUE(second.count(name)) << name;
    EXPECT_TRUE(content == second.at(name)) << name << " differs between two runs";
  }
  const fs::path other = tmp.path() / "other";
  ASSERT_TRUE(GenerateModel(Options(arch, Preset::kTiny, DType::kF32, 1), other).ok());
  const auto third = FolderContents(other);
  EXPECT_TRUE(third.at(model->plan.ShardFileName(0)) != first.at(model->plan.ShardFileName(0)));
  EXPECT_EQ(third.at("config.json"), first.at("config.json"));
}

INSTANTIATE_TEST_SUITE_P(EveryArch, MkmodelGenerateTest, ::testing::ValuesIn(kArchs),
                         [](const ::testing::TestParamInfo<ModelArch>& info) {
                           std::string name = Name(info.param);
                           for (char& c : name) {
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           }
                           return name;
                         });

TEST(MkmodelGenerateFolderTest, Bf16ModelReadsBack) {
  TempDir tmp;
  auto model = GenerateModel(Options(ModelArch::kIxc2_4khd, Preset::kTiny, DType::kBF16), tmp.path() / "m");
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  auto table = checkpoint::ReadCheckpointTensorTable(tmp.path() / "m");
  ASSERT_TRUE(table.ok());
  for (const auto& t : table->tensors) EXPECT_EQ(t.dtype, DType::kBF16) << t.name;
}

TEST(MkmodelGenerateFolderTest, NonEmptyFolderNeedsOverwrite) {
  TempDir tmp;
  const fs::path dir = tmp.path() / "m";
  fs::create_directories(dir);
  ASSERT_TRUE(WriteFileAtomically(dir / "notes.txt", "keep me").ok());
  ASSERT_TRUE(WriteFileAtomically(dir / "model-00009-of-00009.safetensors", "stale").ok());

  auto refused = GenerateModel(Options(ModelArch::kIxc2_4khd), dir);
  ASSERT_EQ(refused.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("not empty"), std::string::npos) << refused.status().ToString();
  EXPECT_NE(refused.status().message().find("--force"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir / "config.json"));  // nothing written

  auto options = Options(ModelArch::kIxc2_4khd);
  options.overwrite = true;
  auto model = GenerateModel(options, dir);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  EXPECT_EQ(ReadAll(dir / "notes.txt"), "keep me");
  EXPECT_FALSE(fs::exists(dir / "model-00009-of-00009.safetensors"));
  EXPECT_TRUE(checkpoint::DescribeCheckpoint(dir).ok());

  // A file where the folder should be.
  ASSERT_TRUE(WriteFileAtomically(tmp.path() / "file", "x").ok());
  EXPECT_EQ(GenerateModel(options, tmp.path() / "file").status().code(), StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace xcpipe::mkmodel
