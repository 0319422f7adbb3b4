// TrainTokenizer: trains a small SentencePiece BPE tokenizer on the spot, for `xcpipe mkmodel`
// (random-weight models in the official layout need a tokenizer.model that the chat templates
// work with, without shipping the 1.5 MB real one).
//
// The model is shaped like the released ones: BPE, byte fallback (any UTF-8 round-trips), no
// normalisation, no dummy prefix, whitespace kept, digits split; <unk>=0, <s>=1, </s>=2, no pad
// piece; the version's template pieces are user-defined symbols (matched atomically in text):
// 2.x "[UNUSED_TOKEN_146]", "[UNUSED_TOKEN_145]"; 1.0 "<TOKENS_UNUSED_0>", "<TOKENS_UNUSED_1>".
// Their ids differ from the released models' (look them up: LookupChatSpecialIds).
//
// Corpus: a built-in text (both versions' templates and system texts, English, Chinese, code,
// numbers), the caller's extra sentences, and synthetic words drawn from a PRNG seeded with
// `seed` (std::mt19937 with our own index mapping, so the same on every platform); the amount
// grows with vocab_size so that exactly vocab_size pieces can be learned.
//
// Determinism: for the same options the result is byte-identical. SentencePiece runs with one
// thread, and its global random generator (used only when it samples sentences, which this
// corpus size never triggers) is seeded with `seed`.
// Thread-safety: NOT safe to call concurrently with itself or with other SentencePiece training
// in the process (SentencePiece's seed and log level are process-global). It does not touch
// loaded Tokenizers. Failure: InvalidArgument for a vocab_size outside [kMinTrainedVocab,
// kMaxTrainedVocab] or one the corpus cannot reach (SentencePiece's message says the maximum);
// Internal for other trainer errors. Nothing is written to disk.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "xcpipe/base/status.h"
#include "xcpipe/tokenizer/chat_template.h"

namespace xcpipe::tokenizer {

inline constexpr int kMinTrainedVocab = 512;
inline constexpr int kMaxTrainedVocab = 16384;

struct TrainTokenizerOptions {
  ChatVersion version = ChatVersion::kIxc2Vl;
  int vocab_size = 1024;
  uint32_t seed = 0;
  std::vector<std::string> extra_sentences;  // appended to the built-in corpus (UTF-8)
};

// Returns the serialized model: the bytes of a tokenizer.model file (Tokenizer::LoadFromBytes
// reads it back).
StatusOr<std::string> TrainTokenizer(const TrainTokenizerOptions& options);

}  // namespace xcpipe::tokenizer
