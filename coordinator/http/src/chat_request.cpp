#include "xcpipe/http/chat_request.h"

#include <cmath>
#include <set>

#include <nlohmann/json.hpp>

#include "xcpipe/tokenizer/utf8.h"

namespace xcpipe::http {
namespace {

using json = nlohmann::json;

std::string TypeName(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "a list";
  return "an object";
}

ApiError WrongType(const std::string& field, const json& v, const std::string& expected) {
  return BadRequest(field + " is " + TypeName(v) + "; expected " + expected, field);
}

// A finite number in [lo, hi] (lo excluded when lo_open).
std::optional<ApiError> ReadNumber(const json& body, const char* field, double lo, bool lo_open, double hi,
                                   double* out) {
  auto it = body.find(field);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) return WrongType(field, *it, "a number");
  const double v = it->get<double>();
  if (!std::isfinite(v) || v < lo || (lo_open && v == lo) || v > hi) {
    return BadRequest(std::string(field) + " " + it->dump() + " is out of range; expected " + (lo_open ? "> " : ">= ") +
                          json(lo).dump() + " and <= " + json(hi).dump(),
                      field);
  }
  *out = v;
  return std::nullopt;
}

std::optional<ApiError> ReadInteger(const json& body, const char* field, int64_t lo, int64_t hi,
                                    std::optional<int64_t>* out) {
  auto it = body.find(field);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer()) return WrongType(field, *it, "an integer");
  if (it->is_number_unsigned() && it->get<uint64_t>() > static_cast<uint64_t>(hi)) {
    return BadRequest(std::string(field) + " " + it->dump() + " is out of range; expected " + std::to_string(lo) +
                          ".." + std::to_string(hi),
                      field);
  }
  const int64_t v = it->is_number_unsigned() ? static_cast<int64_t>(it->get<uint64_t>()) : it->get<int64_t>();
  if (v < lo || v > hi) {
    return BadRequest(std::string(field) + " " + it->dump() + " is out of range; expected " + std::to_string(lo) +
                          ".." + std::to_string(hi),
                      field);
  }
  *out = v;
  return std::nullopt;
}

std::optional<ApiError> ReadBool(const json& body, const char* field, bool* out) {
  auto it = body.find(field);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_boolean()) return WrongType(field, *it, "true or false");
  *out = it->get<bool>();
  return std::nullopt;
}

ApiError NotImplemented(const std::string& field, const std::string& what) {
  return BadRequest(field + ": " + what + " is not implemented by this server; leave " + field + " out", field,
                    "unsupported_parameter");
}

std::optional<ApiError> ParseContent(const json& content, const std::string& where, Role role, ChatMessage* msg) {
  if (content.is_string()) {
    msg->parts.push_back({false, content.get<std::string>(), ""});
    return std::nullopt;
  }
  if (!content.is_array()) return WrongType(where, content, "a string or a list of content parts");
  if (content.empty()) return BadRequest(where + " is an empty list; expected at least one content part", where);
  for (size_t j = 0; j < content.size(); ++j) {
    const json& part = content[j];
    const std::string p = where + "[" + std::to_string(j) + "]";
    if (!part.is_object()) return WrongType(p, part, "an object {\"type\": \"text\" | \"image_url\", ...}");
    auto type = part.find("type");
    if (type == part.end() || !type->is_string()) {
      return BadRequest(p + ".type is missing; expected \"text\" or \"image_url\"", p + ".type");
    }
    const std::string t = type->get<std::string>();
    if (t == "text") {
      for (const auto& [key, value] : part.items()) {
        if (key != "type" && key != "text")
          return BadRequest(p + "." + key + " is not a field of a text part", p + "." + key);
      }
      auto text = part.find("text");
      if (text == part.end() || !text->is_string()) {
        return BadRequest(
            p + ".text is " + (text == part.end() ? std::string("missing") : TypeName(*text)) + "; expected a string",
            p + ".text");
      }
      msg->parts.push_back({false, text->get<std::string>(), ""});
    } else if (t == "image_url") {
      if (role != Role::kUser) {
        return BadRequest(p + " is an image in a " + (role == Role::kSystem ? "system" : "assistant") +
                              " message; images are accepted in user messages only",
                          p);
      }
      for (const auto& [key, value] : part.items()) {
        if (key != "type" && key != "image_url") {
          return BadRequest(p + "." + key + " is not a field of an image_url part", p + "." + key);
        }
      }
      auto img = part.find("image_url");
      std::string url;
      if (img != part.end() && img->is_string()) {
        url = img->get<std::string>();  // the older flat form some clients send
      } else if (img != part.end() && img->is_object()) {
        for (const auto& [key, value] : img->items()) {
          if (key != "url" && key != "detail") {
            return BadRequest(p + ".image_url." + key + " is not a field of image_url; expected url (and detail)",
                              p + ".image_url." + key);
          }
        }
        auto u = img->find("url");
        if (u == img->end() || !u->is_string()) {
          return BadRequest(p + ".image_url.url is missing; expected a data:, file:// or http(s):// URL",
                            p + ".image_url.url");
        }
        if (auto d = img->find("detail"); d != img->end() && !d->is_string()) {
          return WrongType(p + ".image_url.detail", *d, "\"auto\", \"low\" or \"high\"");
        }
        url = u->get<std::string>();
      } else {
        return BadRequest(p + ".image_url is " + (img == part.end() ? std::string("missing") : TypeName(*img)) +
                              "; expected {\"url\": \"data:image/png;base64,...\"}",
                          p + ".image_url");
      }
      msg->parts.push_back({true, "", url});
    } else {
      return BadRequest(p + ".type \"" + t + "\" is not supported; expected \"text\" or \"image_url\"", p + ".type");
    }
  }
  return std::nullopt;
}

