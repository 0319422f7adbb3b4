#include "xcpipe/tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <fstream>

#include "test_fixtures.h"

namespace xcpipe::tokenizer {
namespace {

using test::Fixtures;
using test::ReadJson;
using test::ToI64;

std::vector<int64_t> JsonIds(const nlohmann::json& v) { return v.get<std::vector<int64_t>>(); }

// Every recorded string of one tokenizer_cases.json: ids with and without BOS, tokens, raw
// SentencePiece ids, and decoding of the recorded ids with and without special tokens.
void CheckAllStrings(const Tokenizer& tok, const nlohmann::json& doc, const char* list_key, int* checked) {
  ASSERT_TRUE(doc.contains(list_key));
  for (const auto& entry : doc[list_key]) {
    const std::string text = entry["text"].get<std::string>();
    SCOPED_TRACE("text: \"" + text + "\"");
    auto no_bos = tok.Encode(text, false);
    auto with_bos = tok.Encode(text, true);
    auto raw = tok.EncodeRaw(text);
    ASSERT_TRUE(no_bos.ok() && with_bos.ok() && raw.ok());
    for (const char* key : {"ids", "ids_no_bos"}) {
      if (entry.contains(key)) {
        EXPECT_EQ(ToI64(*no_bos), JsonIds(entry[key])) << key;
      }
    }
    if (entry.contains("ids_with_bos")) {
      EXPECT_EQ(ToI64(*with_bos), JsonIds(entry["ids_with_bos"]));
    }
    for (const char* key : {"sentencepiece_raw_ids", "raw_sentencepiece_ids"}) {
      if (entry.contains(key)) {
        EXPECT_EQ(ToI64(*raw), JsonIds(entry[key])) << key;
      }
    }
    if (entry.contains("tokens")) {
      auto tokens = tok.Tokenize(text);
      ASSERT_TRUE(tokens.ok());
      EXPECT_EQ(*tokens, entry["tokens"].get<std::vector<std::string>>());
    }
    const auto recorded = entry.contains("ids") ? JsonIds(entry["ids"]) : JsonIds(entry["ids_no_bos"]);
    const std::vector<TokenId> ids(recorded.begin(), recorded.end());
    if (entry.contains("decoded")) {
      auto decoded = tok.Decode(ids, false);
      ASSERT_TRUE(decoded.ok());
      EXPECT_EQ(*decoded, entry["decoded"].get<std::string>());
    }
    if (entry.contains("decoded_skip_special")) {
      auto decoded = tok.Decode(ids, true);
      ASSERT_TRUE(decoded.ok());
      EXPECT_EQ(*decoded, entry["decoded_skip_special"].get<std::string>());
    }
    ++*checked;
  }
}

TEST(TokenizerTest, InternLm2MatchesEveryRecordedString) {
  const Tokenizer* tok = test::InternLm2Tokenizer();
  XCPIPE_REQUIRE(tok, "tokenizer/tokenizer.model");
  const auto doc = ReadJson(Fixtures() / "tokenizer" / "tokenizer_cases.json");
  int checked = 0;
  CheckAllStrings(*tok, doc, "strings", &checked);
  EXPECT_EQ(checked, static_cast<int>(doc["strings"].size()));
  EXPECT_GT(checked, 0);

  const auto& special = doc["special_ids"];
  EXPECT_EQ(tok->vocab_size(), special["vocab_size"].get<int>());
  for (const auto& [piece, id] : special.items()) {
    if (piece == "vocab_size") continue;
    // HF convert_tokens_to_ids answers unk (0) for a piece the model lacks (<ImageHere>).
    EXPECT_EQ(tok->PieceToId(piece).value_or(tok->unk_id()), id.get<int>()) << piece;
  }
  EXPECT_FALSE(tok->PieceToId("<ImageHere>").has_value());
}

TEST(TokenizerTest, Ixc1MatchesEveryRecordedString) {
  const Tokenizer* tok = test::Ixc1Tokenizer();
  XCPIPE_REQUIRE(tok, "ixc1/tokenizer/tokenizer.model");
  const auto doc = ReadJson(Fixtures() / "ixc1" / "tokenizer" / "tokenizer_cases.json");
  int checked = 0;
  CheckAllStrings(*tok, doc, "cases", &checked);
  EXPECT_GT(checked, 0);
  EXPECT_EQ(tok->vocab_size(), doc["vocab_size"].get<int>());
  EXPECT_EQ(tok->bos_id(), doc["bos"].get<int>());
  EXPECT_EQ(tok->eos_id(), doc["eos"].get<int>());
  for (const char* key : {"eoh", "eoa"}) {
    EXPECT_EQ(tok->PieceToId(doc[key]["piece"].get<std::string>()), doc[key]["id"].get<int>()) << key;
  }
}

TEST(TokenizerTest, SpecialPiecesStripNeighbouringWhitespaceLikeHf) {
  const Tokenizer* tok = test::InternLm2Tokenizer();
  XCPIPE_REQUIRE(tok, "tokenizer/tokenizer.model");
  // "a </s>\n b" encodes as "a" + </s> + "b": the whitespace on both sides of a special is gone.
  auto stripped = tok->Encode("a </s>\n b", false);
  auto a = tok->Encode("a", false);
  auto b = tok->Encode("b", false);
  ASSERT_TRUE(stripped.ok() && a.ok() && b.ok());
  std::vector<TokenId> expected = *a;
  expected.push_back(tok->eos_id());
  expected.insert(expected.end(), b->begin(), b->end());
  EXPECT_EQ(*stripped, expected);
  // Whitespace that touches no special piece is kept.
  auto spaced = tok->Encode("a  b", false);
  ASSERT_TRUE(spaced.ok());
  EXPECT_GT(spaced->size(), 2u);
  // Only whitespace between two specials disappears entirely.
  auto between = tok->Encode("<s> \t </s>", false);
  ASSERT_TRUE(between.ok());
  EXPECT_EQ(*between, (std::vector<TokenId>{tok->bos_id(), tok->eos_id()}));
  // U+200B is not whitespace to Python, so it stays.
  auto zw = tok->Encode("<s>\u200b", false);
  ASSERT_TRUE(zw.ok());
  EXPECT_EQ(zw->size(), 2u);
}

TEST(TokenizerTest, DecodeFollowsHfSpacingAndCleanup) {
  const Tokenizer* tok = test::InternLm2Tokenizer();
  XCPIPE_REQUIRE(tok, "tokenizer/tokenizer.model");
  const std::vector<TokenId> eos_eos = {tok->eos_id(), tok->eos_id()};
  EXPECT_EQ(*tok->Decode(eos_eos, false), " </s></s>");  // one space before a run of specials
  EXPECT_EQ(*tok->Decode(eos_eos, true), "");
  EXPECT_EQ(*tok->Decode(std::vector<TokenId>{}, false), "");
  // transformers' clean_up_tokenization always runs in the official convert_tokens_to_string.
  auto ids = tok->Encode("Hello , world ! Is it ? It 's done .", false);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*tok->Decode(*ids, true), "Hello, world! Is it? It's done.");
  // Text around a special: the space goes before the run that precedes it.
  auto mixed = tok->Encode("ab</s>cd", false);
  ASSERT_TRUE(mixed.ok());
  EXPECT_EQ(*tok->Decode(*mixed, false), " ab</s>cd");
  EXPECT_EQ(*tok->Decode(*mixed, true), "abcd");
}

TEST(TokenizerTest, RefusesBadInput) {
  const Tokenizer* tok = test::InternLm2Tokenizer();
  XCPIPE_REQUIRE(tok, "tokenizer/tokenizer.model");
  auto bad = tok->Encode("abc\xFF", true);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("byte 3"), std::string::npos) << bad.status().message();
  EXPECT_FALSE(tok->EncodeRaw("\xC0\x80").ok());
  EXPECT_FALSE(tok->Tokenize("\xE4").ok());

