#include "xcpipe/tokenizer/chat_template.h"

#include <gtest/gtest.h>

#include <memory>

#include "test_fixtures.h"
#include "xcpipe/tokenizer/train.h"

namespace xcpipe::tokenizer {
namespace {

namespace fs = std::filesystem;
using test::Fixtures;
using test::ReadIdsRow;
using test::ReadJson;
using test::ToI64;

// ---------------------------------------------------------------------------------------------
// Against the official prompts recorded in the case manifests.

std::vector<int64_t> SlotRowsFromNpy(const std::vector<int64_t>& row) {
  // One image per recorded case: all -1 entries belong to it.
  return {static_cast<int64_t>(std::count(row.begin(), row.end(), -1))};
}

ChatRequest RequestFromValues(const nlohmann::json& values) {
  ChatRequest req;
  req.query = values.value("query", "");
  if (values.contains("meta_instruction")) req.meta_instruction = values["meta_instruction"].get<std::string>();
  return req;
}

void ExpectTextSegmentsMatch(const ChatPrompt& built, const nlohmann::json& recorded, bool images_listed) {
  std::vector<const TextSegment*> texts;
  for (const auto& s : built.segments) {
    if (const auto* t = std::get_if<TextSegment>(&s)) texts.push_back(t);
  }
  size_t t = 0;
  size_t images = 0;
  for (const auto& item : recorded) {
    const auto& seg = item.contains("retokenized_response") ? item["retokenized_response"] : item;
    if (seg.contains("image_slots")) {
      ++images;
      continue;
    }
    ASSERT_LT(t, texts.size());
    SCOPED_TRACE("segment text: " + seg["text"].get<std::string>());
    EXPECT_EQ(texts[t]->text, seg["text"].get<std::string>());
    if (seg.contains("add_special_tokens")) {
      EXPECT_EQ(texts[t]->add_bos, seg["add_special_tokens"].get<bool>());
    }
    EXPECT_EQ(ToI64(texts[t]->ids), seg["ids"].get<std::vector<int64_t>>());
    ++t;
  }
  EXPECT_EQ(t, texts.size());
  if (images_listed) {
    EXPECT_EQ(static_cast<int>(images), built.num_images());
  }
}

class Ixc2CaseTest : public ::testing::TestWithParam<std::pair<std::string, ChatVersion>> {};

TEST_P(Ixc2CaseTest, TextChatIdsAndPromptText) {
  const Tokenizer* tok = test::InternLm2Tokenizer();
  XCPIPE_REQUIRE(tok, "tokenizer/tokenizer.model");
  const auto [folder, version] = GetParam();
  const fs::path dir = Fixtures() / folder / "cases" / "text_chat";
  if (!fs::exists(dir)) GTEST_SKIP() << dir << " absent";
  const auto values = ReadJson(dir / "manifest.json")["values"];
  auto built = BuildChatPrompt(*tok, version, RequestFromValues(values));
  ASSERT_TRUE(built.ok()) << built.status().ToString();
  EXPECT_EQ(built->num_images(), 0);
  EXPECT_EQ(*built->ExpandedIds({}), ReadIdsRow(dir / "input_ids.npy"));
  if (values.contains("prompt_text")) {
    EXPECT_EQ(built->prompt_text, values["prompt_text"].get<std::string>());
  }
  if (values.contains("build_inputs_ids_if_image_is_None")) {
    ChatRequest req = RequestFromValues(values);
    req.text_only_path = TextOnlyPath::kBuildInputs;
    auto variant = BuildChatPrompt(*tok, version, req);
    ASSERT_TRUE(variant.ok());
    EXPECT_EQ(*variant->ExpandedIds({}), values["build_inputs_ids_if_image_is_None"].get<std::vector<int64_t>>());
  }
}

TEST_P(Ixc2CaseTest, ImageChatPartsAndSlots) {
  const Tokenizer* tok = test::InternLm2Tokenizer();
  XCPIPE_REQUIRE(tok, "tokenizer/tokenizer.model");
  const auto [folder, version] = GetParam();
  const fs::path dir = Fixtures() / folder / "cases" / "image_chat";
  if (!fs::exists(dir)) GTEST_SKIP() << dir << " absent";
  const auto values = ReadJson(dir / "manifest.json")["values"];
  ChatRequest req = RequestFromValues(values);
  req.num_images = 1;
  auto built = BuildChatPrompt(*tok, version, req);
  ASSERT_TRUE(built.ok()) << built.status().ToString();
  EXPECT_EQ(built->num_images(), 1);
  ExpectTextSegmentsMatch(*built, values["text_parts"], false);
  const auto row = ReadIdsRow(dir / "input_ids_with_image_slots.npy");
  EXPECT_EQ(*built->ExpandedIds(SlotRowsFromNpy(row)), row);
  const auto mask = ReadIdsRow(dir / "im_mask.npy");
  ASSERT_EQ(mask.size(), row.size());
  for (size_t i = 0; i < row.size(); ++i) {
    EXPECT_EQ(mask[i], row[i] == -1 ? 1 : 0) << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Versions, Ixc2CaseTest,
                         ::testing::Values(std::pair{std::string("ixc2_vl"), ChatVersion::kIxc2Vl},
                                           std::pair{std::string("ixc2_4khd"), ChatVersion::kIxc2_4khd},
                                           std::pair{std::string("ixc2d5"), ChatVersion::kIxc2_5}),
                         [](const auto& info) { return info.param.first; });

TEST(ChatTemplateTest, FourKhdLeftPaddedBatch) {
  const Tokenizer* tok = test::InternLm2Tokenizer();
  XCPIPE_REQUIRE(tok, "tokenizer/tokenizer.model");
  const fs::path dir = Fixtures() / "ixc2_4khd" / "cases" / "batch2_text_leftpad";
  if (!fs::exists(dir)) GTEST_SKIP() << dir << " absent";
  const auto values = ReadJson(dir / "manifest.json")["values"];
  const auto queries = values["queries"].get<std::vector<std::string>>();
  const auto pads = values["left_pad_lengths"].get<std::vector<int64_t>>();
  for (size_t b = 0; b < queries.size(); ++b) {
    ChatRequest req;
    req.query = queries[b];
    auto built = BuildChatPrompt(*tok, ChatVersion::kIxc2_4khd, req);
    ASSERT_TRUE(built.ok());
    std::vector<int64_t> expected(pads[b], tok->eos_id());
    const auto ids = *built->ExpandedIds({});
    expected.insert(expected.end(), ids.begin(), ids.end());
    EXPECT_EQ(ReadIdsRow(dir / "input_ids.npy", b), expected) << "row " << b;
  }
}

TEST(ChatTemplateTest, Ixc1FirstTurnTextAndImage) {
  const Tokenizer* tok = test::Ixc1Tokenizer();
  XCPIPE_REQUIRE(tok, "ixc1/tokenizer/tokenizer.model");
  for (const char* name : {"text_chat", "image_chat"}) {
    SCOPED_TRACE(name);
    const fs::path dir = Fixtures() / "ixc1" / "cases" / name;
    const auto values = ReadJson(dir / "manifest.json")["values"];
    ChatRequest req = RequestFromValues(values);
    std::vector<int64_t> rows;
    for (const auto& s : values["text_segments"]) {
      if (s.contains("image_slots")) rows.push_back(s["image_slots"].get<int64_t>());
    }
    req.num_images = static_cast<int>(rows.size());
    auto built = BuildChatPrompt(*tok, ChatVersion::kIxc1, req);
    ASSERT_TRUE(built.ok()) << built.status().ToString();
    ExpectTextSegmentsMatch(*built, values["text_segments"], true);
    if (fs::exists(dir / "input_ids.npy")) {
      EXPECT_EQ(*built->ExpandedIds(rows), ReadIdsRow(dir / "input_ids.npy"));
    }
    if (fs::exists(dir / "input_ids_with_image_slots.npy")) {
      const auto ids = *built->ExpandedIds(rows);
      EXPECT_EQ(ids, ReadIdsRow(dir / "input_ids_with_image_slots.npy"));
      const auto range = values["image_slot_range"].get<std::vector<int64_t>>();
      EXPECT_EQ(std::find(ids.begin(), ids.end(), -1) - ids.begin(), range[0]);
      EXPECT_EQ(static_cast<int64_t>(ids.size() - (std::find(ids.rbegin(), ids.rend(), -1) - ids.rbegin())), range[1]);
    }
    if (values.contains("prompt_text")) {
      EXPECT_EQ(built->prompt_text, values["prompt_text"].get<std::string>());
    }
  }
}

TEST(ChatTemplateTest, Ixc1SecondTurnWithHistory) {
  const Tokenizer* tok = test::Ixc1Tokenizer();
  XCPIPE_REQUIRE(tok, "ixc1/tokenizer/tokenizer.model");
  const fs::path dir = Fixtures() / "ixc1" / "cases" / "history_chat";
  const auto values = ReadJson(dir / "manifest.json")["values"];
  ChatRequest req;
  ChatTurn turn{values["turn1_query"].get<std::string>(), values["turn1_response_text"].get<std::string>(), false};
  std::vector<int64_t> rows;
  for (const auto& s : values["history_segments"]) {
    if (s.contains("image_slots")) {
      turn.user_had_image = true;
      rows.push_back(s["image_slots"].get<int64_t>());
    }
  }
  req.history.push_back(turn);
  req.query = values["turn2_query"].get<std::string>();
  req.num_images = static_cast<int>(rows.size());
  // The meta instruction is not part of a later turn, whatever the caller passes.
  req.meta_instruction = "ignored with history";
  auto built = BuildChatPrompt(*tok, ChatVersion::kIxc1, req);
  ASSERT_TRUE(built.ok()) << built.status().ToString();
  nlohmann::json all = values["history_segments"];
  for (const auto& s : values["turn2_segments"]) all.push_back(s);
  ExpectTextSegmentsMatch(*built, all, true);
  EXPECT_EQ(*built->ExpandedIds(rows), ReadIdsRow(dir / "input_ids_with_image_slots.npy"));

  // Turn 1 itself, as recorded.
  ChatRequest first;
  first.query = values["turn1_query"].get<std::string>();
  first.num_images = 1;
  auto turn1 = BuildChatPrompt(*tok, ChatVersion::kIxc1, first);
  ASSERT_TRUE(turn1.ok());
  ExpectTextSegmentsMatch(*turn1, values["turn1_prompt_segments"], true);
}

TEST(ChatTemplateTest, StopIdsAndResponsesMatchTheRecordedOnes) {
  const Tokenizer* v2 = test::InternLm2Tokenizer();
  const Tokenizer* v1 = test::Ixc1Tokenizer();
  XCPIPE_REQUIRE(v2, "tokenizer/tokenizer.model");
  XCPIPE_REQUIRE(v1, "ixc1/tokenizer/tokenizer.model");
  const auto vl_info = ReadJson(Fixtures() / "ixc2_vl" / "model_info.json");
  EXPECT_EQ(ToI64(*StopTokenIds(*v2, ChatVersion::kIxc2Vl)), vl_info["eos_token_ids"].get<std::vector<int64_t>>());
  const auto v1_info = ReadJson(Fixtures() / "ixc1" / "model_info.json");
  const auto v1_stops = ToI64(*StopTokenIds(*v1, ChatVersion::kIxc1));
  for (int64_t id : v1_info["stop_token_ids"].get<std::vector<int64_t>>()) {
    EXPECT_NE(std::find(v1_stops.begin(), v1_stops.end(), id), v1_stops.end()) << id;
  }
  int compared = 0;
  for (const auto& [folder, version] :
       {std::pair{"ixc2_vl", ChatVersion::kIxc2Vl}, std::pair{"ixc2_4khd", ChatVersion::kIxc2_4khd},
        std::pair{"ixc2d5", ChatVersion::kIxc2_5}, std::pair{"ixc1", ChatVersion::kIxc1}}) {
    const Tokenizer& tok = version == ChatVersion::kIxc1 ? *v1 : *v2;
    for (const auto& entry : fs::directory_iterator(Fixtures() / folder / "cases")) {
      const auto values = ReadJson(entry.path() / "manifest.json")["values"];
      if (!values.contains("generated_text") || !fs::exists(entry.path() / "generated_ids.npy")) continue;
      const auto row = ReadIdsRow(entry.path() / "generated_ids.npy");
      auto text = PostprocessResponse(tok, version, std::vector<TokenId>(row.begin(), row.end()));
      ASSERT_TRUE(text.ok());
      EXPECT_EQ(*text, values["generated_text"].get<std::string>()) << entry.path();
      ++compared;
    }
  }
  EXPECT_GE(compared, 4);
}

// ---------------------------------------------------------------------------------------------
// Behaviour, on small tokenizers trained here (no fixtures needed).

class TrainedTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    for (auto [version, slot] : {std::pair{ChatVersion::kIxc2Vl, &v2_}, std::pair{ChatVersion::kIxc1, &v1_}}) {
      TrainTokenizerOptions options;
      options.version = version;
      options.vocab_size = 700;
      auto model = TrainTokenizer(options);
      ASSERT_TRUE(model.ok()) << model.status().ToString();
      auto tok = Tokenizer::LoadFromBytes(*model);
      ASSERT_TRUE(tok.ok());
      *slot = std::move(tok).value().release();
    }
  }
  static void TearDownTestSuite() {
    delete v2_;
    delete v1_;
  }
  static Tokenizer* v2_;
  static Tokenizer* v1_;
};
Tokenizer* TrainedTokenizerTest::v2_ = nullptr;
Tokenizer* TrainedTokenizerTest::v1_ = nullptr;

std::vector<std::string> Kinds(const ChatPrompt& p) {
  std::vector<std::string> out;
  for (const auto& s : p.segments) {
    if (const auto* t = std::get_if<TextSegment>(&s)) {
      out.push_back(t->add_bos ? "text+bos" : "text");
    } else {
      out.push_back("image" + std::to_string(std::get<ImageSlot>(s).index));
    }
  }
  return out;
}

TEST_F(TrainedTokenizerTest, TemplatePiecesUseTheTrainedIds) {
  auto ids = LookupChatSpecialIds(*v2_, ChatVersion::kIxc2Vl);
  ASSERT_TRUE(ids.ok()) << ids.status().ToString();
  EXPECT_NE(ids->turn_start, 92543);
  EXPECT_LT(ids->turn_start, v2_->vocab_size());
  ChatRequest req;
  req.query = "Hi";
  auto built = BuildChatPrompt(*v2_, ChatVersion::kIxc2Vl, req);
  ASSERT_TRUE(built.ok());
  const auto& text = std::get<TextSegment>(built->segments[0]);
  ASSERT_GE(text.ids.size(), 3u);
  // build_inputs: BOS, literal <s>, then the system turn opener.
  EXPECT_EQ(text.ids[0], ids->bos);
  EXPECT_EQ(text.ids[1], ids->bos);
  EXPECT_EQ(text.ids[2], ids->turn_start);
  EXPECT_EQ(*StopTokenIds(*v2_, ChatVersion::kIxc2Vl), (std::vector<TokenId>{ids->eos, ids->turn_end}));

  auto v1_ids = LookupChatSpecialIds(*v1_, ChatVersion::kIxc1);
  ASSERT_TRUE(v1_ids.ok());
  EXPECT_EQ(*StopTokenIds(*v1_, ChatVersion::kIxc1),
            (std::vector<TokenId>{v1_ids->turn_start, v1_ids->turn_end, v1_ids->eos}));
  // A 2.x tokenizer lacks the 1.0 pieces: the lookup names what is missing.
  auto missing = LookupChatSpecialIds(*v2_, ChatVersion::kIxc1);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("<TOKENS_UNUSED_0>"), std::string::npos);
}