std::optional<ApiError> ParseMessages(const json& body, const ChatLimits& limits, ChatCompletionRequest* out) {
  auto it = body.find("messages");
  if (it == body.end() || it->is_null()) {
    return BadRequest("messages is missing; expected a list of {\"role\", \"content\"} objects", "messages");
  }
  if (!it->is_array()) return WrongType("messages", *it, "a list of {\"role\", \"content\"} objects");
  if (it->empty()) return BadRequest("messages is empty; expected at least one user message", "messages");
  if (it->size() > limits.max_messages) {
    return BadRequest("messages has " + std::to_string(it->size()) + " entries; at most " +
                          std::to_string(limits.max_messages) + " are accepted",
                      "messages");
  }
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) return WrongType(where, m, "an object {\"role\", \"content\"}");
    ChatMessage msg;
    auto role = m.find("role");
    if (role == m.end() || !role->is_string()) {
      return BadRequest(where + ".role is missing; expected \"system\", \"user\" or \"assistant\"", where + ".role");
    }
    const std::string r = role->get<std::string>();
    if (r == "system" || r == "developer")
      msg.role = Role::kSystem;
    else if (r == "user")
      msg.role = Role::kUser;
    else if (r == "assistant")
      msg.role = Role::kAssistant;
    else if (r == "tool" || r == "function")
      return NotImplemented(where + ".role", "the role \"" + r + "\" (tool calling)");
    else
      return BadRequest(where + ".role \"" + r + "\" is not a role; expected \"system\", \"user\" or \"assistant\"",
                        where + ".role");
    for (const auto& [key, value] : m.items()) {
      if (key == "role" || key == "content" || key == "name") continue;
      if (key == "tool_calls" || key == "function_call" || key == "tool_call_id") {
        return NotImplemented(where + "." + key, "tool calling");
      }
      return BadRequest(where + "." + key + " is not a field of a message; expected role and content",
                        where + "." + key);
    }
    if (auto name = m.find("name"); name != m.end() && !name->is_string())
      return WrongType(where + ".name", *name, "a string");
    auto content = m.find("content");
    if (content == m.end() || content->is_null()) {
      return BadRequest(where + ".content is missing; expected a string or a list of content parts",
                        where + ".content");
    }
    if (auto err = ParseContent(*content, where + ".content", msg.role, &msg)) return err;
    out->messages.push_back(std::move(msg));
  }
  return std::nullopt;
}

