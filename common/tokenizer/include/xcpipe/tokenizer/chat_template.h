// Chat templates: how each XComposer version turns (query, history, system text, images) into
// the token ids and image positions its official chat() feeds the LLM. Output is a list of
// segments: tokenized text runs and one ImageSlot per image; the caller expands each slot into
// that image's embedding rows (a model property: 1225 for VL at 490 px, NQ+2 for 1.0, a
// tile-grid-dependent count for 4KHD/2.5).
//
// The templates, as the official code builds them (tokenizer behaviour: tokenizer.h):
//
//   turn   = "[UNUSED_TOKEN_146]{role}\n{content}[UNUSED_TOKEN_145]\n"        (2.x)
//   prompt = [system turn if meta] + (user, assistant) turns of history + user turn of the query
//            + "[UNUSED_TOKEN_146]assistant\n"
//
//   ixc2-vl, ixc2-4khd   no image:  build_inputs(): "<s>" + prompt, encoded WITH BOS -> [1, 1, ...]
//                        images:    interleav_wrap_chat(): prompt split at <ImageHere>; every
//                                   non-empty part encoded WITH BOS; image i after part i.
//                        Default system text: kIxc2MetaInstruction.
//   ixc2.5               chat() defaults (image=[], use_meta=False): no system text; the prompt
//                        always goes through interleav_wrap_chat(); one image and no
//                        <ImageHere> anywhere puts the image first; only the FIRST part gets BOS
//                        (even when empty: [1]); later parts have none:
//                        [1] + image + tokens("[UNUSED_TOKEN_146]user\n...").
//                        TextOnlyPath::kBuildInputs gives the chat(image=None) variant.
//   ixc1                 wrap_prompt(): [meta + " <|User|>:" WITH BOS] [image] [query, no BOS]
//                        ["\n<TOKENS_UNUSED_0> <|Bot|>:", no BOS]. With history: each earlier
//                        turn is [" <|User|>:" WITH BOS] [its image] [user, no BOS]
//                        [" <|Bot|>:", no BOS] [answer WITH BOS]; then [" <|User|>:", no BOS]
//                        [image] [query] ["\n<TOKENS_UNUSED_0> <|Bot|>:"]; no meta at all.
//
// Not reproduced: interleav_wrap_chat's silent cut at max_length (the official code truncates
// the embeddings); callers check the built length against the serving limits and refuse instead.
//
// Pure functions of their inputs (plus a const Tokenizer): thread-safe. Failure: a request that
// does not fit its version (placeholder count differs from the image count, an ixc1 turn with
// more than one image, ...) is InvalidArgument with a message that says what was expected;
// tokenizer failures (text that is not UTF-8) pass through with context.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "xcpipe/base/status.h"
#include "xcpipe/tokenizer/tokenizer.h"

