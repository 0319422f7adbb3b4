#include "xcpipe/tokenizer/fixture_checks.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <exception>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

#include "xcpipe/base/files.h"
#include "xcpipe/base/npy.h"
#include "xcpipe/tokenizer/tokenizer.h"

namespace xcpipe::tokenizer {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Ids = std::vector<int64_t>;

// ---------------------------------------------------------------------------------------------
// Messages

std::string Escape(std::string_view s, size_t max_chars = 48) {
  std::string out;
  size_t shown = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (shown >= max_chars) {
      out += "...";
      break;
    }
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
    // Count code points, not bytes (UTF-8 continuation bytes do not start a character).
    if (i + 1 >= s.size() || (static_cast<unsigned char>(s[i + 1]) & 0xC0) != 0x80) ++shown;
  }
  return "\"" + out + "\"";
}

std::string IdsToString(const Ids& ids, size_t from = 0, size_t max = 12) {
  std::string s = "[";
  const size_t end = std::min(ids.size(), from + max);
  if (from > 0) s += "... ";
  for (size_t i = from; i < end; ++i) {
    if (i > from) s += ", ";
    s += std::to_string(ids[i]);
  }
  if (end < ids.size()) s += ", ...";
  return s + "]";
}

// Empty when equal; else where and how they differ.
std::string DiffIds(const Ids& expected, const Ids& actual) {
  size_t i = 0;
  while (i < expected.size() && i < actual.size() && expected[i] == actual[i]) ++i;
  if (i == expected.size() && i == actual.size()) return {};
  const size_t from = i >= 3 ? i - 3 : 0;
  std::string msg = "expected " + std::to_string(expected.size()) + " ids, got " + std::to_string(actual.size());
  if (i < expected.size() && i < actual.size()) {
    msg += "; first difference at index " + std::to_string(i) + ": expected " + std::to_string(expected[i]) + ", got " +
           std::to_string(actual[i]);
  } else {
    msg += "; equal up to index " + std::to_string(i);
  }
  return msg + "; expected " + IdsToString(expected, from) + ", got " + IdsToString(actual, from);
}

std::string DiffText(std::string_view expected, std::string_view actual) {
  if (expected == actual) return {};
  size_t i = 0;
  while (i < expected.size() && i < actual.size() && expected[i] == actual[i]) ++i;
  const size_t from = i >= 16 ? i - 16 : 0;
  return "texts differ at byte " + std::to_string(i) + " (expected " + std::to_string(expected.size()) +
         " bytes, got " + std::to_string(actual.size()) + "): expected ..." + Escape(expected.substr(from)) +
         ", got ..." + Escape(actual.substr(from));
}

Ids ToIds(const std::vector<TokenId>& v) { return Ids(v.begin(), v.end()); }

std::optional<Ids> JsonIds(const json& v) {
  if (!v.is_array()) return std::nullopt;
  Ids ids;
  for (const auto& x : v) {
    if (!x.is_number_integer()) return std::nullopt;
    ids.push_back(x.get<int64_t>());
  }
  return ids;
}

const json* Field(const json& obj, std::string_view key) {
  if (!obj.is_object()) return nullptr;
  const auto it = obj.find(std::string(key));
  return it == obj.end() ? nullptr : &*it;
}