const std::set<std::string>& KnownFields() {
  static const std::set<std::string> fields = {"model",
                                               "messages",
                                               "max_tokens",
                                               "max_completion_tokens",
                                               "temperature",
                                               "top_p",
                                               "seed",
                                               "stop",
                                               "stream",
                                               "stream_options",
                                               "top_k",
                                               "repetition_penalty",
                                               "min_tokens",
                                               "ignore_eos",
                                               "num_beams",
                                               "length_penalty",
                                               "early_stopping",
                                               "min_length",
                                               "n",
                                               "logprobs",
                                               "frequency_penalty",
                                               "presence_penalty",
                                               "user",
                                               "metadata",
                                               "store"};
  return fields;
}

std::optional<ApiError> ParseFields(const json& body, const ChatLimits& limits, ChatCompletionRequest* out) {
  for (const auto& [key, value] : body.items()) {
    if (KnownFields().count(key)) continue;
    if (key == "tools" || key == "tool_choice" || key == "functions" || key == "function_call" ||
        key == "parallel_tool_calls") {
      return NotImplemented(key, "tool calling");
    }
    if (key == "response_format") {
      if (value.is_object() && value.size() == 1 && value.contains("type") && value["type"] == "text") continue;
      return NotImplemented(key, "a response format other than {\"type\": \"text\"}");
    }
    if (key == "top_logprobs") return NotImplemented(key, "log probabilities");
    if (key == "logit_bias") {
      if (value.is_null() || (value.is_object() && value.empty())) continue;
      return NotImplemented(key, "logit bias");
    }
    return BadRequest("unknown field " + key + "; see the server's README for the fields it accepts", key,
                      "unknown_parameter");
  }
  if (auto m = body.find("model"); m != body.end() && !m->is_null()) {
    if (!m->is_string()) return WrongType("model", *m, "a string (the id GET /v1/models lists)");
    out->model = m->get<std::string>();
  }
  if (auto err = ParseMessages(body, limits, out)) return err;

  std::optional<int64_t> max_tokens, max_completion;
  if (auto err = ReadInteger(body, "max_tokens", 1, limits.max_tokens, &max_tokens)) return err;
  if (auto err = ReadInteger(body, "max_completion_tokens", 1, limits.max_tokens, &max_completion)) return err;
  if (max_tokens && max_completion && *max_tokens != *max_completion) {
    return BadRequest("max_tokens (" + std::to_string(*max_tokens) + ") and max_completion_tokens (" +
                          std::to_string(*max_completion) + ") differ; send one of them",
                      "max_completion_tokens");
  }
  out->max_tokens = max_completion ? max_completion : max_tokens;

  if (auto err = ReadNumber(body, "temperature", 0, false, 2, &out->temperature)) return err;
  out->greedy = out->temperature == 0;
  if (auto err = ReadNumber(body, "top_p", 0, true, 1, &out->top_p)) return err;
  if (auto err = ReadNumber(body, "repetition_penalty", 0, true, 10, &out->repetition_penalty)) return err;
  std::optional<int64_t> top_k, n, min_tokens;
  if (auto err = ReadInteger(body, "top_k", -1, 1 << 20, &top_k)) return err;
  out->top_k = top_k && *top_k > 0 ? static_cast<uint32_t>(*top_k) : 0;  // -1 and 0: off (vLLM uses -1)
  if (auto it = body.find("seed"); it != body.end() && it->is_number_integer() && !it->is_number_unsigned()) {
    if (it->get<int64_t>() < 0)
      return BadRequest("seed " + it->dump() + " is negative; expected an integer >= 0", "seed");
  }
  if (auto it = body.find("seed"); it != body.end() && !it->is_null()) {
    if (!it->is_number_integer()) return WrongType("seed", *it, "an integer");
    out->seed = it->is_number_unsigned() ? it->get<uint64_t>() : static_cast<uint64_t>(it->get<int64_t>());
  }
  if (auto err = ReadInteger(body, "n", 0, INT32_MAX, &n)) return err;
  if (n && *n != 1) return NotImplemented("n", "more than one choice per request (n = " + std::to_string(*n) + ")");
  if (auto err = ReadInteger(body, "min_tokens", 0, limits.max_tokens, &min_tokens)) return err;
  out->min_tokens = min_tokens.value_or(0);
  if (out->max_tokens && out->min_tokens > *out->max_tokens) {
    return BadRequest("min_tokens (" + std::to_string(out->min_tokens) + ") is more than max_tokens (" +
                          std::to_string(*out->max_tokens) + "); expected min_tokens <= max_tokens",
                      "min_tokens");
  }
  if (auto err = ReadBool(body, "ignore_eos", &out->ignore_eos)) return err;
  std::optional<int64_t> beams, min_length;
  if (auto err = ReadInteger(body, "num_beams", 1, 64, &beams)) return err;
  out->num_beams = beams.value_or(1);
  if (out->num_beams > 1) {
    if (auto t = body.find("temperature"); t != body.end() && !t->is_null() && out->temperature != 0) {
      return BadRequest(
          "num_beams " + std::to_string(out->num_beams) + " needs greedy decoding; send temperature 0 or leave it out",
          "num_beams");
    }
    out->greedy = true;
  }
  if (auto err = ReadNumber(body, "length_penalty", -100, false, 100, &out->length_penalty)) return err;
  if (auto it = body.find("early_stopping"); it != body.end() && !it->is_null()) {
    if (it->is_boolean()) {
      out->early_stopping = it->get<bool>() ? 1 : 0;
    } else if (it->is_string() && it->get<std::string>() == "never") {
      out->early_stopping = 2;
    } else {
      return WrongType("early_stopping", *it, "true, false or \"never\"");
    }
  }
  if (auto err = ReadInteger(body, "min_length", 0, limits.max_tokens, &min_length)) return err;
  out->min_length = min_length.value_or(0);
  if (out->num_beams == 1) {
    for (const char* beam_only : {"length_penalty", "early_stopping", "min_length"}) {
      if (auto it = body.find(beam_only); it != body.end() && !it->is_null()) {
        return BadRequest(std::string(beam_only) + " applies to beam search only; send num_beams > 1 with it",
                          beam_only);
      }
    }
  }
  bool flag = false;
  if (auto err = ReadBool(body, "logprobs", &flag)) return err;
  if (flag) return NotImplemented("logprobs", "log probabilities");
  for (const char* penalty : {"frequency_penalty", "presence_penalty"}) {
    double v = 0;
    if (auto err = ReadNumber(body, penalty, -2, false, 2, &v)) return err;
    if (v != 0) {
      return NotImplemented(penalty, std::string(penalty) + " (use repetition_penalty, which this server implements)");
    }
  }
  if (auto it = body.find("user"); it != body.end() && !it->is_null() && !it->is_string()) {
    return WrongType("user", *it, "a string");
  }
  if (auto err = ReadBool(body, "stream", &out->stream)) return err;
  if (auto so = body.find("stream_options"); so != body.end() && !so->is_null()) {
    if (!so->is_object()) return WrongType("stream_options", *so, "an object {\"include_usage\": true}");
    if (!out->stream) return BadRequest("stream_options is only allowed with stream: true", "stream_options");
    for (const auto& [key, value] : so->items()) {
      if (key != "include_usage") {
        return BadRequest("stream_options." + key + " is not supported; expected include_usage",
                          "stream_options." + key);
      }
    }
    if (auto err = ReadBool(*so, "include_usage", &out->include_usage)) {
      err->param = "stream_options.include_usage";
      err->message = "stream_options." + err->message;
      return err;
    }
  }
  if (auto stop = body.find("stop"); stop != body.end() && !stop->is_null()) {
    std::vector<std::string> list;
    if (stop->is_string()) {
      list.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      if (stop->size() > ChatLimits::kMaxStopSequences) {
        return BadRequest("stop has " + std::to_string(stop->size()) + " sequences; at most " +
                              std::to_string(ChatLimits::kMaxStopSequences) + " are accepted",
                          "stop");
      }
      for (const auto& s : *stop) {
        if (!s.is_string()) return WrongType("stop", s, "a string or a list of strings");
        list.push_back(s.get<std::string>());
      }
    } else {
      return WrongType("stop", *stop, "a string or a list of strings");
    }
    for (const auto& s : list) {
      if (s.empty()) return BadRequest("stop holds an empty string; expected non-empty stop sequences", "stop");
      if (s.size() > ChatLimits::kMaxStopBytes) {
        return BadRequest("a stop sequence is " + std::to_string(s.size()) + " bytes; at most " +
                              std::to_string(ChatLimits::kMaxStopBytes) + " are accepted",
                          "stop");
      }
    }
    out->stop = std::move(list);
  }
  return std::nullopt;
}