  auto out_of_range = tok->Decode(std::vector<TokenId>{1, tok->vocab_size()}, false);
  ASSERT_FALSE(out_of_range.ok());
  EXPECT_NE(out_of_range.status().message().find("position 1"), std::string::npos);
  EXPECT_FALSE(tok->Decode(std::vector<TokenId>{-1}, true).ok());
  EXPECT_FALSE(tok->IdToPiece(-5).ok());
  EXPECT_EQ(*tok->IdToPiece(tok->bos_id()), "<s>");
  EXPECT_FALSE(tok->PieceToId("no such piece at all").has_value());
  EXPECT_EQ(tok->PieceToId("<unk>"), tok->unk_id());
}

TEST(TokenizerTest, LoadErrorsNameTheSource) {
  auto missing = Tokenizer::LoadFromFile("/nonexistent/tokenizer.model");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/tokenizer.model"), std::string::npos);

  auto garbage = Tokenizer::LoadFromBytes("definitely not a protobuf", "garbage.model");
  ASSERT_FALSE(garbage.ok());
  EXPECT_EQ(garbage.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(garbage.status().message().find("garbage.model"), std::string::npos);

  auto empty = Tokenizer::LoadFromBytes("", "empty.model");
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.status().message().find("empty"), std::string::npos);
}

}  // namespace
}  // namespace xcpipe::tokenizer
