// Internal: JSON parsing for bytes from outside (safetensors headers, index files, layouts)
// that nlohmann's defaults would accept too readily. nlohmann keeps the last of two equal keys
// silently, which would hide a duplicated tensor name; and its parser keeps a stack entry per
// nesting level, so a header of a million '[' would cost memory before failing.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "xcpipe/base/status.h"

namespace xcpipe::checkpoint::internal {

// Deepest nesting any of our JSON inputs needs is 4 (layout -> parameters -> entry -> shape).
inline constexpr int kMaxJsonDepth = 32;

// Nesting depth of `text`, counting brackets outside strings; stops counting past `limit`.
int JsonNestingDepth(std::string_view text, int limit);

// Parses `text` as JSON and fails with InvalidArgument ("<what>: ...") on a syntax error,
// nesting deeper than kMaxJsonDepth, or a key that appears twice in one object (the message
// names the key and, for top-level keys, says so). Never throws.
template <typename Json>
StatusOr<Json> ParseStrictJson(std::string_view text, std::string_view what) {
  if (JsonNestingDepth(text, kMaxJsonDepth + 1) > kMaxJsonDepth) {
    return InvalidArgumentError(std::string(what) + ": JSON nested deeper than " + std::to_string(kMaxJsonDepth) +
                                " levels");
  }
  std::vector<std::unordered_set<std::string>> keys_per_object;
  std::string duplicated;
  size_t duplicated_depth = 0;
  auto callback = [&](int /*depth*/, typename Json::parse_event_t event, Json& parsed) {
    using Event = typename Json::parse_event_t;
    switch (event) {
      case Event::object_start:
        keys_per_object.emplace_back();
        break;
      case Event::object_end:
        if (!keys_per_object.empty()) keys_per_object.pop_back();
        break;
      case Event::key:
        if (!keys_per_object.empty() && parsed.is_string()) {
          const auto& key = parsed.template get_ref<const std::string&>();
          if (!keys_per_object.back().insert(key).second && duplicated.empty()) {
            duplicated = key;
            duplicated_depth = keys_per_object.size();
          }
        }
        break;
      default:
        break;
    }
    return true;
  };
  Json result;
  try {
    result = Json::parse(text.begin(), text.end(), callback);
  } catch (const std::exception& e) {
    return InvalidArgumentError(std::string(what) + ": invalid JSON: " + e.what());
  }
  if (!duplicated.empty()) {
    if (duplicated_depth == 1) {
      return InvalidArgumentError(std::string(what) + ": '" + duplicated + "' appears twice (duplicated name)");
    }
    return InvalidArgumentError(std::string(what) + ": key '" + duplicated + "' appears twice in one object");
  }
  return result;
}

}  // namespace xcpipe::checkpoint::internal
