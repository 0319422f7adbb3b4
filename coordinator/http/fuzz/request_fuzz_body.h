// The checks of the HTTP request fuzz target, shared with the corpus regression test
// (tests/request_corpus_test.cpp): the body of POST /v1/chat/completions through parsing, the
// mapping of messages onto every version's chat request, the data: URL decoder on every image
// part, and the error body. A refusal must be a 400 with a message whose rendered body is JSON;
// an accepted request must hold what the parser promises. The stop-sequence stream is driven
// with the input's halves. Returns "" when every invariant holds, else the broken one.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "xcpipe/http/chat_request.h"
#include "xcpipe/http/text_stream.h"

namespace xcpipe::http::fuzz {

#define XCPIPE_FUZZ_CHECK(cond, what) \
  do {                                \
    if (!(cond)) return what;         \
  } while (0)

inline std::string CheckError(const ApiError& e) {
  XCPIPE_FUZZ_CHECK(e.status == 400, "a refusal is a 400");
  XCPIPE_FUZZ_CHECK(!e.message.empty(), "a refusal says why");
  auto body = nlohmann::json::parse(RenderErrorBody(e), nullptr, false);
  XCPIPE_FUZZ_CHECK(!body.is_discarded() && body.contains("error") && body["error"].contains("message"),
                    "error body is JSON");
  return "";
}

// *accepted: whether the parser accepted the body.
inline std::string CheckRequestOnce(std::string_view body, bool* accepted) {
  auto parsed = ParseChatCompletionRequest(body);
  *accepted = std::holds_alternative<ChatCompletionRequest>(parsed);
  if (auto* e = std::get_if<ApiError>(&parsed)) {
    if (auto bad = CheckError(*e); !bad.empty()) return bad;
  } else {
    const auto& req = std::get<ChatCompletionRequest>(parsed);
    XCPIPE_FUZZ_CHECK(!req.messages.empty(), "an accepted request has messages");
    XCPIPE_FUZZ_CHECK(req.stop.size() <= ChatLimits::kMaxStopSequences, "stop sequences bounded");
    XCPIPE_FUZZ_CHECK(!req.max_tokens || *req.max_tokens >= 1, "max_tokens >= 1");
    XCPIPE_FUZZ_CHECK(req.top_p > 0 && req.top_p <= 1, "top_p in (0, 1]");
    XCPIPE_FUZZ_CHECK(req.greedy == (req.temperature == 0), "temperature 0 is greedy");
    for (auto v : {tokenizer::ChatVersion::kIxc1, tokenizer::ChatVersion::kIxc2Vl, tokenizer::ChatVersion::kIxc2_5}) {
      auto conv = BuildConversation(req.messages, v);
      if (auto* ce = std::get_if<ApiError>(&conv)) {
        if (auto bad = CheckError(*ce); !bad.empty()) return bad;
        continue;
      }
      const auto& c = std::get<Conversation>(conv);
      XCPIPE_FUZZ_CHECK(c.chat.num_images == static_cast<int>(c.image_urls.size()), "one image per URL");
      for (size_t i = 0; i < c.image_urls.size(); ++i) {
        if (c.image_urls[i].rfind("data:", 0) != 0) continue;
        auto img = DecodeDataUrl(c.image_urls[i], c.image_params[i], 1 << 20);
        if (auto* ie = std::get_if<ApiError>(&img)) {
          if (auto bad = CheckError(*ie); !bad.empty()) return bad;
        } else {
          const auto& d = std::get<DataUrlImage>(img);
          XCPIPE_FUZZ_CHECK(SniffImageType(d.bytes) == d.mime, "an accepted image is what its type says");
        }
      }
    }
  }
  // Stop matching: what is sent is the input's text up to the stop sequence, never more, never changed.
  const size_t half = body.size() / 2;
  std::string stop(body.substr(0, std::min<size_t>(half, 8)));
  if (stop.empty()) stop = "x";
  TextStream stream({stop});
  std::string out;
  for (size_t i = half; i < body.size(); i += 3) out += stream.Push(body.substr(i, 3));
  out += stream.Finish();
  const std::string_view rest = body.substr(half);
  XCPIPE_FUZZ_CHECK(out == stream.sent(), "sent() is what was returned");
  XCPIPE_FUZZ_CHECK(rest.substr(0, out.size()) == out, "sent text is a prefix of the input");
  XCPIPE_FUZZ_CHECK(stream.stopped() || out == rest, "without a stop everything is sent");
  XCPIPE_FUZZ_CHECK(!stream.stopped() || rest.find(stop) == out.size(),
                    "the text stops where the stop sequence starts");
  return "";
}

#undef XCPIPE_FUZZ_CHECK

}  // namespace xcpipe::http::fuzz
