#include "xcpipe/tokenizer/chat_template.h"

#include <utility>

namespace xcpipe::tokenizer {

const std::string_view kIxc2MetaInstruction =
    "You are an AI assistant whose name is InternLM-XComposer (浦语·灵笔).\n"
    "- InternLM-XComposer (浦语·灵笔) is a multi-modality conversational language model that is developed by "
    "Shanghai AI Laboratory (上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n"
    "- InternLM-XComposer (浦语·灵笔) can understand and communicate fluently in the language chosen by the "
    "user such as English and 中文.\n"
    "- InternLM-XComposer (浦语·灵笔) is capable of comprehending and articulating responses effectively based "
    "on the provided image.";

const std::string_view kIxc1MetaInstruction =
    "meta instruction\n"
    "You are an AI assistant whose name is 浦语.\n"
    "- 浦语 is a conversational language model that is developed by Shanghai AI Laboratory (上海人工智能实验室). "
    "It is designed to be helpful, honest, and harmless.\n"
    "- 浦语 can understand and communicate fluently in the language chosen by the user such as English and 中文.\n"
    "conversation\n";

namespace {

std::string Plural(int n, std::string_view one, std::string_view many) {
  return std::to_string(n) + " " + std::string(n == 1 ? one : many);
}

std::string Turn(std::string_view role, std::string_view content) {
  std::string s;
  s.reserve(content.size() + 48);
  s.append(kIxc2TurnStart).append(role).append("\n").append(content).append(kIxc2TurnEnd).append("\n");
  return s;
}

// The 2.x prompt without any "<s>": system turn, history turns, query turn, assistant opener.
std::string Ixc2Dialogue(std::string_view meta, const ChatRequest& request) {
  std::string prompt;
  if (!meta.empty()) prompt += Turn("system", meta);
  for (const ChatTurn& turn : request.history) {
    prompt += Turn("user", turn.user);
    prompt += Turn("assistant", turn.assistant);
  }
  prompt += Turn("user", request.query);
  prompt.append(kIxc2TurnStart).append("assistant\n");
  return prompt;
}

class SegmentWriter {
 public:
  SegmentWriter(const Tokenizer& tokenizer, ChatPrompt* out) : tokenizer_(tokenizer), out_(out) {}

  Status Text(std::string text, bool add_bos, std::string_view what) {
    auto ids = tokenizer_.Encode(text, add_bos);
    if (!ids.ok()) return ids.status().WithContext(what);
    out_->prompt_text += text;
    out_->segments.emplace_back(TextSegment{std::move(text), add_bos, std::move(ids).value()});
    return OkStatus();
  }
  void Image() { out_->segments.emplace_back(ImageSlot{next_image_++}); }