namespace xcpipe::tokenizer {

// The model family whose template applies. Names match checkpoint::ArchName ("ixc1",
// "ixc2-vl", "ixc2-4khd", "ixc2.5"); convert through the name.
enum class ChatVersion : uint8_t {
  kIxc1,
  kIxc2Vl,
  kIxc2_4khd,
  kIxc2_5,
};
std::string_view ChatVersionName(ChatVersion version);
// Accepts the names above (and "ixc2d5", "ixc2_vl", "ixc2_4khd" as folder spellings).
std::optional<ChatVersion> ParseChatVersion(std::string_view name);
inline bool IsIxc2Family(ChatVersion v) { return v != ChatVersion::kIxc1; }

// The image placeholder of 2.x prompts. It is not a token: only a split marker.
inline constexpr std::string_view kImagePlaceholder = "<ImageHere>";

// Template pieces.
inline constexpr std::string_view kIxc2TurnStart = "[UNUSED_TOKEN_146]";      // im_start
inline constexpr std::string_view kIxc2TurnEnd = "[UNUSED_TOKEN_145]";        // im_end, a stop token
inline constexpr std::string_view kIxc1EndOfHuman = "<TOKENS_UNUSED_0>";      // eoh, a stop token
inline constexpr std::string_view kIxc1EndOfAssistant = "<TOKENS_UNUSED_1>";  // eoa, a stop token
inline constexpr std::string_view kIxc1UserPrefix = " <|User|>:";
inline constexpr std::string_view kIxc1BotPrefix = " <|Bot|>:";
inline constexpr std::string_view kIxc1QueryEnd = "\n<TOKENS_UNUSED_0> <|Bot|>:";

// System texts of the official chat() defaults (recorded in the fixtures' JSON and manifests).
extern const std::string_view kIxc2MetaInstruction;  // VL and 4KHD default; 2.5 with use_meta
extern const std::string_view kIxc1MetaInstruction;  // 1.0 wrap_prompt()
// The system text a version's chat() uses when the caller gives none ("" for 2.5).
std::string_view DefaultMetaInstruction(ChatVersion version);

// One earlier round of the conversation.
struct ChatTurn {
  std::string user;             // 2.x: may hold <ImageHere> placeholders (counted in num_images)
  std::string assistant;        // the decoded answer of that round
  bool user_had_image = false;  // ixc1 only: that round carried an image (it has no placeholders)
};

// How a 2.x prompt with no images is assembled. kDefault follows chat()'s default: build_inputs()
// for VL/4KHD (image=None), interleav_wrap_chat() for 2.5 (image=[]).
enum class TextOnlyPath : uint8_t { kDefault, kBuildInputs, kInterleaved };

struct ChatRequest {
  std::string query;
  std::vector<ChatTurn> history;
  // nullopt: the version's default (DefaultMetaInstruction); "": no system text. ixc1 uses it
  // only when history is empty (as the official code does).
  std::optional<std::string> meta_instruction;
  // Every image of the request in prompt order: the <ImageHere> placeholders of history and
  // query (2.x; or one unplaced image for 2.5), or the history rounds with user_had_image plus
  // at most one for the query (ixc1).
  int num_images = 0;
  TextOnlyPath text_only_path = TextOnlyPath::kDefault;  // 2.x without images only
};

// A run of text the official code tokenized in one call.
struct TextSegment {
  std::string text;          // exactly what was handed to the tokenizer
  bool add_bos = false;      // add_special_tokens of that call
  std::vector<TokenId> ids;  // the result (BOS included when add_bos)
};
// The place of the index-th image (0-based, prompt order).
struct ImageSlot {
  int index = 0;
};
using PromptSegment = std::variant<TextSegment, ImageSlot>;

struct ChatPrompt {
  ChatVersion version = ChatVersion::kIxc2Vl;
  // The prompt string the official code builds before splitting (2.x; with its "<s>" or its
  // auto-added leading <ImageHere>), or the concatenated segment texts for ixc1 (with
  // <ImageHere> where the image rows go).
  std::string prompt_text;
  std::vector<PromptSegment> segments;

  int num_images() const;
  size_t num_text_tokens() const;
  // All text ids with each image expanded to rows_per_image[i] copies of `image_slot_id`
  // (the fixtures use -1). InvalidArgument when rows_per_image has the wrong length.
  StatusOr<std::vector<int64_t>> ExpandedIds(std::span<const int64_t> rows_per_image, int64_t image_slot_id = -1) const;
};

StatusOr<ChatPrompt> BuildChatPrompt(const Tokenizer& tokenizer, ChatVersion version, const ChatRequest& request);

// Counts non-overlapping <ImageHere> in `text`.
int CountImagePlaceholders(std::string_view text);

// Ids of a version's template pieces in a loaded tokenizer, looked up by piece (a tokenizer
// trained by TrainTokenizer has them at other ids than the released 92542/92543 or
// 103027/103028). NotFound names a missing piece.
struct ChatSpecialIds {
  TokenId bos = -1;
  TokenId eos = -1;
  TokenId unk = -1;
  TokenId turn_start = -1;  // [UNUSED_TOKEN_146] (2.x) / <TOKENS_UNUSED_0> end-of-human (1.0)
  TokenId turn_end = -1;    // [UNUSED_TOKEN_145] (2.x) / <TOKENS_UNUSED_1> end-of-assistant (1.0)
};
StatusOr<ChatSpecialIds> LookupChatSpecialIds(const Tokenizer& tokenizer, ChatVersion version);

// The ids that end generation, as the official chat() sets them: 2.x [eos, [UNUSED_TOKEN_145]];
// 1.0 [<TOKENS_UNUSED_0>, <TOKENS_UNUSED_1>, eos] (its stopping criterion plus config eos).
StatusOr<std::vector<TokenId>> StopTokenIds(const Tokenizer& tokenizer, ChatVersion version);

// The piece the answer is cut at: "[UNUSED_TOKEN_145]" (2.x) or "<TOKENS_UNUSED_1>" (1.0).
std::string_view ResponseCutPiece(ChatVersion version);

// The answer text chat() returns for generated ids: decode with skip_special_tokens, then keep
// what precedes the first ResponseCutPiece. The stop token may be included in `generated`.
StatusOr<std::string> PostprocessResponse(const Tokenizer& tokenizer, ChatVersion version,
                                          std::span<const TokenId> generated);

}  // namespace xcpipe::tokenizer