TEST_F(TrainedTokenizerTest, SegmentLayoutPerVersion) {
  ChatRequest two;
  two.query = "<ImageHere><ImageHere>compare";
  two.num_images = 2;
  auto vl = BuildChatPrompt(*v2_, ChatVersion::kIxc2Vl, two);
  ASSERT_TRUE(vl.ok()) << vl.status().ToString();
  EXPECT_EQ(Kinds(*vl), (std::vector<std::string>{"text+bos", "image0", "image1", "text+bos"}));
  auto v25 = BuildChatPrompt(*v2_, ChatVersion::kIxc2_5, two);
  ASSERT_TRUE(v25.ok());
  EXPECT_EQ(Kinds(*v25), (std::vector<std::string>{"text+bos", "image0", "image1", "text"}));

  ChatRequest unplaced;
  unplaced.query = "describe";
  unplaced.num_images = 1;
  auto first = BuildChatPrompt(*v2_, ChatVersion::kIxc2_5, unplaced);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(Kinds(*first), (std::vector<std::string>{"text+bos", "image0", "text"}));
  EXPECT_EQ(std::get<TextSegment>(first->segments[0]).ids, std::vector<TokenId>{v2_->bos_id()});
  EXPECT_TRUE(first->prompt_text.starts_with("<ImageHere>"));
  // 2.5 text-only default: one BOS, no literal <s>, no system turn.
  ChatRequest text;
  text.query = "hello";
  auto t25 = BuildChatPrompt(*v2_, ChatVersion::kIxc2_5, text);
  ASSERT_TRUE(t25.ok());
  EXPECT_EQ(Kinds(*t25), (std::vector<std::string>{"text+bos"}));
  EXPECT_EQ(t25->prompt_text, "[UNUSED_TOKEN_146]user\nhello[UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]assistant\n");

  ChatRequest v1req;
  v1req.query = "<ImageHere>what is it?";
  v1req.num_images = 1;
  v1req.meta_instruction = "";
  auto v1 = BuildChatPrompt(*v1_, ChatVersion::kIxc1, v1req);
  ASSERT_TRUE(v1.ok()) << v1.status().ToString();
  EXPECT_EQ(Kinds(*v1), (std::vector<std::string>{"text+bos", "image0", "text", "text"}));
  EXPECT_EQ(std::get<TextSegment>(v1->segments[0]).text, " <|User|>:");
  EXPECT_EQ(std::get<TextSegment>(v1->segments[2]).text, "what is it?");  // the placeholder is dropped
  EXPECT_EQ(v1->prompt_text, " <|User|>:<ImageHere>what is it?\n<TOKENS_UNUSED_0> <|Bot|>:");
}

