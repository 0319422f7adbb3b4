// The request side of POST /v1/chat/completions: every accepted field read as documented, and
// every bad input refused with its status, the field it names and a message that says what was
// expected (table-driven).
#include "xcpipe/http/chat_request.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace xcpipe::http {
namespace {

using json = nlohmann::json;

// A request with one user message and `extra` fields merged in.
std::string With(const json& extra) {
  json body = {{"model", "m"}, {"messages", json::array({{{"role", "user"}, {"content", "Hello"}}})}};
  for (const auto& [k, v] : extra.items()) body[k] = v;
  return body.dump();
}

std::string WithMessages(const json& messages) { return json{{"messages", messages}}.dump(); }

struct BadCase {
  const char* name;
  std::string body;
  int status;
  std::string param;    // the field named
  std::string message;  // a part of the message
};

class RefusedTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(RefusedTest, RefusedWithStatusFieldAndMessage) {
  const BadCase& c = GetParam();
  auto out = ParseChatCompletionRequest(c.body);
  ASSERT_TRUE(std::holds_alternative<ApiError>(out)) << c.body;
  const ApiError& e = std::get<ApiError>(out);
  EXPECT_EQ(e.status, c.status);
  EXPECT_EQ(e.param, c.param);
  EXPECT_NE(e.message.find(c.message), std::string::npos) << "message: " << e.message;
  const json rendered = json::parse(RenderErrorBody(e));
  EXPECT_EQ(rendered["error"]["message"], e.message);
  EXPECT_EQ(rendered["error"]["type"], "invalid_request_error");
}

const json kUser = {{"role", "user"}, {"content", "Hi"}};

INSTANTIATE_TEST_SUITE_P(
    Body, RefusedTest,
    ::testing::Values(
        BadCase{"not_json", "{\"messages\": [", 400, "", "not valid JSON (at byte"},
        BadCase{"not_object", "[1, 2]", 400, "", "is a list; expected a JSON object"},
        BadCase{"bad_utf8", "{\"messages\": \"ab\xff\"}", 400, "", "not valid UTF-8 at byte offset 16"},
        BadCase{"overlong_utf8", "{\"x\": \"\xc0\xaf\"}", 400, "", "at byte offset 7 (overlong"},
        BadCase{"unknown_field", With({{"frobnicate", 1}}), 400, "frobnicate", "unknown field frobnicate"},
        BadCase{"model_type", With({{"model", 5}}), 400, "model", "model is a number; expected a string"},
        // Found by the fuzz target: nlohmann throws out_of_range, not parse_error, for this.
        BadCase{"number_overflow", "{\"messages\": [], \"max_tokens\": 1e999}", 400, "", "not usable JSON"},
        BadCase{"response_format_type_number", With({{"response_format", {{"type", 7}}}}), 400, "response_format",
                "is not implemented"}),
    [](const auto& info) { return std::string(info.param.name); });

INSTANTIATE_TEST_SUITE_P(
    Messages, RefusedTest,
    ::testing::Values(
        BadCase{"missing", "{}", 400, "messages", "messages is missing"},
        BadCase{"not_list", "{\"messages\": \"hi\"}", 400, "messages", "messages is a string; expected a list"},
        BadCase{"empty", WithMessages(json::array()), 400, "messages", "messages is empty"},
        BadCase{"entry_not_object", WithMessages(json::array({1})), 400, "messages[0]", "messages[0] is a number"},
        BadCase{"no_role", WithMessages({{{"content", "x"}}}), 400, "messages[0].role", "role is missing"},
        BadCase{"bad_role", WithMessages({{{"role", "robot"}, {"content", "x"}}}), 400, "messages[0].role",
                "\"robot\" is not a role"},
        BadCase{"tool_role", WithMessages({{{"role", "tool"}, {"content", "x"}}}), 400, "messages[0].role",
                "tool calling"},
        BadCase{"no_content", WithMessages({{{"role", "user"}}}), 400, "messages[0].content", "content is missing"},
        BadCase{"content_number", WithMessages({{{"role", "user"}, {"content", 3}}}), 400, "messages[0].content",
                "is a number; expected a string or a list of content parts"},
        BadCase{"content_empty_list", WithMessages({{{"role", "user"}, {"content", json::array()}}}), 400,
                "messages[0].content", "empty list"},
        BadCase{"part_no_type", WithMessages({{{"role", "user"}, {"content", {{{"text", "x"}}}}}}), 400,
                "messages[0].content[0].type", "type is missing"},
        BadCase{"part_bad_type", WithMessages({{{"role", "user"}, {"content", {{{"type", "audio"}}}}}}), 400,
                "messages[0].content[0].type", "\"audio\" is not supported"},
        BadCase{"text_part_no_text", WithMessages({{{"role", "user"}, {"content", {{{"type", "text"}}}}}}), 400,
                "messages[0].content[0].text", "text is missing; expected a string"},
        BadCase{
            "image_no_url",
            WithMessages({{{"role", "user"}, {"content", {{{"type", "image_url"}, {"image_url", json::object()}}}}}}),
            400, "messages[0].content[0].image_url.url", "url is missing"},
        BadCase{"image_in_assistant",
                WithMessages({kUser,
                              {{"role", "assistant"},
                               {"content", {{{"type", "image_url"}, {"image_url", {{"url", "data:x"}}}}}}},
                              kUser}),
                400, "messages[1].content[0]", "images are accepted in user messages only"},
        BadCase{"message_extra_field", WithMessages({{{"role", "user"}, {"content", "x"}, {"mood", "ok"}}}), 400,
                "messages[0].mood", "not a field of a message"},
        BadCase{"tool_calls", WithMessages({{{"role", "assistant"}, {"content", "x"}, {"tool_calls", json::array()}}}),
                400, "messages[0].tool_calls", "tool calling"}),
    [](const auto& info) { return std::string(info.param.name); });

INSTANTIATE_TEST_SUITE_P(
    Parameters, RefusedTest,
    ::testing::Values(
        BadCase{"max_tokens_zero", With({{"max_tokens", 0}}), 400, "max_tokens", "max_tokens 0 is out of range"},
        BadCase{"max_tokens_float", With({{"max_tokens", 1.5}}), 400, "max_tokens", "expected an integer"},
        BadCase{"max_tokens_huge", With({{"max_tokens", 1e12}}), 400, "max_tokens", "expected an integer"},
        BadCase{"max_tokens_too_many", With({{"max_tokens", 100000}}), 400, "max_tokens", "expected 1..4096"},
        BadCase{"max_tokens_disagree", With({{"max_tokens", 5}, {"max_completion_tokens", 6}}), 400,
                "max_completion_tokens", "differ"},
        BadCase{"max_completion_negative", With({{"max_completion_tokens", -1}}), 400, "max_completion_tokens",
                "out of range"},
        BadCase{"temperature_high", With({{"temperature", 2.5}}), 400, "temperature",
                "temperature 2.5 is out of range"},
        BadCase{"temperature_negative", With({{"temperature", -0.1}}), 400, "temperature", "out of range"},
        BadCase{"temperature_string", With({{"temperature", "hot"}}), 400, "temperature",
                "is a string; expected a number"},
        BadCase{"top_p_zero", With({{"top_p", 0}}), 400, "top_p", "expected > 0"},
        BadCase{"top_p_high", With({{"top_p", 1.5}}), 400, "top_p", "out of range"},
        BadCase{"top_k_negative", With({{"top_k", -2}}), 400, "top_k", "out of range"},
        BadCase{"top_k_float", With({{"top_k", 2.5}}), 400, "top_k", "expected an integer"},
        BadCase{"repetition_penalty_zero", With({{"repetition_penalty", 0}}), 400, "repetition_penalty",
                "expected > 0"},
        BadCase{"repetition_penalty_high", With({{"repetition_penalty", 11}}), 400, "repetition_penalty",
                "out of range"},
        BadCase{"seed_negative", With({{"seed", -1}}), 400, "seed", "seed -1 is negative"},
        BadCase{"seed_string", With({{"seed", "7"}}), 400, "seed", "expected an integer"},
        BadCase{"stop_number", With({{"stop", 3}}), 400, "stop", "stop is a number; expected a string or a list"},
        BadCase{"stop_empty", With({{"stop", ""}}), 400, "stop", "empty string"},
        BadCase{"stop_too_many", With({{"stop", {"a", "b", "c", "d", "e"}}}), 400, "stop", "at most 4"},
        BadCase{"stop_list_number", With({{"stop", {"a", 1}}}), 400, "stop", "is a number"},
        BadCase{"stop_too_long", With({{"stop", std::string(300, 'x')}}), 400, "stop", "at most 256"},
        BadCase{"stream_string", With({{"stream", "yes"}}), 400, "stream", "expected true or false"},
        BadCase{"stream_options_without_stream", With({{"stream_options", {{"include_usage", true}}}}), 400,
                "stream_options", "only allowed with stream: true"},
        BadCase{"stream_options_unknown", With({{"stream", true}, {"stream_options", {{"chunky", true}}}}), 400,
                "stream_options.chunky", "expected include_usage"},
        BadCase{"include_usage_string", With({{"stream", true}, {"stream_options", {{"include_usage", "y"}}}}), 400,
                "stream_options.include_usage", "expected true or false"},
        BadCase{"min_tokens_negative", With({{"min_tokens", -1}}), 400, "min_tokens", "out of range"},
        BadCase{"min_tokens_float", With({{"min_tokens", 2.5}}), 400, "min_tokens", "expected an integer"},
        BadCase{"min_tokens_over_max_tokens", With({{"min_tokens", 9}, {"max_tokens", 8}}), 400, "min_tokens",
                "min_tokens (9) is more than max_tokens (8)"},
        BadCase{"ignore_eos_string", With({{"ignore_eos", "yes"}}), 400, "ignore_eos", "expected true or false"},
        BadCase{"num_beams_zero", With({{"num_beams", 0}}), 400, "num_beams", "out of range"},
        BadCase{"num_beams_too_many", With({{"num_beams", 65}}), 400, "num_beams", "out of range"},
        BadCase{"num_beams_sampled", With({{"num_beams", 5}, {"temperature", 0.7}}), 400, "num_beams",
                "needs greedy decoding"},
        BadCase{"early_stopping_word", With({{"num_beams", 2}, {"early_stopping", "soon"}}), 400, "early_stopping",
                "expected true, false or \"never\""},
        BadCase{"length_penalty_without_beams", With({{"length_penalty", 2.0}}), 400, "length_penalty",
                "beam search only"}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(ChatRequestTest, ReadsTheBeamSearchExtension) {
  auto out = ParseChatCompletionRequest(
      With({{"num_beams", 5}, {"length_penalty", 0.5}, {"early_stopping", "never"}, {"min_length", 2}}));
  ASSERT_TRUE(std::holds_alternative<ChatCompletionRequest>(out)) << std::get<ApiError>(out).message;
  const auto& r = std::get<ChatCompletionRequest>(out);
  EXPECT_EQ(r.num_beams, 5);
  EXPECT_TRUE(r.greedy);  // beams decode greedily without a temperature given
  EXPECT_DOUBLE_EQ(r.length_penalty, 0.5);
  EXPECT_EQ(r.early_stopping, 2);
  EXPECT_EQ(r.min_length, 2);
}

INSTANTIATE_TEST_SUITE_P(
    NotImplemented, RefusedTest,
    ::testing::Values(
        BadCase{"n_two", With({{"n", 2}}), 400, "n", "more than one choice per request (n = 2) is not implemented"},
        BadCase{"tools", With({{"tools", json::array()}}), 400, "tools", "tool calling is not implemented"},
        BadCase{"tool_choice", With({{"tool_choice", "auto"}}), 400, "tool_choice", "tool calling"},
        BadCase{"functions", With({{"functions", json::array()}}), 400, "functions", "tool calling"},
        BadCase{"response_format_json", With({{"response_format", {{"type", "json_object"}}}}), 400, "response_format",
                "is not implemented"},
        BadCase{"logprobs", With({{"logprobs", true}}), 400, "logprobs", "log probabilities is not implemented"},
        BadCase{"top_logprobs", With({{"top_logprobs", 2}}), 400, "top_logprobs", "log probabilities"},
        BadCase{"logit_bias", With({{"logit_bias", {{"5", 1}}}}), 400, "logit_bias", "logit bias"},
        BadCase{"frequency_penalty", With({{"frequency_penalty", 0.5}}), 400, "frequency_penalty",
                "repetition_penalty"},
        BadCase{"presence_penalty", With({{"presence_penalty", 0.5}}), 400, "presence_penalty", "is not implemented"}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(ChatRequestTest, ReadsEveryField) {
  const std::string body = With({{"max_tokens", 16},
                                 {"temperature", 0.7},
                                 {"top_p", 0.9},
                                 {"top_k", 40},
                                 {"repetition_penalty", 1.05},
                                 {"seed", 7},
                                 {"stop", {"\n\n", "END"}},
                                 {"stream", true},
                                 {"stream_options", {{"include_usage", true}}},
                                 {"n", 1},
                                 {"logprobs", false},
                                 {"frequency_penalty", 0},
                                 {"presence_penalty", 0},
                                 {"min_tokens", 3},
                                 {"ignore_eos", true},
                                 {"response_format", {{"type", "text"}}},
                                 {"user", "u1"}});
  auto out = ParseChatCompletionRequest(body);
  ASSERT_TRUE(std::holds_alternative<ChatCompletionRequest>(out)) << std::get<ApiError>(out).message;
  const auto& r = std::get<ChatCompletionRequest>(out);
  EXPECT_EQ(r.model, "m");
  EXPECT_EQ(r.max_tokens, 16);
  EXPECT_FALSE(r.greedy);
  EXPECT_DOUBLE_EQ(r.temperature, 0.7);
  EXPECT_DOUBLE_EQ(r.top_p, 0.9);
  EXPECT_EQ(r.top_k, 40u);
  EXPECT_DOUBLE_EQ(r.repetition_penalty, 1.05);
  EXPECT_EQ(r.seed, 7u);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"\n\n", "END"}));
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_EQ(r.min_tokens, 3);
  EXPECT_TRUE(r.ignore_eos);
  ASSERT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.messages[0].parts[0].text, "Hello");
}

TEST(ChatRequestTest, DefaultsAndSpellings) {
  auto out = ParseChatCompletionRequest(
      With({{"temperature", 0}, {"max_completion_tokens", 9}, {"stop", "X"}, {"top_k", -1}}));
  ASSERT_TRUE(std::holds_alternative<ChatCompletionRequest>(out));
  const auto& r = std::get<ChatCompletionRequest>(out);
  EXPECT_TRUE(r.greedy);  // temperature 0 is greedy
  EXPECT_EQ(r.max_tokens, 9);
  EXPECT_EQ(r.stop, std::vector<std::string>{"X"});
  EXPECT_EQ(r.top_k, 0u);  // -1 (vLLM's spelling of off) is off
  EXPECT_FALSE(r.seed.has_value());
  auto plain = ParseChatCompletionRequest(WithMessages(json::array({kUser})));
  const auto& p = std::get<ChatCompletionRequest>(plain);
  EXPECT_TRUE(p.model.empty());
  EXPECT_FALSE(p.stream);
  EXPECT_FALSE(p.greedy);  // OpenAI's default temperature is 1
  EXPECT_FALSE(p.max_tokens.has_value());
}

TEST(ChatRequestTest, ContentPartsKeepTheirOrder) {
  auto out = ParseChatCompletionRequest(WithMessages(
      {{{"role", "user"},
        {"content",
         {{{"type", "text"}, {"text", "A "}},
          {{"type", "image_url"}, {"image_url", {{"url", "data:image/png;base64,AAAA"}, {"detail", "low"}}}},
          {{"type", "text"}, {"text", " B"}}}}}}));
  ASSERT_TRUE(std::holds_alternative<ChatCompletionRequest>(out));
  const auto& parts = std::get<ChatCompletionRequest>(out).messages[0].parts;
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_FALSE(parts[0].is_image);
  EXPECT_TRUE(parts[1].is_image);
  EXPECT_EQ(parts[1].image_url, "data:image/png;base64,AAAA");
  EXPECT_EQ(parts[2].text, " B");
}

ChatCompletionRequest Parse(const json& messages) {
  return std::get<ChatCompletionRequest>(ParseChatCompletionRequest(WithMessages(messages)));
}

const json kImagePart = {{"type", "image_url"}, {"image_url", {{"url", "data:image/png;base64,AAAA"}}}};

TEST(ConversationTest, SystemHistoryAndQuery) {
  auto req = Parse({{{"role", "system"}, {"content", "Be brief."}},
                    {{"role", "developer"}, {"content", "Be kind."}},
                    {{"role", "user"}, {"content", {kImagePart, {{"type", "text"}, {"text", "What is it?"}}}}},
                    {{"role", "assistant"}, {"content", "A cat."}},
                    {{"role", "user"}, {"content", "Its colour?"}},
                    {{"role", "user"}, {"content", "And size?"}}});
  auto out = BuildConversation(req.messages, tokenizer::ChatVersion::kIxc2Vl);
  ASSERT_TRUE(std::holds_alternative<Conversation>(out)) << std::get<ApiError>(out).message;
  const auto& c = std::get<Conversation>(out);
  EXPECT_EQ(c.chat.meta_instruction, "Be brief.\nBe kind.");
  ASSERT_EQ(c.chat.history.size(), 1u);
  EXPECT_EQ(c.chat.history[0].user, "<ImageHere>What is it?");
  EXPECT_EQ(c.chat.history[0].assistant, "A cat.");
  EXPECT_EQ(c.chat.query, "Its colour?\nAnd size?");
  EXPECT_EQ(c.chat.num_images, 1);
  EXPECT_EQ(c.image_params, std::vector<std::string>{"messages[2].content[0]"});
}

TEST(ConversationTest, NoSystemMessageKeepsTheVersionDefault) {
  auto out = BuildConversation(Parse(json::array({kUser})).messages, tokenizer::ChatVersion::kIxc2Vl);
  const auto& c = std::get<Conversation>(out);
  EXPECT_FALSE(c.chat.meta_instruction.has_value());
  EXPECT_EQ(c.chat.query, "Hi");
}

struct BadConversation {
  const char* name;
  json messages;
  tokenizer::ChatVersion version;
  std::string param;
  std::string message;
};

class RefusedConversationTest : public ::testing::TestWithParam<BadConversation> {};

TEST_P(RefusedConversationTest, Refused) {
  const auto& c = GetParam();
  auto out = BuildConversation(Parse(c.messages).messages, c.version, ChatLimits{256, 4096, 2});
  ASSERT_TRUE(std::holds_alternative<ApiError>(out));
  const auto& e = std::get<ApiError>(out);
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.param, c.param);
  EXPECT_NE(e.message.find(c.message), std::string::npos) << e.message;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, RefusedConversationTest,
    ::testing::Values(BadConversation{"only_system",
                                      {{{"role", "system"}, {"content", "x"}}},
                                      tokenizer::ChatVersion::kIxc2Vl,
                                      "messages",
                                      "no user message"},
                      BadConversation{"assistant_first",
                                      {{{"role", "assistant"}, {"content", "x"}}, kUser},
                                      tokenizer::ChatVersion::kIxc2Vl,
                                      "messages",
                                      "assistant message before any user message"},
                      BadConversation{"ends_with_assistant",
                                      {kUser, {{"role", "assistant"}, {"content", "x"}}},
                                      tokenizer::ChatVersion::kIxc2Vl,
                                      "messages",
                                      "end with a user message"},
                      BadConversation{"late_system",
                                      {kUser, {{"role", "system"}, {"content", "x"}}},
                                      tokenizer::ChatVersion::kIxc2Vl,
                                      "messages[1].role",
                                      "system messages first"},
                      BadConversation{"placeholder_text",
                                      {{{"role", "user"}, {"content", "look <ImageHere>"}}},
                                      tokenizer::ChatVersion::kIxc2Vl,
                                      "messages[0].content",
                                      "send images as image_url parts"},
                      BadConversation{"too_many_images",
                                      {{{"role", "user"}, {"content", {kImagePart, kImagePart, kImagePart}}}},
                                      tokenizer::ChatVersion::kIxc2Vl,
                                      "messages[0].content[2]",
                                      "more than 2 images"},
                      BadConversation{"ixc1_two_images",
                                      {{{"role", "user"}, {"content", {kImagePart, kImagePart}}}},
                                      tokenizer::ChatVersion::kIxc1,
                                      "messages[0].content[1]",
                                      "one image per message"},
                      BadConversation{
                          "ixc1_image_after_text",
                          {{{"role", "user"}, {"content", {{{"type", "text"}, {"text", "x"}}, kImagePart}}}},
                          tokenizer::ChatVersion::kIxc1,
                          "messages[0].content[1]",
                          "before its text"}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(DataUrlTest, DecodesPngAndJpegAndRefusesTheRest) {
  const std::string png = "data:image/png;base64,iVBORw0KGgo=";  // the PNG signature
  auto ok = DecodeDataUrl(png, "p", 1 << 20);
  ASSERT_TRUE(std::holds_alternative<DataUrlImage>(ok)) << std::get<ApiError>(ok).message;
  EXPECT_EQ(std::get<DataUrlImage>(ok).mime, "image/png");
  EXPECT_EQ(std::get<DataUrlImage>(ok).bytes.size(), 8u);
  auto jpeg = DecodeDataUrl("data:image/jpg;base64,/9j/", "p", 1 << 20);
  ASSERT_TRUE(std::holds_alternative<DataUrlImage>(jpeg));
  EXPECT_EQ(std::get<DataUrlImage>(jpeg).mime, "image/jpeg");

  struct Bad {
    std::string url;
    std::string code;
    std::string message;
  };
  for (const Bad& b : std::vector<Bad>{
           {"data:image/gif;base64,R0lGODlh", "unsupported_image_type",
            "media type \"image/gif\"; expected image/png or image/jpeg"},
           {"data:image/png;base64,iVBO!wKGgo=", "invalid_base64", "not valid base64 at character 4"},
           {"data:image/png;base64,iVBORw0KG", "invalid_base64", "not valid base64 at character 8"},
           {"data:image/png,iVBORw0KGgo=", "invalid_image_url", "not base64"},
           {"data:image/png;base64", "invalid_image_url", "without a comma"},
           {"data:image/png;base64,/9j/", "invalid_image", "says image/png but its bytes are image/jpeg"},
           {"data:image/jpeg;base64,AAAA", "invalid_image", "neither PNG nor JPEG"},
       }) {
    auto out = DecodeDataUrl(b.url, "messages[0].content[0]", 1 << 20);
    ASSERT_TRUE(std::holds_alternative<ApiError>(out)) << b.url;
    const auto& e = std::get<ApiError>(out);
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.code, b.code) << b.url;
    EXPECT_EQ(e.param, "messages[0].content[0]");
    EXPECT_NE(e.message.find(b.message), std::string::npos) << e.message;
  }
  auto big = DecodeDataUrl("data:image/png;base64," + std::string(4000, 'A'), "p", 1000);
  ASSERT_TRUE(std::holds_alternative<ApiError>(big));
  EXPECT_EQ(std::get<ApiError>(big).code, "image_too_large");
}

TEST(ApiErrorTest, StatusesFromTheServingPath) {
  EXPECT_EQ(ErrorFromStatus(InvalidArgumentError("x")).status, 400);
  const ApiError busy = ErrorFromStatus(ResourceExhaustedError("busy"));
  EXPECT_EQ(busy.status, 429);
  EXPECT_EQ(busy.retry_after_s, 1);
  EXPECT_EQ(ErrorFromStatus(UnavailableError("x")).status, 503);
  EXPECT_EQ(ErrorFromStatus(InternalError("x")).status, 500);
  const json body = json::parse(RenderErrorBody(BadRequest("m", "", "")));
  EXPECT_TRUE(body["error"]["param"].is_null());
  EXPECT_TRUE(body["error"]["code"].is_null());
}

}  // namespace
}  // namespace xcpipe::http