std::optional<std::string> StringField(const json& obj, std::string_view key) {
  const json* f = Field(obj, key);
  if (!f || !f->is_string()) return std::nullopt;
  return f->get<std::string>();
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

class Reporter {
 public:
  Reporter(std::vector<FixtureCheckResult>* out, std::string prefix) : out_(out), prefix_(std::move(prefix)) {}
  void Pass(std::string_view what, std::string message) { Add(what, true, std::move(message)); }
  void Fail(std::string_view what, std::string message) { Add(what, false, std::move(message)); }
  // `diff` empty means equal.
  void Compare(std::string_view what, const std::string& diff, std::string ok_message) {
    if (diff.empty()) {
      Pass(what, std::move(ok_message));
    } else {
      Fail(what, diff);
    }
  }

 private:
  void Add(std::string_view what, bool passed, std::string message) {
    out_->push_back({prefix_ + (what.empty() ? "" : ": " + std::string(what)), passed, std::move(message)});
  }
  std::vector<FixtureCheckResult>* out_;
  std::string prefix_;
};

class TokenizerCache {
 public:
  StatusOr<const Tokenizer*> Get(const fs::path& model) {
    auto it = cache_.find(model);
    if (it == cache_.end()) {
      auto loaded = Tokenizer::LoadFromFile(model);
      if (!loaded.ok()) return loaded.status();
      it = cache_.emplace(model, std::move(loaded).value()).first;
    }
    return it->second.get();
  }

 private:
  std::map<fs::path, std::unique_ptr<Tokenizer>> cache_;
};

std::string Relative(const fs::path& p, const fs::path& root) {
  std::error_code ec;
  fs::path rel = fs::relative(p, root, ec);
  return (ec || rel.empty()) ? p.string() : rel.generic_string();
}

std::vector<fs::path> SortedSubdirs(const fs::path& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_directory(ec)) out.push_back(it->path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

bool IsFile(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// ---------------------------------------------------------------------------------------------
// Prompt text -> request (the inverse of the 2.x template, for JSON that records only the
// prompt string or its parts).

StatusOr<ChatRequest> ParseIxc2Prompt(std::string_view s, ChatVersion version) {
  ChatRequest req;
  req.text_only_path = TextOnlyPath::kInterleaved;
  if (s.starts_with("<s>")) {
    req.text_only_path = TextOnlyPath::kBuildInputs;
    s.remove_prefix(3);
  }
  int leading_images = 0;
  if (version == ChatVersion::kIxc2_5 && s.starts_with(kImagePlaceholder)) {
    leading_images = 1;  // the placeholder 2.5 adds in front of a prompt with one unplaced image
    s.remove_prefix(kImagePlaceholder.size());
  }
  const std::string start = std::string(kIxc2TurnStart);
  const std::string end_nl = std::string(kIxc2TurnEnd) + "\n";
  const std::string system = start + "system\n";
  const std::string user = start + "user\n";
  const std::string assistant = start + "assistant\n";
  std::string meta;
  if (s.starts_with(system)) {
    s.remove_prefix(system.size());
    const size_t e = s.find(end_nl);
    if (e == std::string_view::npos) return InvalidArgumentError("system turn is not closed");
    meta = std::string(s.substr(0, e));
    s.remove_prefix(e + end_nl.size());
  }
  req.meta_instruction = meta;
  int placeholders = CountImagePlaceholders(meta);
  while (true) {
    if (!s.starts_with(user)) return InvalidArgumentError("expected a user turn at " + Escape(s));
    s.remove_prefix(user.size());
    const size_t e = s.find(end_nl + assistant);
    if (e == std::string_view::npos) return InvalidArgumentError("user turn is not closed");
    std::string user_text(s.substr(0, e));
    s.remove_prefix(e + end_nl.size() + assistant.size());
    placeholders += CountImagePlaceholders(user_text);
    if (s.empty()) {
      req.query = std::move(user_text);
      break;
    }
    const size_t a = s.find(end_nl);
    if (a == std::string_view::npos) return InvalidArgumentError("assistant turn is not closed");
    ChatTurn turn{std::move(user_text), std::string(s.substr(0, a)), false};
    placeholders += CountImagePlaceholders(turn.assistant);
    req.history.push_back(std::move(turn));
    s.remove_prefix(a + end_nl.size());
  }
  req.num_images = placeholders + leading_images;
  return req;
}

// ---------------------------------------------------------------------------------------------
// Comparing built segments with recorded ones.

// A recorded segment: text (with add_special_tokens when recorded) or an image with its rows.
struct RecordedSegment {
  bool is_image = false;
  int64_t image_rows = 0;
  std::string text;
  std::optional<bool> add_bos;
  Ids ids;
};

StatusOr<std::vector<RecordedSegment>> ReadRecordedSegments(const json& array) {
  if (!array.is_array()) return InvalidArgumentError("segments are not a list");
  std::vector<RecordedSegment> out;
  for (size_t i = 0; i < array.size(); ++i) {
    const json* item = &array[i];
    if (const json* wrapped = Field(*item, "retokenized_response")) item = wrapped;
    RecordedSegment seg;
    if (const json* rows = Field(*item, "image_slots")) {
      if (!rows->is_number_integer())
        return InvalidArgumentError("segment " + std::to_string(i) + ": image_slots is not an integer");
      seg.is_image = true;
      seg.image_rows = rows->get<int64_t>();
    } else {
      auto text = StringField(*item, "text");
      auto ids = Field(*item, "ids") ? JsonIds(*Field(*item, "ids")) : std::nullopt;
      if (!text || !ids) return InvalidArgumentError("segment " + std::to_string(i) + " lacks text or ids");
      seg.text = std::move(*text);
      seg.ids = std::move(*ids);
      if (const json* b = Field(*item, "add_special_tokens"); b && b->is_boolean()) seg.add_bos = b->get<bool>();
    }
    out.push_back(std::move(seg));
  }
  return out;
}

// Empty when the built prompt's segments match the recorded ones. With images_listed false only
// the text segments are compared (2.x text_parts record no image entries).
std::string DiffSegments(const std::vector<RecordedSegment>& expected, const ChatPrompt& built, bool images_listed) {
  std::vector<const PromptSegment*> got;
  for (const auto& s : built.segments) {
    if (images_listed || std::holds_alternative<TextSegment>(s)) got.push_back(&s);
  }
  std::vector<const RecordedSegment*> want;
  for (const auto& s : expected) {
    if (images_listed || !s.is_image) want.push_back(&s);
  }
  for (size_t i = 0; i < std::min(want.size(), got.size()); ++i) {
    const std::string at = "segment " + std::to_string(i) + ": ";
    const auto* text = std::get_if<TextSegment>(got[i]);
    if (want[i]->is_image != (text == nullptr)) {
      return at + "expected " + (want[i]->is_image ? "an image" : "text") + ", got " + (text ? "text" : "an image");
    }
    if (!text) continue;
    if (auto d = DiffText(want[i]->text, text->text); !d.empty()) return at + d;
    if (want[i]->add_bos && *want[i]->add_bos != text->add_bos) {
      return at + "expected add_special_tokens=" + (*want[i]->add_bos ? "true" : "false") + ", got " +
             (text->add_bos ? "true" : "false");
    }
    if (auto d = DiffIds(want[i]->ids, ToIds(text->ids)); !d.empty())
      return at + "text " + Escape(text->text) + ": " + d;
  }
  if (want.size() != got.size()) {
    return "expected " + std::to_string(want.size()) + " segments, built " + std::to_string(got.size());
  }
  return {};
}

// The -1 runs of a recorded id row, as per-image row counts for `num_images` images. Adjacent
// images form one run; it is split evenly between them.
StatusOr<std::vector<int64_t>> RowsPerImageFromSlots(const Ids& row, int num_images, const ChatPrompt& built) {
  std::vector<int64_t> runs;
  for (size_t i = 0; i < row.size(); ++i) {
    if (row[i] != -1) continue;
    if (i == 0 || row[i - 1] != -1) runs.push_back(0);
    ++runs.back();
  }
  // Group the built image slots into adjacent runs too.
  std::vector<int> group_sizes;
  bool prev_image = false;
  for (const auto& s : built.segments) {
    const bool image = std::holds_alternative<ImageSlot>(s);
    const bool empty_text = !image && std::get<TextSegment>(s).ids.empty();
    if (empty_text) continue;
    if (image) {
      if (!prev_image) group_sizes.push_back(0);
      ++group_sizes.back();
    }
    prev_image = image;
  }
  if (runs.size() != group_sizes.size()) {
    return InvalidArgumentError("the recorded ids have " + std::to_string(runs.size()) +
                                " runs of image slots but the built prompt has " + std::to_string(group_sizes.size()) +
                                " places for " + std::to_string(num_images) + " images");
  }
  std::vector<int64_t> rows;
  for (size_t g = 0; g < runs.size(); ++g) {
    if (runs[g] % group_sizes[g] != 0) return InvalidArgumentError("adjacent images of unequal size");
    for (int k = 0; k < group_sizes[g]; ++k) rows.push_back(runs[g] / group_sizes[g]);
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------
// tokenizer_cases.json

std::optional<ChatVersion> FamilyVersion(const std::string& key) {
  const std::string k = Lower(key);
  if (k.find("4khd") != std::string::npos) return ChatVersion::kIxc2_4khd;
  if (k.find("2d5") != std::string::npos || k.find("2.5") != std::string::npos || k.find("2_5") != std::string::npos) {
    return ChatVersion::kIxc2_5;
  }
  if (k.find("vl") != std::string::npos) return ChatVersion::kIxc2Vl;
  if (k.find("ixc1") != std::string::npos || k.find("1.0") != std::string::npos || k.find("1_0") != std::string::npos ||
      k == "xcomposer" || k == "xcomposer1") {
    return ChatVersion::kIxc1;
  }
  return std::nullopt;
}

void CheckStringCase(const Tokenizer& tok, const json& entry, Reporter& r, const std::string& what) {
  const auto text = StringField(entry, "text");
  if (!text) {
    r.Fail(what, "entry has no \"text\" string");
    return;
  }
  std::vector<std::string> problems;
  std::vector<std::string> checked;
  auto encode_check = [&](std::string_view key, const StatusOr<std::vector<TokenId>>& got) {
    const json* f = Field(entry, key);
    if (!f) return;
    auto want = JsonIds(*f);
    if (!want) {
      problems.push_back(std::string(key) + ": not a list of ids");
    } else if (!got.ok()) {
      problems.push_back(std::string(key) + ": " + got.status().ToString());
    } else if (auto d = DiffIds(*want, ToIds(*got)); !d.empty()) {
      problems.push_back(std::string(key) + ": " + d);
    } else {
      checked.push_back(std::string(key));
    }
  };
  const auto no_bos = tok.Encode(*text, false);
  encode_check("ids", no_bos);
  encode_check("ids_no_bos", no_bos);
  encode_check("ids_with_bos", tok.Encode(*text, true));
  const auto raw = tok.EncodeRaw(*text);
  encode_check("sentencepiece_raw_ids", raw);
  encode_check("raw_sentencepiece_ids", raw);

  if (const json* f = Field(entry, "tokens")) {
    auto got = tok.Tokenize(*text);
    if (!f->is_array() || !std::all_of(f->begin(), f->end(), [](const json& x) { return x.is_string(); })) {
      problems.push_back("tokens: not a list of strings");
    } else if (!got.ok()) {
      problems.push_back("tokens: " + got.status().ToString());
    } else {
      const auto want = f->get<std::vector<std::string>>();
      if (want != *got) {
        size_t i = 0;
        while (i < want.size() && i < got->size() && want[i] == (*got)[i]) ++i;
        problems.push_back("tokens: expected " + std::to_string(want.size()) + " tokens, got " +
                           std::to_string(got->size()) + "; first difference at " + std::to_string(i) + ": expected " +
                           (i < want.size() ? Escape(want[i]) : "nothing") + ", got " +
                           (i < got->size() ? Escape((*got)[i]) : "nothing"));
      } else {
        checked.push_back("tokens");
      }
    }
  }
  // Decoding starts from the recorded ids (so a decode check does not depend on encoding).
  std::optional<Ids> ids;
  if (const json* f = Field(entry, "ids")) ids = JsonIds(*f);
  if (!ids) {
    if (const json* f = Field(entry, "ids_no_bos")) ids = JsonIds(*f);
  }
  for (const auto& [key, skip] : {std::pair{"decoded", false}, std::pair{"decoded_skip_special", true}}) {
    const auto want = StringField(entry, key);
    if (!want) continue;
    if (!ids) {
      problems.push_back(std::string(key) + ": no recorded ids to decode");
      continue;
    }
    const std::vector<TokenId> in(ids->begin(), ids->end());
    const auto got = tok.Decode(in, skip);
    if (!got.ok()) {
      problems.push_back(std::string(key) + ": " + got.status().ToString());
    } else if (auto d = DiffText(*want, *got); !d.empty()) {
      problems.push_back(std::string(key) + ": " + d);
    } else {
      checked.push_back(key);
    }
  }
  if (!problems.empty()) {
    std::string msg;
    for (const auto& p : problems) msg += (msg.empty() ? "" : "; ") + p;
    r.Fail(what, msg);
  } else if (checked.empty()) {
    r.Fail(what, "nothing to compare: the entry records no ids, tokens or decoded text");
  } else {
    std::string msg;
    for (const auto& c : checked) msg += (msg.empty() ? "" : ", ") + c;
    r.Pass(what, msg + " match");
  }
}

void CheckSpecialIds(const Tokenizer& tok, const json& doc, Reporter& r) {
  std::vector<std::string> problems;
  int checked = 0;
  auto expect = [&](const std::string& what, int64_t want, int64_t got) {
    ++checked;
    if (want != got) {
      problems.push_back(what + ": expected " + std::to_string(want) + ", got " + std::to_string(got));
    }
  };
  // HF convert_tokens_to_ids: SentencePiece's piece_to_id, which answers unk for unknown pieces
  // (the JSON records <ImageHere> as 0 for that reason: it is not a token).
  auto hf_piece_id = [&](const std::string& piece) -> int64_t { return tok.PieceToId(piece).value_or(tok.unk_id()); };
  if (const json* special = Field(doc, "special_ids"); special && special->is_object()) {
    for (const auto& [key, value] : special->items()) {
      if (!value.is_number_integer()) continue;
      if (key == "vocab_size") {
        expect("vocab_size", value.get<int64_t>(), tok.vocab_size());
      } else {
        expect(key, value.get<int64_t>(), hf_piece_id(key));
      }
    }
  }
  if (const json* v = Field(doc, "vocab_size"); v && v->is_number_integer())
    expect("vocab_size", v->get<int64_t>(), tok.vocab_size());
  if (const json* v = Field(doc, "bos"); v && v->is_number_integer()) expect("bos", v->get<int64_t>(), tok.bos_id());
  if (const json* v = Field(doc, "eos"); v && v->is_number_integer()) expect("eos", v->get<int64_t>(), tok.eos_id());
  if (const json* v = Field(doc, "unk"); v && v->is_number_integer()) expect("unk", v->get<int64_t>(), tok.unk_id());
  for (const char* key : {"eoh", "eoa"}) {
    const json* v = Field(doc, key);
    if (!v) continue;
    const auto piece = StringField(*v, "piece");
    const json* id = Field(*v, "id");
    if (piece && id && id->is_number_integer())
      expect(std::string(key) + " " + *piece, id->get<int64_t>(), hf_piece_id(*piece));
  }
  if (checked == 0) return;
  if (problems.empty()) {
    r.Pass("special ids", std::to_string(checked) + " ids match");
  } else {
    std::string msg;
    for (const auto& p : problems) msg += (msg.empty() ? "" : "; ") + p;
    r.Fail("special ids", msg);
  }
}

// The mask over a built prompt with every image expanded to `rows` rows: 1 on image rows.
Ids ImageMask(const ChatPrompt& built, int64_t rows) {
  Ids mask;
  for (const auto& s : built.segments) {
    if (const auto* t = std::get_if<TextSegment>(&s)) {
      mask.insert(mask.end(), t->ids.size(), 0);
    } else {
      mask.insert(mask.end(), static_cast<size_t>(rows), 1);
    }
  }
  return mask;
}

void CheckChatPromptEntry(const Tokenizer& tok, ChatVersion version, const json& entry, Reporter& r,
                          const std::string& what) {
  if (version == ChatVersion::kIxc1) {
    r.Pass(what, "skipped: no recorded-prompt parser for ixc1 entries (its cases are checked from manifests)");
    return;
  }
  if (const auto prompt_text = StringField(entry, "prompt_text")) {
    auto req = ParseIxc2Prompt(*prompt_text, version);
    if (!req.ok()) {
      r.Fail(what, "cannot read the recorded prompt_text: " + req.status().message());
      return;
    }
    auto built = BuildChatPrompt(tok, version, *req);
    if (!built.ok()) {
      r.Fail(what, built.status().ToString());
      return;
    }
    r.Compare(what + " prompt_text", DiffText(*prompt_text, built->prompt_text), "prompt text matches");
    if (const json* f = Field(entry, "input_ids")) {
      auto want = JsonIds(*f);
      auto got = built->ExpandedIds(std::vector<int64_t>(built->num_images(), 1));
      if (!want) {
        r.Fail(what + " input_ids", "not a list of ids");
      } else if (!got.ok()) {
        r.Fail(what + " input_ids", got.status().ToString());
      } else {
        r.Compare(what + " input_ids", DiffIds(*want, *got), std::to_string(want->size()) + " ids match");
      }
    }
  }
  if (const json* parts = Field(entry, "text_parts")) {
    auto recorded = ReadRecordedSegments(*parts);
    if (!recorded.ok()) {
      r.Fail(what + " text_parts", recorded.status().message());
      return;
    }
    std::string joined;
    for (size_t i = 0; i < recorded->size(); ++i) {
      if (i > 0) joined += kImagePlaceholder;
      joined += (*recorded)[i].text;
    }
    auto req = ParseIxc2Prompt(joined, version);
    if (!req.ok()) {
      r.Fail(what + " text_parts", "cannot read the recorded parts: " + req.status().message());
      return;
    }
    auto built = BuildChatPrompt(tok, version, *req);
    if (!built.ok()) {
      r.Fail(what + " text_parts", built.status().ToString());
      return;
    }
    r.Compare(what + " text_parts", DiffSegments(*recorded, *built, false),
              std::to_string(recorded->size()) + " text parts match (" + std::to_string(built->num_images()) +
                  std::string(built->num_images() == 1 ? " image slot)" : " image slots)"));
    for (const auto& [key, value] : entry.items()) {
      // "im_mask_with_<N>_image_rows": the mask with each image taking N rows.
      if (!key.starts_with("im_mask_with_") || !key.ends_with("_image_rows")) continue;
      const std::string n = key.substr(13, key.size() - 13 - 11);
      const int64_t rows = std::atoll(n.c_str());
      auto want = JsonIds(value);
      if (!want || rows <= 0) {
        r.Fail(what + " " + key, "not a mask list or no row count in the key");
        continue;
      }
      r.Compare(what + " " + key, DiffIds(*want, ImageMask(*built, rows)),
                std::to_string(want->size()) + " mask entries match");
    }
  }
}

void CheckChatPrompts(const Tokenizer& tok, const json& chat_prompts, Reporter& r) {
  if (!chat_prompts.is_object()) {
    r.Fail("chat_prompts", "not an object");
    return;
  }
  for (const auto& [family, body] : chat_prompts.items()) {
    const std::string base = "chat_prompts." + family;
    const auto version = FamilyVersion(family);
    if (!version) {
      r.Pass(base, "skipped: unknown model family name");
      continue;
    }
    if (!body.is_object()) {
      r.Fail(base, "not an object");
      continue;
    }
    for (const auto& [key, value] : body.items()) {
      const std::string what = base + "." + key;
      if (key == "meta_instruction_default" && value.is_string()) {
        const std::string_view ours = IsIxc2Family(*version) ? kIxc2MetaInstruction : kIxc1MetaInstruction;
        r.Compare(what, DiffText(value.get<std::string>(), ours), "the built-in system text matches");
      } else if ((key == "eos_token_ids" || key == "stop_token_ids") && value.is_array()) {
        auto want = JsonIds(value);
        auto got = StopTokenIds(tok, *version);
        if (!want || !got.ok()) {
          r.Fail(what, got.ok() ? "not a list of ids" : got.status().ToString());
        } else {
          r.Compare(what, DiffIds(*want, ToIds(*got)), IdsToString(*want) + " match");
        }
      } else if (value.is_object()) {
        CheckChatPromptEntry(tok, *version, value, r, what);
      }
    }
  }
}

void CheckTokenizerCasesFile(const fs::path& root, const fs::path& cases_json, TokenizerCache& cache,
                             std::vector<FixtureCheckResult>* results) {
  Reporter r(results, Relative(cases_json, root));
  const fs::path model = cases_json.parent_path() / "tokenizer.model";
  auto tok = cache.Get(model);
  if (!tok.ok()) {
    r.Fail("load tokenizer", tok.status().ToString());
    return;
  }
  auto doc = ReadJsonFile(cases_json);
  if (!doc.ok()) {
    r.Fail("read", doc.status().ToString());
    return;
  }
  try {
    CheckSpecialIds(**tok, *doc, r);
    for (const char* list : {"strings", "cases"}) {
      const json* entries = Field(*doc, list);
      if (!entries || !entries->is_array()) continue;
      for (size_t i = 0; i < entries->size(); ++i) {
        const auto text = StringField((*entries)[i], "text");
        CheckStringCase(**tok, (*entries)[i], r,
                        std::string(list) + "[" + std::to_string(i) + "] " + (text ? Escape(*text, 32) : ""));
      }
    }
    if (const json* cp = Field(*doc, "chat_prompts")) CheckChatPrompts(**tok, *cp, r);
  } catch (const std::exception& e) {
    r.Fail("read", std::string("malformed content: ") + e.what());
  }
}

// ---------------------------------------------------------------------------------------------
// Model folders and case manifests

struct CaseFiles {
  std::optional<NpyArray> input_ids;
  std::optional<NpyArray> slots;
  std::optional<NpyArray> im_mask;
  std::optional<NpyArray> attention_mask;
};

// Row b of a [B,T] (or [T]) int array.
Ids Row(const NpyArray& a, int64_t b) {
  Ids all = a.ToInt64();
  if (a.shape.size() < 2) return all;
  const int64_t t = a.shape.back();
  return Ids(all.begin() + b * t, all.begin() + (b + 1) * t);
}
int64_t Rows(const NpyArray& a) { return a.shape.size() < 2 ? 1 : a.shape.front(); }

void CheckBuiltAgainstSlots(const ChatPrompt& built, const std::vector<int64_t>* recorded_rows, const CaseFiles& files,
                            const json& values, Reporter& r) {
  if (!files.slots) return;
  const Ids row = Row(*files.slots, 0);
  std::vector<int64_t> rows_per_image;
  if (recorded_rows) {
    rows_per_image = *recorded_rows;
  } else {
    auto rows = RowsPerImageFromSlots(row, built.num_images(), built);
    if (!rows.ok()) {
      r.Fail("input_ids_with_image_slots", rows.status().message());
      return;
    }
    rows_per_image = std::move(rows).value();
  }
  auto ids = built.ExpandedIds(rows_per_image);
  if (!ids.ok()) {
    r.Fail("input_ids_with_image_slots", ids.status().ToString());
    return;
  }
  int64_t slots = 0;
  for (int64_t n : rows_per_image) slots += n;
  r.Compare("input_ids_with_image_slots", DiffIds(row, *ids),
            std::to_string(row.size()) + " ids match (" + std::to_string(slots) + " image rows)");
  Ids mask(ids->size());
  for (size_t i = 0; i < ids->size(); ++i) mask[i] = (*ids)[i] == -1 ? 1 : 0;
  if (files.im_mask) {
    r.Compare("im_mask", DiffIds(Row(*files.im_mask, 0), mask), "image positions match im_mask.npy");
  }
  if (const json* range = Field(values, "image_slot_range")) {
    auto want = JsonIds(*range);
    const auto first = std::find(ids->begin(), ids->end(), -1);
    const auto last = std::find(ids->rbegin(), ids->rend(), -1);
    Ids got;
    if (first != ids->end()) got = {first - ids->begin(), static_cast<int64_t>(ids->rend() - last)};
    if (!want) {
      r.Fail("image_slot_range", "not a list of two integers");
    } else {
      r.Compare("image_slot_range", DiffIds(*want, got), "image rows at " + IdsToString(got));
    }
  }
}

// The request a case's main prompt was built from, for 2.x manifests.
// Reads optional "history" ([[user, assistant], ...] or [{"user":..,"assistant":..}, ...]),
// "use_meta" (2.5's chat() flag) and "meta_instruction".
ChatRequest Ixc2CaseRequest(const json& values, const CaseFiles& files) {
  ChatRequest req;
  req.query = StringField(values, "query").value_or("");
  if (auto meta = StringField(values, "meta_instruction")) {
    req.meta_instruction = *meta;
  } else if (const json* use_meta = Field(values, "use_meta"); use_meta && use_meta->is_boolean()) {
    req.meta_instruction = use_meta->get<bool>() ? std::string(kIxc2MetaInstruction) : std::string();
  }
  int placeholders = CountImagePlaceholders(req.query);
  if (const json* history = Field(values, "history"); history && history->is_array()) {
    for (const json& turn : *history) {
      ChatTurn t;
      if (turn.is_array() && turn.size() == 2 && turn[0].is_string() && turn[1].is_string()) {
        t.user = turn[0].get<std::string>();
        t.assistant = turn[1].get<std::string>();
      } else {
        t.user = StringField(turn, "user").value_or("");
        t.assistant = StringField(turn, "assistant").value_or("");
      }
      placeholders += CountImagePlaceholders(t.user) + CountImagePlaceholders(t.assistant);
      req.history.push_back(std::move(t));
    }
  }
  req.num_images = placeholders;
  if (req.num_images == 0 && files.slots) {
    const Ids row = Row(*files.slots, 0);
    if (std::find(row.begin(), row.end(), -1) != row.end()) req.num_images = 1;
  }
  return req;
}

void CheckIds(const ChatPrompt& built, const Ids& want, Reporter& r, const std::string& what) {
  auto got = built.ExpandedIds(std::vector<int64_t>(built.num_images(), 1));
  if (!got.ok()) {
    r.Fail(what, got.status().ToString());
    return;
  }
  r.Compare(what, DiffIds(want, *got), std::to_string(want.size()) + " ids match");
}

void CheckGeneratedTexts(const Tokenizer& tok, ChatVersion version, const fs::path& case_dir, const json& values,
                         Reporter& r) {
  std::vector<fs::path> official;
  std::error_code ec;
  for (fs::directory_iterator it(case_dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.starts_with("generated_ids_official") && name.ends_with(".npy")) official.push_back(it->path());
  }
  std::sort(official.begin(), official.end());
  const std::pair<const char*, std::optional<fs::path>> pairs[] = {
      {"generated_text", case_dir / "generated_ids.npy"},
      {"generated_text_official", official.empty() ? std::nullopt : std::optional<fs::path>(official.front())},
  };
  for (const auto& [key, npy_path] : pairs) {
    const auto want = StringField(values, key);
    if (!want || !npy_path || !IsFile(*npy_path)) continue;
    auto npy = ReadNpy(*npy_path);
    if (!npy.ok()) {
      r.Fail(key, npy.status().ToString());
      continue;
    }
    if (Rows(*npy) != 1) continue;  // batch outputs carry no recorded text
    const Ids row = Row(*npy, 0);
    const std::vector<TokenId> ids(row.begin(), row.end());
    auto got = PostprocessResponse(tok, version, ids);
    if (!got.ok()) {
      r.Fail(key, got.status().ToString());
    } else {
      r.Compare(key, DiffText(*want, *got),
                "response text from " + npy_path->filename().string() + " matches " + Escape(*want, 24));
    }
  }
}

StatusOr<std::optional<NpyArray>> MaybeReadNpy(const fs::path& p) {
  if (!IsFile(p)) return std::optional<NpyArray>();
  auto a = ReadNpy(p);
  if (!a.ok()) return a.status();
  return std::optional<NpyArray>(std::move(a).value());
}

void CheckCase(const Tokenizer& tok, ChatVersion version, const fs::path& case_dir, Reporter& r) {
  auto manifest = ReadJsonFile(case_dir / "manifest.json");
  if (!manifest.ok()) {
    r.Fail("manifest", manifest.status().ToString());
    return;
  }
  static const json kEmpty = json::object();
  const json* values_ptr = Field(*manifest, "values");
  const json& values = values_ptr && values_ptr->is_object() ? *values_ptr : kEmpty;

  CaseFiles files;
  for (auto [name, slot] :
       {std::pair{"input_ids.npy", &files.input_ids}, std::pair{"input_ids_with_image_slots.npy", &files.slots},
        std::pair{"im_mask.npy", &files.im_mask}, std::pair{"attention_mask.npy", &files.attention_mask}}) {
    auto a = MaybeReadNpy(case_dir / name);
    if (!a.ok()) {
      r.Fail(name, a.status().ToString());
      return;
    }
    *slot = std::move(a).value();
  }
  bool checked_anything = false;
  auto build = [&](const ChatRequest& req, const std::string& what) -> std::optional<ChatPrompt> {
    auto built = BuildChatPrompt(tok, version, req);
    if (!built.ok()) {
      r.Fail(what, built.status().ToString());
      return std::nullopt;
    }
    return std::move(built).value();
  };

  if (version == ChatVersion::kIxc1) {
    // First-turn prompts recorded as segments (text_chat, image_chat, history_chat's turn 1).
    for (const auto& [seg_key, query_key] :
         {std::pair{"text_segments", "query"}, std::pair{"turn1_prompt_segments", "turn1_query"}}) {
      const json* segs = Field(values, seg_key);
      if (!segs) continue;
      checked_anything = true;
      auto recorded = ReadRecordedSegments(*segs);
      if (!recorded.ok()) {
        r.Fail(seg_key, recorded.status().message());
        continue;
      }
      ChatRequest req;
      req.query = StringField(values, query_key).value_or("");
      if (auto meta = StringField(values, "meta_instruction")) req.meta_instruction = *meta;
      std::vector<int64_t> rows;
      for (const auto& s : *recorded) {
        if (s.is_image) rows.push_back(s.image_rows);
      }
      req.num_images = static_cast<int>(rows.size());
      auto built = build(req, seg_key);
      if (!built) continue;
      r.Compare(seg_key, DiffSegments(*recorded, *built, true), std::to_string(recorded->size()) + " segments match");
      if (std::string_view(seg_key) == "text_segments") {
        if (auto pt = StringField(values, "prompt_text")) {
          r.Compare("prompt_text", DiffText(*pt, built->prompt_text), "prompt text matches");
        }
        if (files.input_ids && Rows(*files.input_ids) == 1) CheckIds(*built, Row(*files.input_ids, 0), r, "input_ids");
        CheckBuiltAgainstSlots(*built, &rows, files, values, r);
      }
    }
    // A later turn: history rebuilt from turn 1, then the new query.
    const json* hist = Field(values, "history_segments");
    const json* turn2 = Field(values, "turn2_segments");
    if (hist && turn2) {
      checked_anything = true;
      auto h = ReadRecordedSegments(*hist);
      auto t = ReadRecordedSegments(*turn2);
      if (!h.ok() || !t.ok()) {
        r.Fail("history_segments", (!h.ok() ? h.status() : t.status()).message());
      } else {
        ChatTurn turn;
        turn.user = StringField(values, "turn1_query").value_or("");
        turn.assistant = StringField(values, "turn1_response_text").value_or("");
        std::vector<int64_t> rows;
        for (const auto& s : *h) {
          if (s.is_image) {
            turn.user_had_image = true;
            rows.push_back(s.image_rows);
          }
        }
        ChatRequest req;
        req.query = StringField(values, "turn2_query").value_or("");
        req.history.push_back(std::move(turn));
        for (const auto& s : *t) {
          if (s.is_image) rows.push_back(s.image_rows);
        }
        req.num_images = static_cast<int>(rows.size());
        std::vector<RecordedSegment> all = *h;
        all.insert(all.end(), t->begin(), t->end());
        if (auto built = build(req, "history_segments + turn2_segments")) {
          r.Compare("history_segments + turn2_segments", DiffSegments(all, *built, true),
                    std::to_string(all.size()) + " segments match");
          CheckBuiltAgainstSlots(*built, &rows, files, values, r);
        }
      }
    }
  } else {
    const json* parts = Field(values, "text_parts");
    if (parts) {
      checked_anything = true;
      auto recorded = ReadRecordedSegments(*parts);
      if (!recorded.ok()) {
        r.Fail("text_parts", recorded.status().message());
      } else {
        // From the recorded query where there is one (this also tests the default system text),
        // else from the parts themselves.
        StatusOr<ChatRequest> req = Ixc2CaseRequest(values, files);
        if (!Field(values, "query")) {
          std::string joined;
          for (size_t i = 0; i < recorded->size(); ++i) {
            joined += (i > 0 ? std::string(kImagePlaceholder) : std::string()) + (*recorded)[i].text;
          }
          req = ParseIxc2Prompt(joined, version);
        }
        if (!req.ok()) {
          r.Fail("text_parts", "cannot read the recorded parts: " + req.status().message());
        } else if (auto built = build(*req, "text_parts")) {
          r.Compare("text_parts", DiffSegments(*recorded, *built, false),
                    std::to_string(recorded->size()) + " text parts match");
          if (files.slots && Rows(*files.slots) == 1) CheckBuiltAgainstSlots(*built, nullptr, files, values, r);
        }
      }
    } else if (files.slots && Rows(*files.slots) == 1 && Field(values, "query")) {
      checked_anything = true;
      if (auto built = build(Ixc2CaseRequest(values, files), "input_ids_with_image_slots")) {
        CheckBuiltAgainstSlots(*built, nullptr, files, values, r);
      }
    } else if (files.slots) {
      checked_anything = true;
      r.Pass("input_ids_with_image_slots",
             "skipped: image slots of a batch or without a recorded query; the prompt of each row is not recorded");
    }
    // Text-only prompts: one row with its query, or a left-padded batch of queries.
    if (files.input_ids && Rows(*files.input_ids) == 1 && Field(values, "query")) {
      checked_anything = true;
      ChatRequest req = Ixc2CaseRequest(values, files);
      if (auto built = build(req, "input_ids")) {
        CheckIds(*built, Row(*files.input_ids, 0), r, "input_ids");
        if (auto pt = StringField(values, "prompt_text")) {
          r.Compare("prompt_text", DiffText(*pt, built->prompt_text), "prompt text matches");
        }
        if (files.im_mask && !files.slots) {
          const Ids mask = Row(*files.im_mask, 0);
          r.Compare("im_mask", DiffIds(mask, Ids(mask.size(), 0)), "no image positions, as built");
        }
      }
    }
    const json* queries = Field(values, "queries");
    const json* pads = Field(values, "left_pad_lengths");
    if (files.input_ids && Rows(*files.input_ids) > 1 && queries && queries->is_array() && pads) {
      checked_anything = true;
      auto pad_lengths = JsonIds(*pads);
      const int64_t batch = Rows(*files.input_ids);
      if (!pad_lengths || static_cast<int64_t>(queries->size()) != batch ||
          static_cast<int64_t>(pad_lengths->size()) != batch) {
        r.Fail("input_ids (batch)", "queries / left_pad_lengths do not match the batch of input_ids.npy");
      } else {
        for (int64_t b = 0; b < batch; ++b) {
          const std::string what = "input_ids row " + std::to_string(b);
          if (!(*queries)[b].is_string()) {
            r.Fail(what, "query is not a string");
            continue;
          }
          ChatRequest req;
          req.query = (*queries)[b].get<std::string>();
          if (auto meta = StringField(values, "meta_instruction")) req.meta_instruction = *meta;
          auto built = build(req, what);
          if (!built) continue;
          auto ids = built->ExpandedIds({});
          if (!ids.ok()) {
            r.Fail(what, ids.status().ToString());
            continue;
          }
          // Left padding with the pad id (= eos), as the batch recipes do.
          Ids padded(static_cast<size_t>(std::max<int64_t>(0, (*pad_lengths)[b])), tok.eos_id());
          padded.insert(padded.end(), ids->begin(), ids->end());
          r.Compare(what, DiffIds(Row(*files.input_ids, b), padded),
                    std::to_string(ids->size()) + " ids after " + std::to_string((*pad_lengths)[b]) + " pads match");
          if (files.attention_mask) {
            Ids mask(padded.size(), 1);
            std::fill(mask.begin(), mask.begin() + std::min<int64_t>((*pad_lengths)[b], mask.size()), 0);
            r.Compare("attention_mask row " + std::to_string(b), DiffIds(Row(*files.attention_mask, b), mask),
                      "padding positions match");
          }
        }
      }
    }
    if (const json* f = Field(values, "build_inputs_ids_if_image_is_None")) {
      checked_anything = true;
      auto want = JsonIds(*f);
      ChatRequest req = Ixc2CaseRequest(values, files);
      req.num_images = 0;
      req.text_only_path = TextOnlyPath::kBuildInputs;
      if (!want) {
        r.Fail("build_inputs_ids_if_image_is_None", "not a list of ids");
      } else if (auto built = build(req, "build_inputs_ids_if_image_is_None")) {
        CheckIds(*built, *want, r, "build_inputs_ids_if_image_is_None");
      }
    }
  }
  if (Field(values, "generated_text") || Field(values, "generated_text_official")) {
    checked_anything = true;
    CheckGeneratedTexts(tok, version, case_dir, values, r);
  }
  if (!checked_anything) r.Pass("", "nothing to check: the case records no prompt ids or text");
}

bool IsModelFolder(const fs::path& dir) {
  const bool has_model = fs::is_directory(dir / "checkpoint") || IsFile(dir / "model_info.json");
  if (!has_model || !fs::is_directory(dir / "cases")) return false;
  for (const auto& c : SortedSubdirs(dir / "cases")) {
    if (IsFile(c / "manifest.json")) return true;
  }
  return false;
}

void CheckModelFolder(const fs::path& root, const fs::path& model_dir, TokenizerCache& cache,
                      std::vector<FixtureCheckResult>* results) {
  Reporter folder(results, Relative(model_dir, root));
  auto version = DetectModelFolderVersion(model_dir);
  if (!version.ok()) {
    folder.Fail("version", version.status().ToString());
    return;
  }
  folder.Pass("version", std::string(ChatVersionName(*version)));
  const fs::path tok_path = ModelFolderTokenizerPath(root, model_dir);
  auto tok = cache.Get(tok_path);
  if (!tok.ok()) {
    folder.Fail("load tokenizer", tok.status().ToString());
    return;
  }
  if (auto info = ReadJsonFile(model_dir / "model_info.json"); info.ok()) {
    auto stops = StopTokenIds(**tok, *version);
    for (const char* key : {"eos_token_ids", "stop_token_ids"}) {
      const json* f = Field(*info, key);
      if (!f) continue;
      auto want = JsonIds(*f);
      if (!want || !stops.ok()) {
        folder.Fail(std::string("model_info ") + key, stops.ok() ? "not a list of ids" : stops.status().ToString());
        continue;
      }
      // Every id the official code stops at must be one of ours.
      std::string missing;
      for (int64_t id : *want) {
        if (std::find(stops->begin(), stops->end(), id) == stops->end()) missing += " " + std::to_string(id);
      }
      folder.Compare(std::string("model_info ") + key,
                     missing.empty() ? "" : "not among our stop ids " + IdsToString(ToIds(*stops)) + ":" + missing,
                     IdsToString(*want) + " are stop ids");
    }
  }
  for (const auto& case_dir : SortedSubdirs(model_dir / "cases")) {
    if (!IsFile(case_dir / "manifest.json")) continue;
    Reporter r(results, Relative(case_dir, root));
    try {
      CheckCase(**tok, *version, case_dir, r);
    } catch (const std::exception& e) {
      r.Fail("manifest", std::string("malformed content: ") + e.what());
    }
  }
}

}  // namespace

fs::path ModelFolderTokenizerPath(const fs::path& fixtures_root, const fs::path& model_dir) {
  const fs::path own = model_dir / "tokenizer" / "tokenizer.model";
  return IsFile(own) ? own : fixtures_root / "tokenizer" / "tokenizer.model";
}

StatusOr<ChatVersion> DetectModelFolderVersion(const fs::path& model_dir) {
  // 1. model_info.json "architecture", e.g. "InternLM-XComposer2-4KHD (...)".
  if (auto info = ReadJsonFile(model_dir / "model_info.json"); info.ok()) {
    if (auto arch = StringField(*info, "architecture")) {
      const std::string a = Lower(*arch);
      if (a.find("4khd") != std::string::npos) return ChatVersion::kIxc2_4khd;
      if (a.find("2.5") != std::string::npos || a.find("2d5") != std::string::npos) return ChatVersion::kIxc2_5;
      if (a.find("2-vl") != std::string::npos || a.find("2_vl") != std::string::npos) return ChatVersion::kIxc2Vl;
      if (a.find("1.0") != std::string::npos || a.find("xcomposer-7b") != std::string::npos) return ChatVersion::kIxc1;
    }
  }
  // 2. The checkpoint's tensor names.
  if (auto index = ReadJsonFile(model_dir / "checkpoint" / "model.safetensors.index.json"); index.ok()) {
    if (const json* map = Field(*index, "weight_map"); map && map->is_object()) {
      bool v1 = false, video = false, hd = false, vit = false;
      for (const auto& [name, file] : map->items()) {
        v1 |= name.starts_with("internlm_model.") || name.starts_with("Qformer.");
        video |= name.starts_with("video_mem_proj.");
        hd |= name == "plora_glb_GN" || name == "plora_sub_GN";
        vit |= name.starts_with("vit.");
      }
      if (v1) return ChatVersion::kIxc1;
      if (video) return ChatVersion::kIxc2_5;
      if (hd) {
        // 4KHD tiles are 336 px, 2.5 tiles 560 px.
        if (auto clip = ReadJsonFile(model_dir / "checkpoint" / "clip_vision_config.json"); clip.ok()) {
          if (const json* size = Field(*clip, "image_size"); size && size->is_number_integer()) {
            if (size->get<int64_t>() == 336) return ChatVersion::kIxc2_4khd;
            if (size->get<int64_t>() == 560) return ChatVersion::kIxc2_5;
          }
        }
      } else if (vit) {
        return ChatVersion::kIxc2Vl;
      }
    }
  }
  // 3. The folder name ("ixc2_vl", "ixc2d5", ...).
  if (auto v = ParseChatVersion(model_dir.filename().string())) return *v;
  return NotFoundError(model_dir.string() +
                       ": cannot tell the model version (no recognisable model_info.json architecture, checkpoint "
                       "tensor names or folder name)");
}

std::vector<FixtureCheckResult> RunTokenizerFixtureChecks(const fs::path& fixtures_root) {
  std::vector<FixtureCheckResult> results;
  if (!fs::is_directory(fixtures_root)) {
    results.push_back({fixtures_root.string(), false, "not a folder; expected a fixtures folder"});
    return results;
  }
  TokenizerCache cache;
  const fs::path root_cases = fixtures_root / "tokenizer" / "tokenizer_cases.json";
  if (IsFile(root_cases)) CheckTokenizerCasesFile(fixtures_root, root_cases, cache, &results);
  for (const auto& dir : SortedSubdirs(fixtures_root)) {
    if (dir.filename() == "tokenizer") continue;
    const fs::path own_cases = dir / "tokenizer" / "tokenizer_cases.json";
    if (IsFile(own_cases)) CheckTokenizerCasesFile(fixtures_root, own_cases, cache, &results);
    if (IsModelFolder(dir)) CheckModelFolder(fixtures_root, dir, cache, &results);
  }
  if (results.empty()) {
    results.push_back(
        {fixtures_root.string(), false, "no tokenizer_cases.json and no model folder (cases/*/manifest.json) found"});
  }
  return results;
}

}  // namespace xcpipe::tokenizer