void JoinInto(std::string* text, const std::string& more) {
  if (!text->empty()) *text += "\n";
  *text += more;
}

}  // namespace

std::variant<ChatCompletionRequest, ApiError> ParseChatCompletionRequest(std::string_view body,
                                                                         const ChatLimits& limits) {
  if (auto bad = tokenizer::FindUtf8Error(body)) {
    return BadRequest("the request body is not valid UTF-8 at byte offset " + std::to_string(bad->offset) + " (" +
                          bad->reason + "); expected a UTF-8 JSON object",
                      "", "invalid_utf8");
  }
  json parsed;
  try {
    parsed = json::parse(body);
  } catch (const json::parse_error& e) {
    return BadRequest("the request body is not valid JSON (at byte " + std::to_string(e.byte) +
                          "); expected a JSON object with model and messages",
                      "", "invalid_json");
  } catch (const json::exception& e) {  // a number too large for a double, ...
    return BadRequest(std::string("the request body is not usable JSON: ") + e.what(), "", "invalid_json");
  }
  if (!parsed.is_object()) {
    return BadRequest("the request body is " + TypeName(parsed) + "; expected a JSON object with model and messages");
  }
  ChatCompletionRequest out;
  try {
    if (auto err = ParseFields(parsed, limits, &out)) return *err;
  } catch (const json::exception& e) {  // every access is checked first; this is the backstop
    return BadRequest(std::string("the request body has a value of an unexpected type: ") + e.what());
  }
  return out;
}

