// Replays the prompt fuzzer's corpus (common/tokenizer/fuzz/corpus) as a regression test:
// files named bad_* must be refused with InvalidArgument and a message, the others accepted,
// and no file may break an invariant of parsing, validation, prompt building or encoding.
#include <gtest/gtest.h>

#include <filesystem>

#include "../fuzz/prompt_fuzz_body.h"
#include "test_fixtures.h"
#include "xcpipe/base/files.h"
#include "xcpipe/tokenizer/train.h"

namespace xcpipe::tokenizer {
namespace {

namespace fs = std::filesystem;

TEST(FuzzCorpusTest, EveryFileIsAcceptedOrRefusedCleanly) {
  const fs::path corpus = xcpipe::testing::SourceDir() / "common/tokenizer/fuzz/corpus";
  ASSERT_TRUE(fs::is_directory(corpus)) << corpus;
  // The real tokenizer where the fixtures are, else a trained one: the corpus runs either way.
  std::unique_ptr<Tokenizer> trained;
  const Tokenizer* tok = test::InternLm2Tokenizer();
  if (tok == nullptr) {
    auto model = TrainTokenizer({});
    ASSERT_TRUE(model.ok());
    trained = std::move(Tokenizer::LoadFromBytes(*model)).value();
    tok = trained.get();
  }
  int accepted = 0;
  int refused = 0;
  for (const auto& entry : fs::directory_iterator(corpus)) {
    const std::string name = entry.path().filename().string();
    auto bytes = ReadFileToString(entry.path());
    ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
    Status parse;
    const Status invariants = fuzz::FuzzPromptOnce(*bytes, tok, &parse);
    EXPECT_TRUE(invariants.ok()) << name << ": " << invariants.ToString();
    EXPECT_EQ(parse.ok(), !name.starts_with("bad_")) << name << ": " << parse.ToString();
    (parse.ok() ? accepted : refused) += 1;
  }
  EXPECT_GT(accepted, 0);
  EXPECT_GT(refused, 0);
}

}  // namespace
}  // namespace xcpipe::tokenizer
