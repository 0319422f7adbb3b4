// The request side of POST /v1/chat/completions: the body parsed and checked into a
// ChatCompletionRequest, and its messages mapped onto a chat-template request (system text,
// history of (user, assistant) rounds, the query, images in prompt order).
//
// What is accepted (OpenAI's chat-completions fields, plus the extensions other servers take at
// the top level):
//   model                     string; checked against the served name by the gateway
//   messages                  list of {role, content}; role system|developer|user|assistant;
//                             content a string or a list of parts {"type":"text","text":...} and
//                             {"type":"image_url","image_url":{"url":...,"detail":...}} (user only)
//   max_tokens, max_completion_tokens   integer >= 1 (one of them; both must agree)
//   temperature               0..2; 0 means greedy, as other servers treat it
//   top_p                     (0, 1]
//   seed                      integer >= 0 (absent: a fresh seed per request)
//   stop                      string or list of at most kMaxStopSequences non-empty strings
//   stream, stream_options    bool; {"include_usage": bool} (only with stream)
//   top_k                     integer >= 0 (0 = off); repetition_penalty (0, 10]
//   min_tokens                integer >= 0, at most max_tokens: the end-of-answer ids are
//                             masked until this many tokens exist (stop strings are not held off)
//   ignore_eos                bool: generate to max_tokens past end-of-answer ids (the text is
//                             still cut at the end of the turn; usage counts every token)
//   num_beams                 integer 1..64: beam search (Hugging Face's, as the official chat()
//                             runs it) when > 1; needs temperature 0 or absent; a stream then
//                             carries the whole answer in one chunk at the end
//   length_penalty            number -100..100 (default 1), early_stopping true|false|"never",
//   min_length                integer >= 0 (HF min_length): beam search only
//   n = 1, logprobs = false, frequency_penalty = presence_penalty = 0
//                             accepted at these values only: other values are refused (400
//                             naming the field) because xcpipe does not implement them
//   user, metadata, store     accepted, not used
// Refused with 400 naming the field: tools, tool_choice, functions, function_call,
// response_format (other than {"type":"text"}), top_logprobs, logit_bias, any unknown field,
// wrong types, out-of-range values. A body that is not UTF-8 is refused naming the byte offset.
//
// Pure functions of their inputs; thread-safe; never throw.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "xcpipe/http/api_error.h"
#include "xcpipe/tokenizer/chat_template.h"

namespace xcpipe::http {

struct ChatLimits {
  static constexpr size_t kMaxStopSequences = 4;
  static constexpr size_t kMaxStopBytes = 256;
  size_t max_messages = 256;
  int64_t max_tokens = 4096;  // the largest max_tokens accepted (the context is checked later)
  int max_images = 4;         // image parts in the whole conversation
};

struct ContentPart {
  bool is_image = false;
  std::string text;       // text parts
  std::string image_url;  // image parts: data:, file:// or http(s):// URL
};

enum class Role : uint8_t { kSystem, kUser, kAssistant };

struct ChatMessage {
  Role role = Role::kUser;
  std::vector<ContentPart> parts;
};

struct ChatCompletionRequest {
  std::string model;  // "" when absent
  std::vector<ChatMessage> messages;
  std::optional<int64_t> max_tokens;
  bool greedy = false;  // temperature 0
  double temperature = 1.0;
  double top_p = 1.0;
  uint32_t top_k = 0;
  double repetition_penalty = 1.0;
  std::optional<uint64_t> seed;
  int64_t min_tokens = 0;
  bool ignore_eos = false;
  int64_t num_beams = 1;
  double length_penalty = 1.0;
  int early_stopping = 0;  // 0 false, 1 true, 2 "never"
  int64_t min_length = 0;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;
};

// Parses and checks a request body. The error names the field (param) and what was expected.
std::variant<ChatCompletionRequest, ApiError> ParseChatCompletionRequest(std::string_view body,
                                                                         const ChatLimits& limits = {});

// The conversation in the form the chat templates take. Image parts become <ImageHere> at their
// place in the text (text parts are concatenated as sent, nothing added between them); ixc1 has
// no placeholders inside a turn, so there an image must open its message and a turn takes at
// most one. System (and developer) messages, joined with "\n", are the system text; without
// one the version's default applies. Messages of one role in a row are joined with "\n". After
// the system text, the messages must alternate user/assistant, start with user and end with
// user (the question to answer); assistant messages carry text only.
struct Conversation {
  tokenizer::ChatRequest chat;            // query, history, meta_instruction, num_images
  std::vector<std::string> image_urls;    // in prompt order
  std::vector<std::string> image_params;  // "messages[i].content[j]" for each image, for errors
};
std::variant<Conversation, ApiError> BuildConversation(const std::vector<ChatMessage>& messages,
                                                       tokenizer::ChatVersion version, const ChatLimits& limits = {});

// An image given inline as data:image/png;base64,... or data:image/jpeg;base64,...: the decoded
// bytes, checked to be what the media type says. `param` names the part in errors.
struct DataUrlImage {
  std::string mime;   // "image/png" or "image/jpeg"
  std::string bytes;  // decoded
};
std::variant<DataUrlImage, ApiError> DecodeDataUrl(std::string_view url, std::string_view param, size_t max_bytes);

// Strict RFC 4648 base64 (padding optional, no whitespace): nullopt with the offset of the
// first bad character in *bad_offset.
std::optional<std::string> DecodeBase64(std::string_view text, size_t* bad_offset);

// The media type of encoded image bytes by their signature: "image/png", "image/jpeg" or "".
std::string_view SniffImageType(std::string_view bytes);

}  // namespace xcpipe::http