TEST_F(TrainedTokenizerTest, RefusesRequestsThatDoNotFitTheVersion) {
  ChatRequest req;
  req.query = "no placeholder";
  req.num_images = 1;
  auto vl = BuildChatPrompt(*v2_, ChatVersion::kIxc2Vl, req);
  ASSERT_FALSE(vl.ok());
  EXPECT_EQ(vl.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(vl.status().message().find("0 <ImageHere> placeholders but 1 image was given"), std::string::npos)
      << vl.status().message();

  req.query = "<ImageHere> and <ImageHere>";
  auto extra = BuildChatPrompt(*v2_, ChatVersion::kIxc2_4khd, req);
  ASSERT_FALSE(extra.ok());
  EXPECT_NE(extra.status().message().find("2 <ImageHere> placeholders"), std::string::npos);

  req.num_images = 0;
  auto none = BuildChatPrompt(*v2_, ChatVersion::kIxc2Vl, req);
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("no image was given"), std::string::npos);

  ChatRequest v1req;
  v1req.query = "two images";
  v1req.num_images = 2;
  auto two = BuildChatPrompt(*v1_, ChatVersion::kIxc1, v1req);
  ASSERT_FALSE(two.ok());
  EXPECT_NE(two.status().message().find("at most one for the query"), std::string::npos);
  v1req.query = "look <ImageHere> here";
  v1req.num_images = 1;
  auto middle = BuildChatPrompt(*v1_, ChatVersion::kIxc1, v1req);
  ASSERT_FALSE(middle.ok());
  EXPECT_NE(middle.status().message().find("may only open the text"), std::string::npos);

  ChatRequest bad_utf8;
  bad_utf8.query = "bad \xFF";
  auto utf = BuildChatPrompt(*v2_, ChatVersion::kIxc2Vl, bad_utf8);
  ASSERT_FALSE(utf.ok());
  EXPECT_NE(utf.status().message().find("UTF-8"), std::string::npos);

  ChatRequest one_image;
  one_image.query = "x";
  one_image.num_images = 1;
  auto built = BuildChatPrompt(*v2_, ChatVersion::kIxc2_5, one_image);
  ASSERT_TRUE(built.ok());
  EXPECT_FALSE(built->ExpandedIds({}).ok());
  EXPECT_EQ(built->ExpandedIds(std::vector<int64_t>{3})->size(), built->num_text_tokens() + 3);
}