 private:
  const Tokenizer& tokenizer_;
  ChatPrompt* out_;
  int next_image_ = 0;
};

Status BuildIxc2(const Tokenizer& tokenizer, ChatVersion version, const ChatRequest& request, ChatPrompt* out) {
  const std::string_view meta =
      request.meta_instruction ? std::string_view(*request.meta_instruction) : DefaultMetaInstruction(version);
  std::string dialogue = Ixc2Dialogue(meta, request);
  int placeholders = CountImagePlaceholders(dialogue);
  const std::string name(ChatVersionName(version));

  bool interleaved = request.num_images > 0;
  if (!interleaved) {
    switch (request.text_only_path) {
      case TextOnlyPath::kDefault:
        interleaved = version == ChatVersion::kIxc2_5;
        break;
      case TextOnlyPath::kBuildInputs:
        interleaved = false;
        break;
      case TextOnlyPath::kInterleaved:
        interleaved = true;
        break;
    }
  }
  SegmentWriter writer(tokenizer, out);

  if (!interleaved) {
    if (placeholders > 0) {
      return InvalidArgumentError("the prompt has " +
                                  Plural(placeholders, "<ImageHere> placeholder", "<ImageHere> placeholders") +
                                  " but no image was given; expected one image per placeholder (" + name + ")");
    }
    // build_inputs(): a literal "<s>" the tokenizer maps to id 1, and its own BOS before it.
    return writer.Text("<s>" + dialogue, /*add_bos=*/true, "build_inputs prompt");
  }

  if (version == ChatVersion::kIxc2_5 && request.num_images == 1 && placeholders == 0) {
    // 2.5's interleav_wrap_chat: one image and no placeholder puts the image first.
    dialogue.insert(0, kImagePlaceholder);
    placeholders = 1;
  }
  if (placeholders != request.num_images) {
    std::string msg = "the prompt has " + Plural(placeholders, "<ImageHere> placeholder", "<ImageHere> placeholders") +
                      " but " + Plural(request.num_images, "image was", "images were") +
                      " given; expected exactly one <ImageHere> per image";
    if (version == ChatVersion::kIxc2_5) msg += " (or a single image and no placeholder)";
    return InvalidArgumentError(msg + " (" + name + ")");
  }

  const bool bos_on_every_part = version != ChatVersion::kIxc2_5;
  bool need_bos = true;
  size_t start = 0;
  for (int part_index = 0;; ++part_index) {
    const size_t hit = dialogue.find(kImagePlaceholder, start);
    std::string part = dialogue.substr(start, hit == std::string::npos ? std::string::npos : hit - start);
    const std::string what = "prompt part " + std::to_string(part_index);
    if (bos_on_every_part) {
      if (!part.empty()) XCPIPE_RETURN_IF_ERROR(writer.Text(std::move(part), true, what));
    } else if (need_bos || !part.empty()) {
      XCPIPE_RETURN_IF_ERROR(writer.Text(std::move(part), need_bos, what));
      need_bos = false;
    }
    if (hit == std::string::npos) break;
    out->prompt_text += kImagePlaceholder;
    writer.Image();
    start = hit + kImagePlaceholder.size();
  }
  return OkStatus();
}

// 1.0 has no placeholder: the image rows follow " <|User|>:". A caller may still open the text
// with one <ImageHere> for a turn that has an image; it is dropped. Anything else is refused.
StatusOr<std::string> Ixc1TurnText(std::string_view text, bool has_image, std::string_view what) {
  const int placeholders = CountImagePlaceholders(text);
  if (placeholders == 0) return std::string(text);
  if (placeholders == 1 && has_image && text.substr(0, kImagePlaceholder.size()) == kImagePlaceholder) {
    return std::string(text.substr(kImagePlaceholder.size()));
  }
  return InvalidArgumentError(std::string(what) + " has " +
                              Plural(placeholders, "<ImageHere> placeholder", "<ImageHere> placeholders") +
                              (has_image ? "" : " but no image") +
                              "; ixc1 places a turn's single image right after <|User|>:, so a placeholder may "
                              "only open the text of a turn that has an image");
}

Status BuildIxc1(const Tokenizer& tokenizer, const ChatRequest& request, ChatPrompt* out) {
  int history_images = 0;
  for (const ChatTurn& turn : request.history) history_images += turn.user_had_image ? 1 : 0;
  const int query_images = request.num_images - history_images;
  if (query_images < 0 || query_images > 1) {
    return InvalidArgumentError(
        Plural(request.num_images, "image was", "images were") + " given but the history carries " +
        Plural(history_images, "image", "images") +
        "; expected the history's images plus at most one for the query (ixc1 takes one image per turn)");
  }
  XCPIPE_ASSIGN_OR_RETURN(std::string query, Ixc1TurnText(request.query, query_images == 1, "the query"));
  SegmentWriter writer(tokenizer, out);
  auto image = [&] {
    out->prompt_text += kImagePlaceholder;
    writer.Image();
  };

  if (request.history.empty()) {
    const std::string_view meta =
        request.meta_instruction ? std::string_view(*request.meta_instruction) : kIxc1MetaInstruction;
    XCPIPE_RETURN_IF_ERROR(writer.Text(std::string(meta) + std::string(kIxc1UserPrefix), true, "meta + user prefix"));
  } else {
    for (size_t i = 0; i < request.history.size(); ++i) {
      const ChatTurn& turn = request.history[i];
      const std::string what = "history turn " + std::to_string(i);
      XCPIPE_ASSIGN_OR_RETURN(std::string user, Ixc1TurnText(turn.user, turn.user_had_image, what + " user text"));
      XCPIPE_RETURN_IF_ERROR(writer.Text(std::string(kIxc1UserPrefix), true, what));
      if (turn.user_had_image) image();
      XCPIPE_RETURN_IF_ERROR(writer.Text(std::move(user), false, what));
      XCPIPE_RETURN_IF_ERROR(writer.Text(std::string(kIxc1BotPrefix), false, what));
      // The decoded answer is re-tokenized on its own, with BOS.
      XCPIPE_RETURN_IF_ERROR(writer.Text(turn.assistant, true, what + " answer"));
    }
    XCPIPE_RETURN_IF_ERROR(writer.Text(std::string(kIxc1UserPrefix), false, "user prefix"));
  }
  if (query_images == 1) image();
  XCPIPE_RETURN_IF_ERROR(writer.Text(std::move(query), false, "query"));
  return writer.Text(std::string(kIxc1QueryEnd), false, "query end");
}

}  // namespace

std::string_view ChatVersionName(ChatVersion version) {
  switch (version) {
    case ChatVersion::kIxc1:
      return "ixc1";
    case ChatVersion::kIxc2Vl:
      return "ixc2-vl";
    case ChatVersion::kIxc2_4khd:
      return "ixc2-4khd";
    case ChatVersion::kIxc2_5:
      return "ixc2.5";
  }
  return "unknown";
}

std::optional<ChatVersion> ParseChatVersion(std::string_view name) {
  if (name == "ixc1" || name == "ixc1.0") return ChatVersion::kIxc1;
  if (name == "ixc2-vl" || name == "ixc2_vl") return ChatVersion::kIxc2Vl;
  if (name == "ixc2-4khd" || name == "ixc2_4khd") return ChatVersion::kIxc2_4khd;
  if (name == "ixc2.5" || name == "ixc2d5" || name == "ixc2-5" || name == "ixc2_5") return ChatVersion::kIxc2_5;
  return std::nullopt;
}

std::string_view DefaultMetaInstruction(ChatVersion version) {
  switch (version) {
    case ChatVersion::kIxc1:
      return kIxc1MetaInstruction;
    case ChatVersion::kIxc2Vl:
    case ChatVersion::kIxc2_4khd:
      return kIxc2MetaInstruction;
    case ChatVersion::kIxc2_5:
      return {};  // chat(use_meta=False) passes meta_instruction=''
  }
  return {};
}

int CountImagePlaceholders(std::string_view text) {
  int count = 0;
  for (size_t pos = text.find(kImagePlaceholder); pos != std::string_view::npos;
       pos = text.find(kImagePlaceholder, pos + kImagePlaceholder.size())) {
    ++count;
  }
  return count;
}

int ChatPrompt::num_images() const {
  int n = 0;
  for (const auto& s : segments) n += std::holds_alternative<ImageSlot>(s) ? 1 : 0;
  return n;
}

size_t ChatPrompt::num_text_tokens() const {
  size_t n = 0;
  for (const auto& s : segments) {
    if (const auto* t = std::get_if<TextSegment>(&s)) n += t->ids.size();
  }
  return n;
}

StatusOr<std::vector<int64_t>> ChatPrompt::ExpandedIds(std::span<const int64_t> rows_per_image,
                                                       int64_t image_slot_id) const {
  if (static_cast<int>(rows_per_image.size()) != num_images()) {
    return InvalidArgumentError("the prompt has " + Plural(num_images(), "image slot", "image slots") + " but " +
                                std::to_string(rows_per_image.size()) + " row counts were given");
  }
  std::vector<int64_t> ids;
  for (const auto& s : segments) {
    if (const auto* t = std::get_if<TextSegment>(&s)) {
      ids.insert(ids.end(), t->ids.begin(), t->ids.end());
    } else {
      const int64_t rows = rows_per_image[std::get<ImageSlot>(s).index];
      if (rows < 0) return InvalidArgumentError("negative row count for an image");
      ids.insert(ids.end(), static_cast<size_t>(rows), image_slot_id);
    }
  }
  return ids;
}

StatusOr<ChatPrompt> BuildChatPrompt(const Tokenizer& tokenizer, ChatVersion version, const ChatRequest& request) {
  if (request.num_images < 0) return InvalidArgumentError("negative image count");
  ChatPrompt out;
  out.version = version;
  const Status status = version == ChatVersion::kIxc1 ? BuildIxc1(tokenizer, request, &out)
                                                      : BuildIxc2(tokenizer, version, request, &out);
  if (!status.ok()) return status.WithContext(std::string(ChatVersionName(version)) + " chat prompt");
  return out;
}

StatusOr<ChatSpecialIds> LookupChatSpecialIds(const Tokenizer& tokenizer, ChatVersion version) {
  ChatSpecialIds ids;
  ids.bos = tokenizer.bos_id();
  ids.eos = tokenizer.eos_id();
  ids.unk = tokenizer.unk_id();
  const bool v1 = version == ChatVersion::kIxc1;
  const std::string_view start_piece = v1 ? kIxc1EndOfHuman : kIxc2TurnStart;
  const std::string_view end_piece = v1 ? kIxc1EndOfAssistant : kIxc2TurnEnd;
  for (auto [piece, slot] : {std::pair{start_piece, &ids.turn_start}, std::pair{end_piece, &ids.turn_end}}) {
    const auto id = tokenizer.PieceToId(piece);
    if (!id) {
      return NotFoundError("the tokenizer has no piece '" + std::string(piece) + "', which the " +
                           std::string(ChatVersionName(version)) + " chat template needs");
    }
    *slot = *id;
  }
  if (ids.eos < 0) return NotFoundError("the tokenizer defines no end-of-sequence piece");
  return ids;
}

StatusOr<std::vector<TokenId>> StopTokenIds(const Tokenizer& tokenizer, ChatVersion version) {
  XCPIPE_ASSIGN_OR_RETURN(const ChatSpecialIds ids, LookupChatSpecialIds(tokenizer, version));
  if (version == ChatVersion::kIxc1) return std::vector<TokenId>{ids.turn_start, ids.turn_end, ids.eos};
  return std::vector<TokenId>{ids.eos, ids.turn_end};
}

std::string_view ResponseCutPiece(ChatVersion version) {
  return version == ChatVersion::kIxc1 ? kIxc1EndOfAssistant : kIxc2TurnEnd;
}

StatusOr<std::string> PostprocessResponse(const Tokenizer& tokenizer, ChatVersion version,
                                          std::span<const TokenId> generated) {
  auto text = tokenizer.Decode(generated, /*skip_special_tokens=*/true);
  if (!text.ok()) return text.status().WithContext("decoding the response");
  std::string out = std::move(text).value();
  const size_t cut = out.find(ResponseCutPiece(version));
  if (cut != std::string::npos) out.resize(cut);
  return out;
}

}  // namespace xcpipe::tokenizer
