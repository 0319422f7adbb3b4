// One round of the prompt fuzzer on outside bytes, shared by the libFuzzer target
// (prompt_fuzz.cpp) and the corpus regression test (tests/fuzz_corpus_test.cpp).
//
// The bytes are parsed as a client's JSON prompt. Accepted prompts then go through image
// validation and chat-prompt building for every version and, when a tokenizer is given,
// encoding and decoding. Refusals must be InvalidArgument with a message; anything else (a
// crash, another code, an accepted prompt the tokenizer cannot encode) is an invariant broken,
// reported as an Internal status.
#pragma once

#include <string_view>

#include "xcpipe/tokenizer/chat_template.h"
#include "xcpipe/tokenizer/prompt_validation.h"
#include "xcpipe/tokenizer/tokenizer.h"

namespace xcpipe::tokenizer::fuzz {

inline Status CheckRefusal(const Status& s, std::string_view step) {
  if (s.ok()) return s;
  if (s.code() != StatusCode::kInvalidArgument || s.message().empty()) {
    return InternalError(std::string(step) + " failed with an unexpected status: " + s.ToString());
  }
  return OkStatus();
}

// `parse` receives the outcome of parsing (OK when the bytes were accepted as a prompt).
inline Status FuzzPromptOnce(std::string_view bytes, const Tokenizer* tokenizer, Status* parse) {
  auto prompts = ParsePromptJsonText(bytes);
  *parse = prompts.status();
  if (!prompts.ok()) return CheckRefusal(prompts.status(), "parsing");
  for (const std::string& prompt : *prompts) {
    const int placeholders = CountImagePlaceholders(prompt);
    for (const auto version :
         {ChatVersion::kIxc1, ChatVersion::kIxc2Vl, ChatVersion::kIxc2_4khd, ChatVersion::kIxc2_5}) {
      for (int images = 0; images <= 2; ++images) {
        if (Status s = CheckRefusal(ValidatePromptImages(prompt, images, version), "image validation"); !s.ok())
          return s;
      }
      if (tokenizer == nullptr) continue;
      ChatRequest request;
      request.query = prompt;
      request.num_images = version == ChatVersion::kIxc1 ? (placeholders > 0 ? 1 : 0) : placeholders;
      auto built = BuildChatPrompt(*tokenizer, version, request);
      // Validation and building must agree on what is acceptable.
      const bool valid = ValidatePromptImages(prompt, request.num_images, version).ok();
      if (built.ok() != valid) {
        return InternalError("validation says " + std::string(valid ? "ok" : "refuse") + " but building says " +
                             (built.ok() ? "ok" : built.status().ToString()));
      }
      if (!built.ok()) {
        if (Status s = CheckRefusal(built.status(), "building"); !s.ok()) return s;
      }
    }
    if (tokenizer == nullptr) continue;
    auto ids = tokenizer->Encode(prompt, true);
    if (!ids.ok()) return InternalError("an accepted prompt does not encode: " + ids.status().ToString());
    for (const bool skip : {false, true}) {
      auto text = tokenizer->Decode(*ids, skip);
      if (!text.ok()) return InternalError("encoded ids do not decode: " + text.status().ToString());
    }
  }
  return OkStatus();
}

}  // namespace xcpipe::tokenizer::fuzz
