#include "xcpipe/tokenizer/utf8.h"

#include <cstdio>

namespace xcpipe::tokenizer {
namespace {

std::string HexByte(uint8_t b) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "0x%02x", b);
  return buf;
}

// Decodes one code point at text[pos]. Returns its length in bytes, or 0 (and fills `error`)
// when the bytes there are not valid UTF-8.
size_t DecodeOne(std::string_view text, size_t pos, char32_t* cp, std::string* error) {
  const auto b0 = static_cast<uint8_t>(text[pos]);
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  size_t len = 0;
  char32_t value = 0;
  char32_t min_value = 0;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2, value = b0 & 0x1F, min_value = 0x80;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3, value = b0 & 0x0F, min_value = 0x800;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4, value = b0 & 0x07, min_value = 0x10000;
  } else {
    if (error) {
      *error = (b0 == 0xC0 || b0 == 0xC1) ? "overlong encoding (lead byte " + HexByte(b0) + ")"
                                          : "invalid lead byte " + HexByte(b0);
    }
    return 0;
  }
  if (pos + len > text.size()) {
    if (error) {
      *error =
          "truncated sequence (lead byte " + HexByte(b0) + " needs " + std::to_string(len - 1) + " continuation bytes)";
    }
    return 0;
  }
  for (size_t i = 1; i < len; ++i) {
    const auto b = static_cast<uint8_t>(text[pos + i]);
    if ((b & 0xC0) != 0x80) {
      if (error) *error = "invalid continuation byte " + HexByte(b);
      return 0;
    }
    value = (value << 6) | (b & 0x3F);
  }
  if (value < min_value) {
    if (error) *error = "overlong encoding";
    return 0;
  }
  if (value >= 0xD800 && value <= 0xDFFF) {
    if (error) {
      char buf[32];
      std::snprintf(buf, sizeof(buf), "surrogate code point U+%04X", static_cast<unsigned>(value));
      *error = buf;
    }
    return 0;
  }
  if (value > 0x10FFFF) {
    if (error) *error = "code point above U+10FFFF";
    return 0;
  }
  *cp = value;
  return len;
}

}  // namespace

std::optional<Utf8Error> FindUtf8Error(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    char32_t cp = 0;
    std::string reason;
    const size_t len = DecodeOne(text, pos, &cp, &reason);
    if (len == 0) return Utf8Error{pos, std::move(reason)};
    pos += len;
  }
  return std::nullopt;
}

bool IsPythonWhitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

std::string_view LstripPythonWhitespace(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    char32_t cp = 0;
    const size_t len = DecodeOne(text, pos, &cp, nullptr);
    if (len == 0 || !IsPythonWhitespace(cp)) break;
    pos += len;
  }
  return text.substr(pos);
}

std::string_view RstripPythonWhitespace(std::string_view text) {
  size_t end = text.size();
  while (end > 0) {
    // Walk back to the lead byte of the last code point (at most 4 bytes).
    size_t start = end - 1;
    while (start > 0 && end - start < 4 && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80) --start;
    char32_t cp = 0;
    const size_t len = DecodeOne(text, start, &cp, nullptr);
    if (len == 0 || start + len != end || !IsPythonWhitespace(cp)) break;
    end = start;
  }
  return text.substr(0, end);
}

}  // namespace xcpipe::tokenizer
