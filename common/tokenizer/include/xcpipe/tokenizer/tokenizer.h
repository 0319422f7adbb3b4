// Tokenizer: the model's own SentencePiece model (tokenizer.model) with the behaviour of the
// HF *slow* tokenizer class the official XComposer code loads (InternLM2 / XComposer2 /
// XComposer 1.0 tokenizers under transformers 4.33.2), so that ids match the official ones
// token for token.
//
// What the HF layer adds on top of raw SentencePiece, and this class reproduces:
//   * Encode: the special tokens `<s>`, `</s>`, `<unk>` (the model's bos/eos/unk pieces) are
//     matched as literal text and become their ids; raw SentencePiece would split them into
//     ordinary pieces ("<s" + ">"). Because HF registers them as plain strings (not AddedToken),
//     the text on either side of a special token loses its adjacent whitespace (Python
//     `str.rstrip()` before, `str.lstrip()` after): "<s>literal </s> x" encodes "literal" and "x".
//     Each remaining text piece goes through SentencePiece on its own. BOS is prepended when
//     asked (add_bos_token=True in the official config); EOS is never appended.
//     Other user-defined pieces ([UNUSED_TOKEN_146], <TOKENS_UNUSED_0>, ...) are matched by
//     SentencePiece itself and need no special handling.
//   * Decode: ids become pieces; each special piece is written literally, preceded by one space
//     unless the previous piece was also special (so decode([2]) == " </s>"); the runs between
//     them are decoded by SentencePiece; then HF's clean_up_tokenization (" ." -> ".", " ?",
//     " !", " ,", " ' ", " n't", " 'm", " 's", " 've", " 're") is applied, as the official
//     convert_tokens_to_string always does. skip_special_tokens drops bos/eos/unk ids first.
//   Security note: like the official code, a user's literal "</s>" becomes the EOS id. Callers
//   that must not allow that check prompts before encoding (see prompt_validation.h).
//
// Thread-safety: after construction every method is const and safe to call from many threads
// at once (SentencePiece's encode/decode are const). Ownership: the Tokenizer owns its
// SentencePiece processor; it is neither copyable nor movable (hold it by unique_ptr).
// Failure: loading reports NotFound / InvalidArgument with the path; Encode refuses text that
// is not valid UTF-8 (InvalidArgument, with the byte offset); Decode refuses ids outside
// [0, vocab_size). Nothing throws.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "xcpipe/base/status.h"

namespace sentencepiece {
class SentencePieceProcessor;
}  // namespace sentencepiece

namespace xcpipe::tokenizer {

// A token id. The vocabularies are 92544 (InternLM2) and 103168 (InternLM-7B) pieces.
using TokenId = int32_t;

class Tokenizer {
 public:
  // Loads a tokenizer.model file (a serialized SentencePiece ModelProto).
  static StatusOr<std::unique_ptr<Tokenizer>> LoadFromFile(const std::filesystem::path& model_file);
  // Loads from the bytes of a tokenizer.model; `what` names the source in errors.
  static StatusOr<std::unique_ptr<Tokenizer>> LoadFromBytes(std::string_view serialized_model,
                                                            std::string_view what = "tokenizer model");

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;
  Tokenizer(Tokenizer&&) = delete;
  Tokenizer& operator=(Tokenizer&&) = delete;

  // HF `tokenizer(text, add_special_tokens=add_bos).input_ids`.
  StatusOr<std::vector<TokenId>> Encode(std::string_view text, bool add_bos) const;
  // HF `tokenizer.tokenize(text)`: the pieces of Encode(text, false), special tokens included.
  StatusOr<std::vector<std::string>> Tokenize(std::string_view text) const;
  // Plain SentencePiece encode: no special-token matching, no BOS.
  StatusOr<std::vector<TokenId>> EncodeRaw(std::string_view text) const;

  // HF `tokenizer.decode(ids, skip_special_tokens=...)`.
  StatusOr<std::string> Decode(std::span<const TokenId> ids, bool skip_special_tokens) const;

  // The piece of `id`; InvalidArgument outside [0, vocab_size).
  StatusOr<std::string> IdToPiece(TokenId id) const;
  // The id of a piece, or nullopt when the model has no such piece.
  std::optional<TokenId> PieceToId(std::string_view piece) const;

  int32_t vocab_size() const;
  // -1 where the model defines none.
  TokenId bos_id() const;
  TokenId eos_id() const;
  TokenId unk_id() const;
  // The HF special tokens (bos, eos, unk; pad is eos): their ids and pieces.
  bool IsSpecialId(TokenId id) const;
  const std::vector<std::string>& special_pieces() const { return special_pieces_; }

 private:
  explicit Tokenizer(std::unique_ptr<sentencepiece::SentencePieceProcessor> sp);
  // Splits text at literal special pieces and strips whitespace the way HF does. Each entry is
  // either a special piece (is_special) or a text chunk to hand to SentencePiece.
  struct Chunk {
    std::string_view text;
    bool is_special = false;
  };
  std::vector<Chunk> SplitOnSpecialPieces(std::string_view text) const;

  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::vector<std::string> special_pieces_;  // distinct, in bos, eos, unk order
  std::vector<TokenId> special_ids_;
};

}  // namespace xcpipe::tokenizer
