#include "xcpipe/tokenizer/train.h"

#include <gtest/gtest.h>

#include "xcpipe/tokenizer/tokenizer.h"

namespace xcpipe::tokenizer {
namespace {

std::unique_ptr<Tokenizer> Load(const std::string& bytes) {
  auto tok = Tokenizer::LoadFromBytes(bytes, "trained");
  EXPECT_TRUE(tok.ok()) << tok.status().ToString();
  return tok.ok() ? std::move(tok).value() : nullptr;
}

TEST(TrainTokenizerTest, SameOptionsGiveTheSameBytes) {
  TrainTokenizerOptions options;
  options.vocab_size = 600;
  options.seed = 7;
  auto a = TrainTokenizer(options);
  auto b = TrainTokenizer(options);
  ASSERT_TRUE(a.ok() && b.ok()) << a.status().ToString();
  EXPECT_EQ(*a, *b);
  options.seed = 8;
  auto c = TrainTokenizer(options);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(*a, *c);  // the synthetic part of the corpus follows the seed
}

TEST(TrainTokenizerTest, ShapedLikeTheReleasedModels) {
  for (const auto version : {ChatVersion::kIxc2Vl, ChatVersion::kIxc1}) {
    SCOPED_TRACE(std::string(ChatVersionName(version)));
    TrainTokenizerOptions options;
    options.version = version;
    options.vocab_size = 1024;
    auto model = TrainTokenizer(options);
    ASSERT_TRUE(model.ok()) << model.status().ToString();
    auto tok = Load(*model);
    ASSERT_TRUE(tok);
    EXPECT_EQ(tok->vocab_size(), 1024);
    EXPECT_EQ(tok->unk_id(), 0);
    EXPECT_EQ(tok->bos_id(), 1);
    EXPECT_EQ(tok->eos_id(), 2);
    EXPECT_EQ(*tok->IdToPiece(1), "<s>");
    // The template pieces are single tokens.
    const auto pieces = version == ChatVersion::kIxc1
                            ? std::vector<std::string_view>{kIxc1EndOfHuman, kIxc1EndOfAssistant}
                            : std::vector<std::string_view>{kIxc2TurnStart, kIxc2TurnEnd};
    for (auto piece : pieces) {
      auto ids = tok->Encode(std::string("x") + std::string(piece) + "y", false);
      ASSERT_TRUE(ids.ok());
      const auto id = tok->PieceToId(piece);
      ASSERT_TRUE(id);
      EXPECT_NE(std::find(ids->begin(), ids->end(), *id), ids->end()) << piece;
    }
    // No normalisation, no dummy prefix, byte fallback: any UTF-8 round-trips exactly.
    const std::string text = "  Leading spaces,\ttabs\nand 𝄞 rare 龘 characters  ";
    auto ids = tok->Encode(text, false);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(*tok->Decode(*ids, true), text);
    EXPECT_EQ(*tok->Decode(*tok->Encode("<s>Hello", true), true), "Hello");
  }
}

TEST(TrainTokenizerTest, ExtraSentencesJoinTheCorpus) {
  const std::string word = "supercalifragilisticexpialidocious";
  auto pieces_of_word = [&](const TrainTokenizerOptions& options) -> size_t {
    auto model = TrainTokenizer(options);
    EXPECT_TRUE(model.ok()) << model.status().ToString();
    auto tok = model.ok() ? Load(*model) : nullptr;
    if (!tok) return 0;
    return tok->Encode(word, false).value().size();
  };
  TrainTokenizerOptions plain;
  plain.vocab_size = 600;
  TrainTokenizerOptions with_word = plain;
  with_word.extra_sentences.assign(500, word);
  const size_t before = pieces_of_word(plain);
  const size_t after = pieces_of_word(with_word);
  EXPECT_GT(before, 4u);
  EXPECT_LT(after, before);  // the extra sentences taught it the word
}

TEST(TrainTokenizerTest, RefusesBadOptions) {
  TrainTokenizerOptions options;
  options.vocab_size = 10;
  auto small = TrainTokenizer(options);
  ASSERT_FALSE(small.ok());
  EXPECT_EQ(small.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(small.status().message().find("outside the supported range"), std::string::npos);
  options.vocab_size = 1 << 20;
  EXPECT_FALSE(TrainTokenizer(options).ok());
  options.vocab_size = 600;
  options.extra_sentences = {"fine", "bad \xFF"};
  auto bad = TrainTokenizer(options);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("extra training sentence 1"), std::string::npos);
}

}  // namespace
}  // namespace xcpipe::tokenizer
