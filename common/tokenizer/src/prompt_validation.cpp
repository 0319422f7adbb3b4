#include "xcpipe/tokenizer/prompt_validation.h"

#include <nlohmann/json.hpp>

#include "xcpipe/tokenizer/utf8.h"

namespace xcpipe::tokenizer {
namespace {

constexpr std::string_view kExpected = "expected a string or a list of strings";

std::string JsonKind(const nlohmann::json& v) {
  switch (v.type()) {
    case nlohmann::json::value_t::null:
      return "null";
    case nlohmann::json::value_t::boolean:
      return "a boolean";
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned:
    case nlohmann::json::value_t::number_float:
      return "a number";
    case nlohmann::json::value_t::object:
      return "an object";
    case nlohmann::json::value_t::array:
      return "a list";
    case nlohmann::json::value_t::string:
      return "a string";
    case nlohmann::json::value_t::binary:
      return "binary data";
    case nlohmann::json::value_t::discarded:
      return "an invalid value";
  }
  return "an unknown value";
}

std::string Images(int n) { return std::to_string(n) + (n == 1 ? " image" : " images"); }
std::string Placeholders(int n) {
  return std::to_string(n) + (n == 1 ? " <ImageHere> placeholder" : " <ImageHere> placeholders");
}

}  // namespace

Status ValidatePromptText(std::string_view text, const PromptLimits& limits, std::string_view label) {
  const std::string name(label);
  if (text.empty()) return InvalidArgumentError(name + " is empty; expected non-empty text");
  if (text.size() > limits.max_prompt_bytes) {
    return InvalidArgumentError(name + " is " + std::to_string(text.size()) + " bytes, longer than the limit of " +
                                std::to_string(limits.max_prompt_bytes) + " bytes");
  }
  if (auto err = FindUtf8Error(text)) {
    return InvalidArgumentError(name + " is not valid UTF-8 (" + err->reason + " at byte " +
                                std::to_string(err->offset) + "); expected UTF-8 text");
  }
  if (const size_t nul = text.find('\0'); nul != std::string_view::npos) {
    return InvalidArgumentError(name + " contains a NUL character at byte " + std::to_string(nul) +
                                "; expected text without NUL");
  }
  return OkStatus();
}

Status ValidatePromptImages(std::string_view text, int num_images, ChatVersion version, const PromptLimits& limits,
                            std::string_view label) {
  const std::string name(label);
  const std::string ver(ChatVersionName(version));
  if (num_images < 0) return InvalidArgumentError(name + ": negative image count");
  if (num_images > limits.max_images_per_prompt) {
    return InvalidArgumentError(name + " comes with " + Images(num_images) + "; at most " +
                                std::to_string(limits.max_images_per_prompt) + " are allowed per prompt");
  }
  const int placeholders = CountImagePlaceholders(text);
  switch (version) {
    case ChatVersion::kIxc1:
      if (num_images > 1) {
        return InvalidArgumentError(name + " comes with " + Images(num_images) +
                                    "; ixc1 takes at most one image per turn");
      }
      if (placeholders > num_images ||
          (placeholders == 1 && text.substr(0, kImagePlaceholder.size()) != kImagePlaceholder)) {
        return InvalidArgumentError(name + " has " + Placeholders(placeholders) + " with " + Images(num_images) +
                                    "; ixc1 puts its one image right after <|User|>:, so expected no placeholder "
                                    "or a single one at the very start of a prompt that has an image");
      }
      return OkStatus();
    case ChatVersion::kIxc2_5:
      if (num_images == 1 && placeholders == 0) return OkStatus();  // the image goes first
      [[fallthrough]];
    case ChatVersion::kIxc2Vl:
    case ChatVersion::kIxc2_4khd:
      if (placeholders != num_images) {
        std::string msg = name + " has " + Placeholders(placeholders) + " but " + Images(num_images) +
                          (num_images == 1 ? " was" : " were") + " given; expected one <ImageHere> per image";
        if (version == ChatVersion::kIxc2_5) msg += " (or one image and no placeholder)";
        return InvalidArgumentError(msg + " (" + ver + ")");
      }
      return OkStatus();
  }
  return InternalError("unknown chat version");
}

StatusOr<std::vector<std::string>> ParsePromptJson(const nlohmann::json& value, const PromptLimits& limits) {
  std::vector<std::string> prompts;
  if (value.is_string()) {
    prompts.push_back(value.get<std::string>());
    XCPIPE_RETURN_IF_ERROR(ValidatePromptText(prompts.back(), limits, "prompt"));
    return prompts;
  }
  if (!value.is_array()) {
    return InvalidArgumentError("prompt is " + JsonKind(value) + "; " + std::string(kExpected));
  }
  if (value.empty()) {
    return InvalidArgumentError("prompt is an empty list; expected a string or a non-empty list of strings");
  }
  if (value.size() > limits.max_prompts) {
    return InvalidArgumentError("prompt list has " + std::to_string(value.size()) + " entries; at most " +
                                std::to_string(limits.max_prompts) + " are allowed");
  }
  for (size_t i = 0; i < value.size(); ++i) {
    const auto& item = value[i];
    const std::string label = "prompt " + std::to_string(i);
    if (!item.is_string()) {
      std::string msg = label + " is " + JsonKind(item) + "; each entry of a prompt list must be a string";
      if (item.is_array()) msg += " (nested lists are not allowed)";
      return InvalidArgumentError(msg);
    }
    prompts.push_back(item.get<std::string>());
    XCPIPE_RETURN_IF_ERROR(ValidatePromptText(prompts.back(), limits, label));
  }
  return prompts;
}

StatusOr<std::vector<std::string>> ParsePromptJsonText(std::string_view json_text, const PromptLimits& limits) {
  nlohmann::json value = nlohmann::json::parse(json_text, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) {
    return InvalidArgumentError("prompt is not valid JSON; " + std::string(kExpected) +
                                " (a JSON string must be quoted and valid UTF-8)");
  }
  return ParsePromptJson(value, limits);
}

Status ValidatePrompts(std::span<const std::string> prompts, std::span<const int> images_per_prompt,
                       ChatVersion version, const PromptLimits& limits) {
  if (prompts.empty()) return InvalidArgumentError("no prompt given; expected at least one");
  if (prompts.size() > limits.max_prompts) {
    return InvalidArgumentError(std::to_string(prompts.size()) + " prompts given; at most " +
                                std::to_string(limits.max_prompts) + " are allowed");
  }
  if (images_per_prompt.size() != prompts.size()) {
    return InvalidArgumentError(std::to_string(prompts.size()) + " prompts but image counts for " +
                                std::to_string(images_per_prompt.size()) + "; expected one image count per prompt");
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::string label = prompts.size() == 1 ? "prompt" : "prompt " + std::to_string(i);
    XCPIPE_RETURN_IF_ERROR(ValidatePromptText(prompts[i], limits, label));
    XCPIPE_RETURN_IF_ERROR(ValidatePromptImages(prompts[i], images_per_prompt[i], version, limits, label));
  }
  return OkStatus();
}

}  // namespace xcpipe::tokenizer
