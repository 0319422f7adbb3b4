#include "xcpipe/tokenizer/fixture_checks.h"

#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <set>

#include "test_fixtures.h"
#include "xcpipe/base/files.h"

namespace xcpipe::tokenizer {
namespace {

namespace fs = std::filesystem;
using test::Fixtures;

// A scratch folder removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    path_ =
        fs::temp_directory_path() / ("xcpipe_tok_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
                                     "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Copies the fixture files the tokenizer checks read (no weights, no activations).
void MirrorSmallFixtureFiles(const fs::path& from, const fs::path& to) {
  for (const auto& entry : fs::recursive_directory_iterator(from)) {
    if (!entry.is_regular_file()) continue;
    const std::string name = entry.path().filename().string();
    const bool wanted = name.ends_with(".json") || name == "tokenizer.model" || name.starts_with("input_ids") ||
                        name == "im_mask.npy" || name == "attention_mask.npy" || name.starts_with("generated_ids");
    if (!wanted) continue;
    const fs::path dest = to / fs::relative(entry.path(), from);
    fs::create_directories(dest.parent_path());
    fs::copy_file(entry.path(), dest);
  }
}

void WriteText(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  ASSERT_TRUE(WriteFileAtomically(p, text).ok());
}

std::string ReadText(const fs::path& p) { return ReadFileToString(p).value(); }

// Adds `delta` to the last int64 of a .npy file.
void BumpLastInt64(const fs::path& npy, int64_t delta) {
  std::string bytes = ReadText(npy);
  ASSERT_GE(bytes.size(), 8u);
  int64_t v;
  std::memcpy(&v, bytes.data() + bytes.size() - 8, 8);
  v += delta;
  std::memcpy(bytes.data() + bytes.size() - 8, &v, 8);
  WriteText(npy, bytes);
}

std::map<std::string, FixtureCheckResult> ByName(const std::vector<FixtureCheckResult>& results) {
  std::map<std::string, FixtureCheckResult> out;
  for (const auto& r : results) {
    EXPECT_TRUE(out.emplace(r.name, r).second) << "duplicate check name " << r.name;
  }
  return out;
}

std::vector<std::string> Failures(const std::vector<FixtureCheckResult>& results) {
  std::vector<std::string> out;
  for (const auto& r : results) {
    if (!r.passed) out.push_back(r.name + ": " + r.message);
  }
  return out;
}

bool RealFixturesPresent() { return fs::exists(Fixtures() / "tokenizer" / "tokenizer_cases.json"); }

TEST(FixtureChecksTest, EveryCheckOnTheSharedFixturesPasses) {
  if (!RealFixturesPresent()) GTEST_SKIP() << "no fixtures at " << Fixtures();
  const auto results = RunTokenizerFixtureChecks(Fixtures());
  EXPECT_EQ(Failures(results), std::vector<std::string>{});
  const auto by_name = ByName(results);
  // Every recorded string of both tokenizer files has its own check.
  const auto v2 = test::ReadJson(Fixtures() / "tokenizer" / "tokenizer_cases.json");
  const auto v1 = test::ReadJson(Fixtures() / "ixc1" / "tokenizer" / "tokenizer_cases.json");
  size_t string_checks = 0;
  for (const auto& [name, r] : by_name) {
    if (name.find(": strings[") != std::string::npos || name.find(": cases[") != std::string::npos) ++string_checks;
  }
  EXPECT_EQ(string_checks, v2["strings"].size() + v1["cases"].size());
  // Every case folder is reported, and the prompt-bearing ones with their ids.
  for (const auto& model : fs::directory_iterator(Fixtures())) {
    if (!fs::exists(model.path() / "cases")) continue;
    const std::string m = model.path().filename().string();
    EXPECT_TRUE(by_name.count(m + ": version")) << m;
    for (const auto& c : fs::directory_iterator(model.path() / "cases")) {
      const std::string prefix = m + "/cases/" + c.path().filename().string();
      bool any = false;
      for (const auto& [name, r] : by_name) any |= name.starts_with(prefix);
      EXPECT_TRUE(any) << prefix;
    }
  }
  for (const char* name :
       {"ixc2_vl/cases/text_chat: input_ids", "ixc2_vl/cases/text_chat: prompt_text",
        "ixc2_vl/cases/image_chat: text_parts", "ixc2_vl/cases/image_chat: input_ids_with_image_slots",
        "ixc2_vl/cases/image_chat: im_mask", "ixc2_4khd/cases/batch2_text_leftpad: input_ids row 1",
        "ixc2_4khd/cases/batch2_text_leftpad: attention_mask row 0",
        "ixc2d5/cases/text_chat: build_inputs_ids_if_image_is_None",
        "ixc2d5/cases/image_chat: input_ids_with_image_slots", "ixc1/cases/text_chat: text_segments",
        "ixc1/cases/image_chat: image_slot_range", "ixc1/cases/history_chat: history_segments + turn2_segments",
        "ixc1/cases/history_chat: turn1_prompt_segments", "ixc1/cases/text_chat: generated_text_official",
        "tokenizer/tokenizer_cases.json: chat_prompts.xcomposer2_vl.text_only_with_history prompt_text",
        "tokenizer/tokenizer_cases.json: chat_prompts.xcomposer2d5.image_no_meta im_mask_with_3_image_rows",
        "tokenizer/tokenizer_cases.json: special ids", "ixc1/tokenizer/tokenizer_cases.json: special ids"}) {
    EXPECT_TRUE(by_name.count(name)) << name;
  }
}

TEST(FixtureChecksTest, DetectsEveryKindOfTampering) {
  if (!RealFixturesPresent()) GTEST_SKIP() << "no fixtures at " << Fixtures();
  TempDir tmp;
  MirrorSmallFixtureFiles(Fixtures(), tmp.path());
  // The mirror (no weights) passes like the original.
  EXPECT_EQ(Failures(RunTokenizerFixtureChecks(tmp.path())), std::vector<std::string>{});

  // 1. One recorded id of one string.
  auto cases = test::ReadJson(tmp.path() / "tokenizer" / "tokenizer_cases.json");
  cases["strings"][1]["ids_with_bos"][2] = 12345;
  WriteText(tmp.path() / "tokenizer" / "tokenizer_cases.json", cases.dump());
  // 2. The last prompt id of a text chat.
  BumpLastInt64(tmp.path() / "ixc2_vl" / "cases" / "text_chat" / "input_ids.npy", 1);
  // 3. A recorded prompt text and a recorded 1.0 segment flag.
  auto manifest = test::ReadJson(tmp.path() / "ixc2d5" / "cases" / "text_chat" / "manifest.json");
  manifest["values"]["prompt_text"] = "[UNUSED_TOKEN_146]user\nsomething else";
  WriteText(tmp.path() / "ixc2d5" / "cases" / "text_chat" / "manifest.json", manifest.dump());
  auto v1 = test::ReadJson(tmp.path() / "ixc1" / "cases" / "image_chat" / "manifest.json");
  v1["values"]["text_segments"][2]["add_special_tokens"] = true;
  WriteText(tmp.path() / "ixc1" / "cases" / "image_chat" / "manifest.json", v1.dump());
  // 4. The last text id after the image of an image chat.
  BumpLastInt64(tmp.path() / "ixc2_4khd" / "cases" / "image_chat" / "input_ids_with_image_slots.npy", -7);

  const auto results = RunTokenizerFixtureChecks(tmp.path());
  const auto failures = Failures(results);
  std::set<std::string> failed_names;
  for (const auto& r : results) {
    if (!r.passed) failed_names.insert(r.name);
  }
  const std::set<std::string> expected = {
      "tokenizer/tokenizer_cases.json: strings[1] \" Hello world\"",
      "ixc2_vl/cases/text_chat: input_ids",
      "ixc2d5/cases/text_chat: prompt_text",
      "ixc1/cases/image_chat: text_segments",
      "ixc2_4khd/cases/image_chat: input_ids_with_image_slots",
  };
  EXPECT_EQ(failed_names, expected) << ::testing::PrintToString(failures);
  for (const auto& f : failures) {
    if (f.starts_with("ixc2_vl/cases/text_chat")) {
      EXPECT_NE(f.find("first difference at index 152"), std::string::npos) << f;
    }
    if (f.starts_with("ixc1/cases/image_chat")) {
      EXPECT_NE(f.find("add_special_tokens=true"), std::string::npos) << f;
    }
  }
}

TEST(FixtureChecksTest, ReadsPromptsFromTheirPartsWhenNoQueryIsRecorded) {
  if (!RealFixturesPresent()) GTEST_SKIP() << "no fixtures at " << Fixtures();
  TempDir tmp;
  MirrorSmallFixtureFiles(Fixtures(), tmp.path());
  for (const char* model : {"ixc2_vl", "ixc2d5"}) {
    const fs::path manifest = tmp.path() / model / "cases" / "image_chat" / "manifest.json";
    auto m = test::ReadJson(manifest);
    m["values"].erase("query");
    m["values"].erase("meta_instruction");
    WriteText(manifest, m.dump());
  }
  auto results = RunTokenizerFixtureChecks(tmp.path());
  EXPECT_EQ(Failures(results), std::vector<std::string>{});
  const auto by_name = ByName(results);
  EXPECT_TRUE(by_name.count("ixc2_vl/cases/image_chat: text_parts"));
  EXPECT_TRUE(by_name.count("ixc2d5/cases/image_chat: input_ids_with_image_slots"));

  // A recorded part that the template cannot produce is caught.
  const fs::path manifest = tmp.path() / "ixc2_vl" / "cases" / "image_chat" / "manifest.json";
  auto m = test::ReadJson(manifest);
  m["values"]["text_parts"][1]["ids"][0] = 2;
  WriteText(manifest, m.dump());
  results = RunTokenizerFixtureChecks(tmp.path());
  const auto failed = ByName(results).at("ixc2_vl/cases/image_chat: text_parts");
  EXPECT_FALSE(failed.passed);
  EXPECT_NE(failed.message.find("segment 1"), std::string::npos) << failed.message;
}

TEST(FixtureChecksTest, VersionFromArchitectureTensorNamesOrFolderName) {
  TempDir tmp;
  auto write_index = [&](const std::string& folder, const std::vector<std::string>& names) {
    nlohmann::json map = nlohmann::json::object();
    for (const auto& n : names) map[n] = "model-00001-of-00001.safetensors";
    WriteText(tmp.path() / folder / "checkpoint" / "model.safetensors.index.json",
              nlohmann::json{{"weight_map", map}}.dump());
  };
  WriteText(tmp.path() / "a" / "model_info.json", R"j({"architecture": "InternLM-XComposer2-4KHD (tiny)"})j");
  EXPECT_EQ(*DetectModelFolderVersion(tmp.path() / "a"), ChatVersion::kIxc2_4khd);
  WriteText(tmp.path() / "b" / "model_info.json", R"j({"architecture": "InternLM-XComposer 1.0 (layout)"})j");
  EXPECT_EQ(*DetectModelFolderVersion(tmp.path() / "b"), ChatVersion::kIxc1);
  write_index("c", {"Qformer.bert.embeddings.LayerNorm.weight", "internlm_model.lm_head.weight"});
  EXPECT_EQ(*DetectModelFolderVersion(tmp.path() / "c"), ChatVersion::kIxc1);
  write_index("d", {"vit.vision_tower.x", "plora_glb_GN", "video_mem_proj.0.weight"});
  EXPECT_EQ(*DetectModelFolderVersion(tmp.path() / "d"), ChatVersion::kIxc2_5);
  write_index("e", {"vit.vision_tower.x", "plora_glb_GN"});
  WriteText(tmp.path() / "e" / "checkpoint" / "clip_vision_config.json", R"({"image_size": 336})");
  EXPECT_EQ(*DetectModelFolderVersion(tmp.path() / "e"), ChatVersion::kIxc2_4khd);
  write_index("f", {"vit.vision_tower.x", "model.tok_embeddings.weight"});
  EXPECT_EQ(*DetectModelFolderVersion(tmp.path() / "f"), ChatVersion::kIxc2Vl);
  fs::create_directories(tmp.path() / "ixc2d5");
  EXPECT_EQ(*DetectModelFolderVersion(tmp.path() / "ixc2d5"), ChatVersion::kIxc2_5);
  fs::create_directories(tmp.path() / "mystery");
  auto unknown = DetectModelFolderVersion(tmp.path() / "mystery");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("mystery"), std::string::npos);
}

TEST(FixtureChecksTest, MissingOrEmptyRootIsAFailedCheck) {
  auto missing = RunTokenizerFixtureChecks("/nonexistent/fixtures");
  ASSERT_EQ(missing.size(), 1u);
  EXPECT_FALSE(missing[0].passed);
  TempDir tmp;
  auto empty = RunTokenizerFixtureChecks(tmp.path());
  ASSERT_EQ(empty.size(), 1u);
  EXPECT_FALSE(empty[0].passed);
  EXPECT_NE(empty[0].message.find("no tokenizer_cases.json"), std::string::npos);
}

TEST(FixtureChecksTest, TokenizerPathPrefersTheModelsOwn) {
  TempDir tmp;
  WriteText(tmp.path() / "m" / "tokenizer" / "tokenizer.model", "x");
  EXPECT_EQ(ModelFolderTokenizerPath(tmp.path(), tmp.path() / "m"), tmp.path() / "m" / "tokenizer" / "tokenizer.model");
  EXPECT_EQ(ModelFolderTokenizerPath(tmp.path(), tmp.path() / "n"), tmp.path() / "tokenizer" / "tokenizer.model");
}

}  // namespace
}  // namespace xcpipe::tokenizer