TEST_F(TrainedTokenizerTest, HistoryAndSystemText) {
  ChatRequest req;
  req.query = "and now?";
  req.history.push_back({"first question", "first answer", false});
  req.meta_instruction = "Be brief.";
  auto built = BuildChatPrompt(*v2_, ChatVersion::kIxc2Vl, req);
  ASSERT_TRUE(built.ok());
  EXPECT_EQ(built->prompt_text,
            "<s>[UNUSED_TOKEN_146]system\nBe brief.[UNUSED_TOKEN_145]\n"
            "[UNUSED_TOKEN_146]user\nfirst question[UNUSED_TOKEN_145]\n"
            "[UNUSED_TOKEN_146]assistant\nfirst answer[UNUSED_TOKEN_145]\n"
            "[UNUSED_TOKEN_146]user\nand now?[UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]assistant\n");
  // The default system text of VL/4KHD; none for 2.5.
  EXPECT_EQ(DefaultMetaInstruction(ChatVersion::kIxc2_4khd), kIxc2MetaInstruction);
  EXPECT_TRUE(DefaultMetaInstruction(ChatVersion::kIxc2_5).empty());
  EXPECT_EQ(DefaultMetaInstruction(ChatVersion::kIxc1), kIxc1MetaInstruction);
}

TEST_F(TrainedTokenizerTest, PostprocessCutsAtTheTurnEnd) {
  auto ids = v2_->Encode("The answer.[UNUSED_TOKEN_145]\nleftover", false);
  ASSERT_TRUE(ids.ok());
  ids->push_back(v2_->eos_id());
  EXPECT_EQ(*PostprocessResponse(*v2_, ChatVersion::kIxc2Vl, *ids), "The answer.");
  auto v1_ids = v1_->Encode("Sure.<TOKENS_UNUSED_1>", false);
  ASSERT_TRUE(v1_ids.ok());
  EXPECT_EQ(*PostprocessResponse(*v1_, ChatVersion::kIxc1, *v1_ids), "Sure.");
  EXPECT_FALSE(PostprocessResponse(*v2_, ChatVersion::kIxc2Vl, std::vector<TokenId>{-3}).ok());
}

TEST(ChatVersionTest, NamesRoundTrip) {
  for (auto v : {ChatVersion::kIxc1, ChatVersion::kIxc2Vl, ChatVersion::kIxc2_4khd, ChatVersion::kIxc2_5}) {
    EXPECT_EQ(ParseChatVersion(ChatVersionName(v)), v);
  }
  EXPECT_EQ(ParseChatVersion("ixc2d5"), ChatVersion::kIxc2_5);
  EXPECT_EQ(ParseChatVersion("ixc2_vl"), ChatVersion::kIxc2Vl);
  EXPECT_FALSE(ParseChatVersion("ixc3"));
  EXPECT_EQ(CountImagePlaceholders("<ImageHere><ImageHere> <ImageHere"), 2);
}

}  // namespace
}  // namespace xcpipe::tokenizer
