#include "xcpipe/http/text_stream.h"

#include <algorithm>

namespace xcpipe::http {

size_t IncompleteUtf8Tail(std::string_view text) {
  // Walk back over at most 3 continuation bytes to the lead byte, and compare the length it
  // announces with what is there.
  const size_t n = text.size();
  for (size_t back = 1; back <= std::min<size_t>(4, n); ++back) {
    const auto c = static_cast<unsigned char>(text[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte
    size_t need = 1;
    if ((c & 0xE0) == 0xC0)
      need = 2;
    else if ((c & 0xF0) == 0xE0)
      need = 3;
    else if ((c & 0xF8) == 0xF0)
      need = 4;
    return need > back ? back : 0;
  }
  return 0;  // only continuation bytes: nothing a later byte could complete
}

std::string TextStream::Push(std::string_view delta) {
  if (stopped_) return "";
  pending_.append(delta);
  size_t match = std::string::npos;
  for (const auto& s : stops_) match = std::min(match, pending_.find(s));
  std::string out;
  if (match != std::string::npos) {
    out = pending_.substr(0, match);
    pending_.clear();
    stopped_ = true;
    sent_ += out;
    return out;
  }
  // Hold back the longest end of the text that some stop sequence starts with.
  size_t hold = 0;
  for (const auto& s : stops_) {
    for (size_t k = std::min(s.size() - 1, pending_.size()); k > hold; --k) {
      if (pending_.compare(pending_.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
    }
  }
  size_t emit = pending_.size() - hold;
  emit -= IncompleteUtf8Tail(std::string_view(pending_).substr(0, emit));
  out = pending_.substr(0, emit);
  pending_.erase(0, emit);
  sent_ += out;
  return out;
}

std::string TextStream::Finish() {
  if (stopped_) return "";
  std::string out = std::move(pending_);
  pending_.clear();
  sent_ += out;
  return out;
}

}  // namespace xcpipe::http
