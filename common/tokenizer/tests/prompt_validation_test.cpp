#include "xcpipe/tokenizer/prompt_validation.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace xcpipe::tokenizer {
namespace {

using nlohmann::json;

// The message of an InvalidArgument, or a failure when the call succeeded.
template <typename T>
std::string Refusal(const StatusOr<T>& s) {
  EXPECT_FALSE(s.ok());
  if (s.ok()) return "<accepted>";
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  return s.status().message();
}
std::string Refusal(const Status& s) {
  EXPECT_FALSE(s.ok());
  if (s.ok()) return "<accepted>";
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  return s.message();
}

TEST(PromptJsonTest, AcceptsStringOrListOfStrings) {
  auto one = ParsePromptJson(json("<ImageHere>Describe."));
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(*one, std::vector<std::string>{"<ImageHere>Describe."});
  auto many = ParsePromptJsonText(R"(["a", "b <ImageHere>"])");
  ASSERT_TRUE(many.ok());
  EXPECT_EQ(*many, (std::vector<std::string>{"a", "b <ImageHere>"}));
  auto unicode = ParsePromptJsonText(R"("\u6d66\u8bed \ud83d\ude00")");
  ASSERT_TRUE(unicode.ok());
  EXPECT_EQ((*unicode)[0], "浦语 😀");
}

TEST(PromptJsonTest, EachWrongShapeSaysWhatWasExpected) {
  EXPECT_EQ(Refusal(ParsePromptJson(json(42))), "prompt is a number; expected a string or a list of strings");
  EXPECT_EQ(Refusal(ParsePromptJson(json(3.5))), "prompt is a number; expected a string or a list of strings");
  EXPECT_EQ(Refusal(ParsePromptJson(json(true))), "prompt is a boolean; expected a string or a list of strings");
  EXPECT_EQ(Refusal(ParsePromptJson(json(nullptr))), "prompt is null; expected a string or a list of strings");
  EXPECT_EQ(Refusal(ParsePromptJson(json::object({{"text", "hi"}}))),
            "prompt is an object; expected a string or a list of strings");
  EXPECT_EQ(Refusal(ParsePromptJson(json::array())),
            "prompt is an empty list; expected a string or a non-empty list of strings");
  EXPECT_EQ(Refusal(ParsePromptJsonText(R"(["ok", ["nested"]])")),
            "prompt 1 is a list; each entry of a prompt list must be a string (nested lists are not allowed)");
  EXPECT_EQ(Refusal(ParsePromptJsonText(R"(["ok", 7])")),
            "prompt 1 is a number; each entry of a prompt list must be a string");
  EXPECT_EQ(Refusal(ParsePromptJsonText(R"(["ok", null])")),
            "prompt 1 is null; each entry of a prompt list must be a string");
  EXPECT_EQ(Refusal(ParsePromptJsonText("{not json")),
            "prompt is not valid JSON; expected a string or a list of strings (a JSON string must be quoted and "
            "valid UTF-8)");
  // The JSON parser itself refuses ill-formed UTF-8 inside a string literal.
  EXPECT_NE(Refusal(ParsePromptJsonText("\"bad \xFF\"")).find("not valid JSON"), std::string::npos);
}

TEST(PromptJsonTest, TextChecks) {
  EXPECT_EQ(Refusal(ParsePromptJson(json(""))), "prompt is empty; expected non-empty text");
  EXPECT_EQ(Refusal(ParsePromptJsonText(R"(["fine", ""])")), "prompt 1 is empty; expected non-empty text");
  // A json value built in C++ can carry bytes that are not UTF-8.
  EXPECT_EQ(Refusal(ParsePromptJson(json(std::string("ab\xC3")))),
            "prompt is not valid UTF-8 (truncated sequence (lead byte 0xc3 needs 1 continuation bytes) at byte 2); "
            "expected UTF-8 text");
  EXPECT_EQ(Refusal(ParsePromptJson(json(std::string("a\0b", 3)))),
            "prompt contains a NUL character at byte 1; expected text without NUL");
  PromptLimits limits;
  limits.max_prompt_bytes = 8;
  EXPECT_EQ(Refusal(ParsePromptJson(json("123456789"), limits)), "prompt is 9 bytes, longer than the limit of 8 bytes");
  limits.max_prompts = 2;
  EXPECT_EQ(Refusal(ParsePromptJsonText(R"(["a","b","c"])", limits)),
            "prompt list has 3 entries; at most 2 are allowed");
  EXPECT_TRUE(ValidatePromptText("12345678", limits).ok());
}

TEST(PromptImagesTest, PlaceholdersMustMatchImages) {
  EXPECT_TRUE(ValidatePromptImages("<ImageHere>Describe.", 1, ChatVersion::kIxc2Vl).ok());
  EXPECT_TRUE(ValidatePromptImages("A <ImageHere> B <ImageHere>", 2, ChatVersion::kIxc2_4khd).ok());
  EXPECT_TRUE(ValidatePromptImages("text only", 0, ChatVersion::kIxc2Vl).ok());
  EXPECT_EQ(Refusal(ValidatePromptImages("Describe.", 1, ChatVersion::kIxc2Vl)),
            "prompt has 0 <ImageHere> placeholders but 1 image was given; expected one <ImageHere> per image "
            "(ixc2-vl)");
  EXPECT_EQ(Refusal(ValidatePromptImages("<ImageHere><ImageHere>", 1, ChatVersion::kIxc2_4khd)),
            "prompt has 2 <ImageHere> placeholders but 1 image was given; expected one <ImageHere> per image "
            "(ixc2-4khd)");
  EXPECT_EQ(Refusal(ValidatePromptImages("<ImageHere>", 0, ChatVersion::kIxc2Vl)),
            "prompt has 1 <ImageHere> placeholder but 0 images were given; expected one <ImageHere> per image "
            "(ixc2-vl)");
}

TEST(PromptImagesTest, VersionExceptions) {
  // 2.5: one image and no placeholder puts the image first.
  EXPECT_TRUE(ValidatePromptImages("Describe.", 1, ChatVersion::kIxc2_5).ok());
  EXPECT_EQ(Refusal(ValidatePromptImages("Compare.", 2, ChatVersion::kIxc2_5)),
            "prompt has 0 <ImageHere> placeholders but 2 images were given; expected one <ImageHere> per image "
            "(or one image and no placeholder) (ixc2.5)");
  // ixc1: at most one image; a placeholder may only open the prompt.
  EXPECT_TRUE(ValidatePromptImages("What is it?", 1, ChatVersion::kIxc1).ok());
  EXPECT_TRUE(ValidatePromptImages("<ImageHere>What is it?", 1, ChatVersion::kIxc1).ok());
  EXPECT_EQ(Refusal(ValidatePromptImages("a", 2, ChatVersion::kIxc1)),
            "prompt comes with 2 images; ixc1 takes at most one image per turn");
  EXPECT_EQ(Refusal(ValidatePromptImages("What <ImageHere> is it?", 1, ChatVersion::kIxc1)),
            "prompt has 1 <ImageHere> placeholder with 1 image; ixc1 puts its one image right after <|User|>:, so "
            "expected no placeholder or a single one at the very start of a prompt that has an image");
  PromptLimits limits;
  limits.max_images_per_prompt = 2;
  EXPECT_EQ(Refusal(ValidatePromptImages("<ImageHere><ImageHere><ImageHere>", 3, ChatVersion::kIxc2Vl, limits)),
            "prompt comes with 3 images; at most 2 are allowed per prompt");
}

TEST(PromptImagesTest, ValidatePromptsLabelsEachEntry) {
  const std::vector<std::string> prompts = {"<ImageHere>a", "b"};
  EXPECT_TRUE(ValidatePrompts(prompts, std::vector<int>{1, 0}, ChatVersion::kIxc2Vl).ok());
  EXPECT_EQ(Refusal(ValidatePrompts(prompts, std::vector<int>{1, 1}, ChatVersion::kIxc2Vl)),
            "prompt 1 has 0 <ImageHere> placeholders but 1 image was given; expected one <ImageHere> per image "
            "(ixc2-vl)");
  EXPECT_EQ(Refusal(ValidatePrompts(prompts, std::vector<int>{1}, ChatVersion::kIxc2Vl)),
            "2 prompts but image counts for 1; expected one image count per prompt");
  EXPECT_EQ(Refusal(ValidatePrompts({}, {}, ChatVersion::kIxc2Vl)), "no prompt given; expected at least one");
}

}  // namespace
}  // namespace xcpipe::tokenizer
