#include "xcpipe/tokenizer/tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <utility>

#include "xcpipe/base/files.h"
#include "xcpipe/tokenizer/utf8.h"

namespace xcpipe::tokenizer {
namespace {

// A tokenizer.model of the real models is ~1.5 MB; anything far larger is not one.
constexpr uint64_t kMaxModelFileBytes = uint64_t{256} << 20;

Status CheckUtf8(std::string_view text) {
  if (auto err = FindUtf8Error(text)) {
    return InvalidArgumentError("text is not valid UTF-8 at byte " + std::to_string(err->offset) + ": " + err->reason);
  }
  return OkStatus();
}

// Python's str.replace for each of transformers' clean_up_tokenization rules, in its order.
std::string CleanUpTokenization(std::string s) {
  static constexpr std::pair<std::string_view, std::string_view> kRules[] = {
      {" .", "."},     {" ?", "?"},   {" !", "!"},   {" ,", ","},     {" ' ", "'"},
      {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"},
  };
  for (const auto& [from, to] : kRules) {
    if (s.find(from) == std::string::npos) continue;
    std::string out;
    out.reserve(s.size());
    size_t pos = 0;
    while (true) {
      const size_t hit = s.find(from, pos);
      if (hit == std::string::npos) break;
      out.append(s, pos, hit - pos);
      out.append(to);
      pos = hit + from.size();
    }
    out.append(s, pos, std::string::npos);
    s = std::move(out);
  }
  return s;
}

}  // namespace

Tokenizer::Tokenizer(std::unique_ptr<sentencepiece::SentencePieceProcessor> sp) : sp_(std::move(sp)) {
  for (const int id : {sp_->bos_id(), sp_->eos_id(), sp_->unk_id()}) {
    if (id < 0 || id >= sp_->GetPieceSize()) continue;
    const std::string& piece = sp_->IdToPiece(id);
    if (std::find(special_pieces_.begin(), special_pieces_.end(), piece) != special_pieces_.end()) continue;
    special_pieces_.push_back(piece);
    special_ids_.push_back(id);
  }
}

Tokenizer::~Tokenizer() = default;

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::LoadFromFile(const std::filesystem::path& model_file) {
  XCPIPE_ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(model_file, kMaxModelFileBytes));
  return LoadFromBytes(bytes, model_file.string());
}

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::LoadFromBytes(std::string_view serialized_model,
                                                              std::string_view what) {
  if (serialized_model.empty()) {
    return InvalidArgumentError(std::string(what) + ": empty file; expected a SentencePiece tokenizer.model");
  }
  auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto status = sp->LoadFromSerializedProto(serialized_model);
  if (!status.ok()) {
    return InvalidArgumentError(std::string(what) + ": not a SentencePiece model: " + status.ToString());
  }
  if (sp->GetPieceSize() <= 0) {
    return InvalidArgumentError(std::string(what) + ": SentencePiece model has no pieces");
  }
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(sp)));
}

std::vector<Tokenizer::Chunk> Tokenizer::SplitOnSpecialPieces(std::string_view text) const {
  // HF's Trie.split: leftmost match, longest piece at that position; empty cuts dropped.
  std::vector<Chunk> chunks;
  size_t start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t best = 0;
    for (const auto& piece : special_pieces_) {
      if (piece.size() > best && text.substr(pos, piece.size()) == piece) best = piece.size();
    }
    if (best == 0) {
      ++pos;
      continue;
    }
    if (pos > start) chunks.push_back({text.substr(start, pos - start), false});
    chunks.push_back({text.substr(pos, best), true});
    pos += best;
    start = pos;
  }
  if (start < text.size()) chunks.push_back({text.substr(start), false});

  // transformers 4.33 PreTrainedTokenizer.tokenize(): special tokens given as plain strings
  // strip their neighbours on both sides, in order, each edit visible to the next.
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (!chunks[i].is_special) continue;
    if (i + 1 < chunks.size() && !chunks[i + 1].text.empty() && !chunks[i + 1].is_special) {
      chunks[i + 1].text = LstripPythonWhitespace(chunks[i + 1].text);
    }
    if (i > 0 && !chunks[i - 1].text.empty() && !chunks[i - 1].is_special) {
      chunks[i - 1].text = RstripPythonWhitespace(chunks[i - 1].text);
    }
  }
  std::erase_if(chunks, [](const Chunk& c) { return c.text.empty(); });
  return chunks;
}

