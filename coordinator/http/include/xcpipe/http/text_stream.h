// TextStream: turns the text deltas of a generation into what may be sent to the client now.
// Stop sequences are matched on text, also when one spans several deltas (tokens): text that
// could still turn out to be the start of a stop sequence is held back until it cannot, and the
// matched sequence and everything after it are never sent. A delta never ends inside a UTF-8
// character: an incomplete trailing sequence waits for the bytes that complete it.
//
// A value type; not thread-safe (one per request).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace xcpipe::http {

class TextStream {
 public:
  explicit TextStream(std::vector<std::string> stop_sequences) : stops_(std::move(stop_sequences)) {}

  // Adds generated text; returns the text that is safe to send now (possibly empty). After a
  // stop sequence matched, stopped() is true and later calls return "".
  std::string Push(std::string_view delta);
  // The generation ended without a stop sequence: the text still held back.
  std::string Finish();

  bool stopped() const { return stopped_; }
  // Everything returned so far, concatenated.
  const std::string& sent() const { return sent_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  std::string sent_;
  bool stopped_ = false;
};

// Bytes at the end of `text` that begin a UTF-8 sequence not yet complete (0..3).
size_t IncompleteUtf8Tail(std::string_view text);

}  // namespace xcpipe::http
