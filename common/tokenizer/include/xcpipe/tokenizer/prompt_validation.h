// Prompt validation at the edge: what a client may send as a prompt, checked before anything
// is tokenized or any GPU is touched, so that a wrong input fails with a message that says what
// was expected instead of deep inside the tokenizer (a reported failure of the official code).
//
// Accepted: a JSON string, or a JSON list of strings (one prompt per entry: a batch). Each
// prompt is non-empty UTF-8 without NUL characters, at most PromptLimits::max_prompt_bytes
// long, and has as many <ImageHere> placeholders as images were given for it, with the
// version's exception: 2.5 also accepts one image with no placeholder (it goes first), and
// ixc1 (which has no placeholders) accepts at most one image and at most one placeholder,
// opening the text. Refused, with InvalidArgument: numbers, booleans, objects, null, nested
// lists, an empty list, more than max_prompts entries, bad UTF-8 (the byte offset is named),
// empty text, over-long text, placeholder/image mismatches, too many images.
//
// Pure functions; thread-safe; never throw (JSON parse errors become InvalidArgument).
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "xcpipe/base/status.h"
#include "xcpipe/tokenizer/chat_template.h"

namespace xcpipe::tokenizer {

// Tunables, read in one place (the serving limits fill them).
struct PromptLimits {
  size_t max_prompt_bytes = size_t{256} << 10;  // one prompt's UTF-8 bytes
  size_t max_prompts = 64;                      // entries of a list prompt
  int max_images_per_prompt = 16;
};

// A string or a list of strings -> the prompts, each checked for structure, UTF-8, NUL, empty
// and length (not images: ValidatePromptImages does that once the images are known).
StatusOr<std::vector<std::string>> ParsePromptJson(const nlohmann::json& value, const PromptLimits& limits = {});
// Same, from JSON text (a request body field); malformed JSON is InvalidArgument.
StatusOr<std::vector<std::string>> ParsePromptJsonText(std::string_view json_text, const PromptLimits& limits = {});

// One prompt's text: UTF-8, no NUL, not empty, not too long. `label` names it in messages
// ("prompt", "prompt 2").
Status ValidatePromptText(std::string_view text, const PromptLimits& limits = {}, std::string_view label = "prompt");

// One prompt against its images for a version (see the header comment for the rules).
Status ValidatePromptImages(std::string_view text, int num_images, ChatVersion version, const PromptLimits& limits = {},
                            std::string_view label = "prompt");

// Every prompt of a (parsed) list: text checks and image checks. images_per_prompt has one
// entry per prompt.
Status ValidatePrompts(std::span<const std::string> prompts, std::span<const int> images_per_prompt,
                       ChatVersion version, const PromptLimits& limits = {});

}  // namespace xcpipe::tokenizer
