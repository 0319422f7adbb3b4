// UTF-8 helpers the tokenizer and prompt validation share: strict validation (the check a
// prompt from outside passes before anything tokenizes it) and Python's notion of whitespace,
// which the HF slow tokenizer strips around special tokens (`str.lstrip()` / `str.rstrip()`).
//
// Pure functions on byte strings; thread-safe; never throw.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace xcpipe::tokenizer {

// Where and why a byte string stops being UTF-8.
struct Utf8Error {
  size_t offset = 0;   // byte offset of the first byte of the bad sequence
  std::string reason;  // "invalid lead byte 0xff", "truncated sequence", "overlong encoding",
                       // "surrogate code point U+D800", "code point above U+10FFFF"
};

// Strict RFC 3629 check (no overlongs, no surrogates, nothing above U+10FFFF). nullopt when
// `text` is valid UTF-8.
std::optional<Utf8Error> FindUtf8Error(std::string_view text);

// True for the code points Python's `str.isspace()` accepts (so `str.strip()` removes):
// U+0009..U+000D, U+001C..U+001F, U+0020, U+0085, U+00A0, U+1680, U+2000..U+200A, U+2028,
// U+2029, U+202F, U+205F, U+3000. Note U+200B (zero width space) is not whitespace.
bool IsPythonWhitespace(char32_t code_point);

// Python's `text.lstrip()` / `text.rstrip()` on valid UTF-8. Bytes that are not valid UTF-8
// are never stripped.
std::string_view LstripPythonWhitespace(std::string_view text);
std::string_view RstripPythonWhitespace(std::string_view text);

}  // namespace xcpipe::tokenizer