std::variant<Conversation, ApiError> BuildConversation(const std::vector<ChatMessage>& messages,
                                                       tokenizer::ChatVersion version, const ChatLimits& limits) {
  Conversation out;
  std::optional<std::string> system;
  // Turns after the system text: role and text (with placeholders), merged when a role repeats.
  struct Turn {
    Role role;
    std::string text;
    int images = 0;
    size_t first_message = 0;
  };
  std::vector<Turn> turns;
  const bool ixc1 = version == tokenizer::ChatVersion::kIxc1;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    std::string text;
    int images = 0;
    for (size_t j = 0; j < m.parts.size(); ++j) {
      const ContentPart& part = m.parts[j];
      if (!part.is_image) {
        if (tokenizer::CountImagePlaceholders(part.text) > 0) {
          return BadRequest(
              where + " holds the text <ImageHere>; send images as image_url parts (the server places them)",
              where + ".content");
        }
        text += part.text;
        continue;
      }
      if (ixc1 && (images > 0 || !text.empty())) {
        return BadRequest(where + ": this model (ixc1) takes one image per message, before its text",
                          where + ".content[" + std::to_string(j) + "]");
      }
      text += std::string(tokenizer::kImagePlaceholder);
      ++images;
      out.image_urls.push_back(part.image_url);
      out.image_params.push_back(where + ".content[" + std::to_string(j) + "]");
      if (static_cast<int>(out.image_urls.size()) > limits.max_images) {
        return BadRequest("the conversation holds more than " + std::to_string(limits.max_images) +
                              " images; at most " + std::to_string(limits.max_images) + " are accepted per request",
                          out.image_params.back(), "too_many_images");
      }
    }
    if (m.role == Role::kSystem) {
      if (!turns.empty()) {
        return BadRequest(where + " is a system message after the conversation started; expected system messages first",
                          where + ".role");
      }
      if (!system) system.emplace();
      JoinInto(&*system, text);
      continue;
    }
    if (!turns.empty() && turns.back().role == m.role) {
      if (ixc1 && images > 0) {
        return BadRequest(where + ": this model (ixc1) takes one image per turn, opening it", where + ".content");
      }
      JoinInto(&turns.back().text, text);
      turns.back().images += images;
      continue;
    }
    turns.push_back({m.role, std::move(text), images, i});
  }
  if (turns.empty()) return BadRequest("messages has no user message; expected one to answer", "messages");
  if (turns.front().role != Role::kUser) {
    return BadRequest(
        "messages[" + std::to_string(turns.front().first_message) +
            "] is an assistant message before any user message; expected the conversation to start with user",
        "messages");
  }
  if (turns.back().role != Role::kUser) {
    return BadRequest("the last message is from the assistant; expected the conversation to end with a user message",
                      "messages");
  }
  for (size_t t = 0; t + 1 < turns.size(); t += 2) {
    tokenizer::ChatTurn turn;
    turn.user = turns[t].text;
    turn.user_had_image = turns[t].images > 0;
    turn.assistant = turns[t + 1].text;
    out.chat.history.push_back(std::move(turn));
  }
  out.chat.query = turns.back().text;
  out.chat.meta_instruction = system;
  out.chat.num_images = static_cast<int>(out.image_urls.size());
  return out;
}