StatusOr<std::vector<TokenId>> Tokenizer::Encode(std::string_view text, bool add_bos) const {
  XCPIPE_RETURN_IF_ERROR(CheckUtf8(text));
  std::vector<TokenId> ids;
  if (add_bos && sp_->bos_id() >= 0) ids.push_back(sp_->bos_id());
  std::vector<int> piece_ids;
  for (const Chunk& chunk : SplitOnSpecialPieces(text)) {
    if (chunk.is_special) {
      ids.push_back(sp_->PieceToId(chunk.text));
      continue;
    }
    piece_ids.clear();
    const auto status = sp_->Encode(chunk.text, &piece_ids);
    if (!status.ok()) return InternalError("SentencePiece encode failed: " + status.ToString());
    ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
  }
  return ids;
}

StatusOr<std::vector<std::string>> Tokenizer::Tokenize(std::string_view text) const {
  XCPIPE_RETURN_IF_ERROR(CheckUtf8(text));
  std::vector<std::string> out;
  std::vector<std::string> pieces;
  for (const Chunk& chunk : SplitOnSpecialPieces(text)) {
    if (chunk.is_special) {
      out.emplace_back(chunk.text);
      continue;
    }
    pieces.clear();
    const auto status = sp_->Encode(chunk.text, &pieces);
    if (!status.ok()) return InternalError("SentencePiece encode failed: " + status.ToString());
    for (auto& p : pieces) out.push_back(std::move(p));
  }
  return out;
}

StatusOr<std::vector<TokenId>> Tokenizer::EncodeRaw(std::string_view text) const {
  XCPIPE_RETURN_IF_ERROR(CheckUtf8(text));
  std::vector<int> piece_ids;
  const auto status = sp_->Encode(text, &piece_ids);
  if (!status.ok()) return InternalError("SentencePiece encode failed: " + status.ToString());
  return std::vector<TokenId>(piece_ids.begin(), piece_ids.end());
}

StatusOr<std::string> Tokenizer::Decode(std::span<const TokenId> ids, bool skip_special_tokens) const {
  const int size = sp_->GetPieceSize();
  std::string out;
  std::vector<int> run;  // ordinary ids since the last special one
  bool prev_is_special = false;
  auto flush = [&]() -> Status {
    if (run.empty()) return OkStatus();
    std::string text;
    const auto status = sp_->Decode(run, &text);
    if (!status.ok()) return InternalError("SentencePiece decode failed: " + status.ToString());
    out += text;
    run.clear();
    return OkStatus();
  };
  for (size_t i = 0; i < ids.size(); ++i) {
    const TokenId id = ids[i];
    if (id < 0 || id >= size) {
      return InvalidArgumentError("token id " + std::to_string(id) + " at position " + std::to_string(i) +
                                  " is outside the vocabulary [0, " + std::to_string(size) + ")");
    }
    const bool special = IsSpecialId(id);
    if (special && skip_special_tokens) continue;
    if (special) {
      if (!prev_is_special) out += ' ';
      XCPIPE_RETURN_IF_ERROR(flush());
      out += sp_->IdToPiece(id);
      prev_is_special = true;
    } else {
      run.push_back(id);
      prev_is_special = false;
    }
  }
  XCPIPE_RETURN_IF_ERROR(flush());
  // The official convert_tokens_to_string then adds a prefix space and drops the first
  // character again (its no_prefix_space_tokens test compares pieces with ids and never
  // matches), which leaves the text unchanged.
  return CleanUpTokenization(std::move(out));
}

StatusOr<std::string> Tokenizer::IdToPiece(TokenId id) const {
  if (id < 0 || id >= sp_->GetPieceSize()) {
    return InvalidArgumentError("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                                std::to_string(sp_->GetPieceSize()) + ")");
  }
  return sp_->IdToPiece(id);
}

std::optional<TokenId> Tokenizer::PieceToId(std::string_view piece) const {
  const int id = sp_->PieceToId(piece);
  // SentencePiece answers unk_id for unknown pieces; only the unk piece itself maps there.
  if (id == sp_->unk_id() && (id < 0 || sp_->IdToPiece(id) != piece)) return std::nullopt;
  if (id < 0) return std::nullopt;
  return id;
}

int32_t Tokenizer::vocab_size() const { return sp_->GetPieceSize(); }
TokenId Tokenizer::bos_id() const { return sp_->bos_id(); }
TokenId Tokenizer::eos_id() const { return sp_->eos_id(); }
TokenId Tokenizer::unk_id() const { return sp_->unk_id(); }

bool Tokenizer::IsSpecialId(TokenId id) const {
  return std::find(special_ids_.begin(), special_ids_.end(), id) != special_ids_.end();
}

}  // namespace xcpipe::tokenizer