std::optional<std::string> DecodeBase64(std::string_view text, size_t* bad_offset) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
  };
  size_t end = text.size();
  size_t pads = 0;
  while (end > 0 && text[end - 1] == '=' && pads < 2) --end, ++pads;
  for (size_t i = 0; i < end; ++i) {
    if (value(text[i]) < 0) {
      *bad_offset = i;
      return std::nullopt;
    }
  }
  if (pads > 0 && text.size() % 4 != 0) {
    *bad_offset = end;
    return std::nullopt;
  }
  if (end % 4 == 1) {
    *bad_offset = end - 1;
    return std::nullopt;
  }
  std::string out;
  out.reserve(end / 4 * 3 + 2);
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < end; ++i) {
    const int v = value(text[i]);
    if (v < 0) {
      *bad_offset = i;
      return std::nullopt;
    }
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return out;
}

std::string_view SniffImageType(std::string_view bytes) {
  if (bytes.size() >= 8 && bytes.substr(0, 8) == std::string_view("\x89PNG\r\n\x1a\n", 8)) return "image/png";
  if (bytes.size() >= 3 && static_cast<unsigned char>(bytes[0]) == 0xff &&
      static_cast<unsigned char>(bytes[1]) == 0xd8 && static_cast<unsigned char>(bytes[2]) == 0xff) {
    return "image/jpeg";
  }
  return "";
}

std::variant<DataUrlImage, ApiError> DecodeDataUrl(std::string_view url, std::string_view param, size_t max_bytes) {
  const std::string p(param);
  if (url.substr(0, 5) != "data:") return BadRequest(p + " is not a data: URL", p);
  const size_t comma = url.find(',');
  if (comma == std::string_view::npos) {
    return BadRequest(p + " is a data: URL without a comma; expected data:image/png;base64,<bytes>", p,
                      "invalid_image_url");
  }
  std::string_view head = url.substr(5, comma - 5);
  std::string_view payload = url.substr(comma + 1);
  constexpr std::string_view kBase64 = ";base64";
  if (head.size() < kBase64.size() || head.substr(head.size() - kBase64.size()) != kBase64) {
    return BadRequest(p + " is a data: URL that is not base64; expected data:image/png;base64,<bytes>", p,
                      "invalid_image_url");
  }
  std::string mime(head.substr(0, head.size() - kBase64.size()));
  for (auto& c : mime) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (mime == "image/jpg") mime = "image/jpeg";
  if (mime != "image/png" && mime != "image/jpeg") {
    return BadRequest(p + " has the media type \"" + std::string(head.substr(0, head.size() - kBase64.size())) +
                          "\"; expected image/png or image/jpeg",
                      p, "unsupported_image_type");
  }
  if (payload.size() / 4 * 3 > max_bytes) {
    return BadRequest(p + " holds about " + std::to_string(payload.size() / 4 * 3) + " bytes; at most " +
                          std::to_string(max_bytes) + " are accepted per image",
                      p, "image_too_large");
  }
  size_t bad = 0;
  auto bytes = DecodeBase64(payload, &bad);
  if (!bytes) {
    return BadRequest(p + " is not valid base64 at character " + std::to_string(bad) + " of its data", p,
                      "invalid_base64");
  }
  const std::string_view sniffed = SniffImageType(*bytes);
  if (sniffed != mime) {
    return BadRequest(p + " says " + mime + " but its bytes are " +
                          (sniffed.empty() ? std::string("neither PNG nor JPEG") : std::string(sniffed)) +
                          "; expected a PNG or JPEG image matching its media type",
                      p, "invalid_image");
  }
  return DataUrlImage{std::move(mime), std::move(*bytes)};
}

}  // namespace xcpipe::http
